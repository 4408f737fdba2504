//! The application's tables as the database has them, checked against the
//! models before any sync starts: a missing table or column, a nullability
//! that differs from the model's, or a global id without a unique index is
//! reported, all of them at once, by `Engine::open`.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::ConnectionTrait;

use crate::model::FieldRole;
use crate::project::{TableInfo, UniqueIndex};
use crate::registry::{ModelDescriptor, Registry};
use crate::store::{StoreError, ident, stmt};

/// One way a table differs from its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaMismatch {
    /// The model's wire name.
    pub model: &'static str,
    /// What is wrong, and how to fix it.
    pub problem: String,
}

impl std::fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.model, self.problem)
    }
}

struct Column {
    not_null: bool,
}

/// The rows of `PRAGMA name(table)`.
async fn pragma<C: ConnectionTrait>(
    db: &C,
    name: &str,
    table: &str,
) -> Result<Vec<sea_orm::QueryResult>, StoreError> {
    Ok(db
        .query_all_raw(stmt(&format!("PRAGMA {name}({})", ident(table)), vec![]))
        .await?)
}

async fn columns<C: ConnectionTrait>(
    db: &C,
    table: &str,
) -> Result<BTreeMap<String, Column>, StoreError> {
    let rows = pragma(db, "table_info", table).await?;
    let mut out = BTreeMap::new();
    for row in &rows {
        let name: String = row.try_get("", "name")?;
        let not_null: i64 = row.try_get("", "notnull")?;
        let pk: i64 = row.try_get("", "pk")?;
        out.insert(
            name,
            Column {
                // SQLite lets an INTEGER PRIMARY KEY hold no null anyway.
                not_null: not_null != 0 || pk != 0,
            },
        );
    }
    Ok(out)
}

/// Unique indexes of a table, each as its column names (expression indexes
/// and partial indexes are left out: the engine cannot settle them).
async fn unique_indexes<C: ConnectionTrait>(
    db: &C,
    table: &str,
) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    let list = db
        .query_all_raw(stmt(
            &format!("PRAGMA index_list({})", ident(table)),
            vec![],
        ))
        .await?;
    let mut out = Vec::new();
    for row in &list {
        let unique: i64 = row.try_get("", "unique")?;
        let partial: i64 = row.try_get("", "partial")?;
        if unique == 0 || partial != 0 {
            continue;
        }
        let name: String = row.try_get("", "name")?;
        let info = db
            .query_all_raw(stmt(
                &format!("PRAGMA index_info({})", ident(&name)),
                vec![],
            ))
            .await?;
        let mut cols = Vec::new();
        let mut expression = false;
        for c in &info {
            let column: Option<String> = row_name(c)?;
            match column {
                Some(col) => cols.push(col),
                None => expression = true,
            }
        }
        if !expression && !cols.is_empty() {
            out.push((name, cols));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `table` was created with an AUTOINCREMENT key.
async fn is_autoincrement<C: ConnectionTrait>(db: &C, table: &str) -> Result<bool, StoreError> {
    let row = db
        .query_one_raw(crate::store::stmt(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
            vec![table.into()],
        ))
        .await?;
    let sql: Option<String> = match row {
        Some(row) => row.try_get("", "sql")?,
        None => None,
    };
    Ok(sql.is_some_and(|s| s.to_ascii_uppercase().contains("AUTOINCREMENT")))
}

fn row_name(row: &sea_orm::QueryResult) -> Result<Option<String>, StoreError> {
    Ok(row.try_get("", "name")?)
}

/// Checks every model's table and learns its unique indexes.
pub(crate) async fn inspect<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
) -> Result<(Vec<TableInfo>, Vec<SchemaMismatch>), StoreError> {
    let mut tables = Vec::with_capacity(registry.len());
    let mut problems = Vec::new();
    for desc in registry.models() {
        let (info, mut found) = inspect_one(db, desc).await?;
        tables.push(info);
        problems.append(&mut found);
    }
    // Tables are written in the registry's order: a foreign key to a table
    // written later can be met only at commit.
    let order: Vec<&str> = registry.models().iter().map(|d| d.meta().table).collect();
    for (rank, info) in tables.iter_mut().enumerate() {
        info.refers_forward = info.references.iter().any(|t| {
            order
                .iter()
                .position(|o| o == t)
                .is_some_and(|target| target > rank)
        });
    }
    Ok((tables, problems))
}

async fn inspect_one<C: ConnectionTrait>(
    db: &C,
    desc: &ModelDescriptor,
) -> Result<(TableInfo, Vec<SchemaMismatch>), StoreError> {
    let meta = desc.meta();
    let mut problems = Vec::new();
    let mut problem = |p: String| {
        problems.push(SchemaMismatch {
            model: meta.name,
            problem: p,
        })
    };
    let cols = columns(db, meta.table).await?;
    if cols.is_empty() {
        problem(format!(
            "table `{}` does not exist: create it (for example with sea-orm's \
             `Schema::create_table_from_entity`) before opening the engine",
            meta.table
        ));
        return Ok((TableInfo::default(), problems));
    }
    if !cols.contains_key(meta.local_key_column) {
        problem(format!(
            "table `{}` has no column `{}` for the local key",
            meta.table, meta.local_key_column
        ));
    }
    for column in meta.local_only_columns {
        if !cols.contains_key(*column) {
            problem(format!(
                "table `{}` has no column `{column}` (a local-only field)",
                meta.table
            ));
        }
    }
    for (i, field) in meta.fields.iter().enumerate() {
        let Some(col) = cols.get(field.column) else {
            problem(format!(
                "table `{}` has no column `{}` for field `{}`",
                meta.table, field.column, field.name
            ));
            continue;
        };
        let nullable = match field.role {
            FieldRole::Reference { .. } => field.nullable,
            _ => desc.column_nullable(i),
        };
        if nullable && col.not_null {
            problem(format!(
                "column `{}.{}` is NOT NULL but field `{}` may be null: make the column \
                 nullable, or the field not an `Option`",
                meta.table, field.column, field.name
            ));
        } else if !nullable && !col.not_null && field.role != FieldRole::Id {
            problem(format!(
                "column `{}.{}` accepts null but field `{}` may not be null: make the column \
                 NOT NULL, or the field an `Option`",
                meta.table, field.column, field.name
            ));
        }
    }
    let indexes = unique_indexes(db, meta.table).await?;
    let id_column = meta.id_field().map(|f| f.column).unwrap_or_default();
    if !indexes
        .iter()
        .any(|(_, c)| c.len() == 1 && c[0] == id_column)
    {
        problem(format!(
            "the global id column `{}.{id_column}` needs a unique index: add \
             `#[sea_orm(unique)]` to the `#[sync(id)]` field (the engine finds rows by it)",
            meta.table
        ));
    }
    let mut unique = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, columns) in indexes {
        if columns.len() == 1 && (columns[0] == id_column || columns[0] == meta.local_key_column) {
            continue;
        }
        let fields: Option<Vec<usize>> = columns
            .iter()
            .map(|c| meta.fields.iter().position(|f| f.column == c))
            .collect();
        match fields {
            Some(fields) if seen.insert(fields.clone()) => {
                unique.push(UniqueIndex { name, fields })
            }
            Some(_) => {}
            None => tracing::warn!(
                model = meta.name,
                index = %name,
                "a unique index covers a column that is not synced: peers cannot settle \
                 collisions on it, and a received row that breaks it is refused here"
            ),
        }
    }
    let autoincrement = is_autoincrement(db, meta.table).await?;
    let references = foreign_key_targets(db, meta.table).await?;
    Ok((
        TableInfo {
            unique,
            autoincrement,
            refers_to_itself: references.iter().any(|t| t == meta.table),
            references,
            refers_forward: false,
        },
        problems,
    ))
}

/// The tables `table`'s foreign keys refer to.
async fn foreign_key_targets<C: ConnectionTrait>(
    db: &C,
    table: &str,
) -> Result<Vec<String>, StoreError> {
    let list = pragma(db, "foreign_key_list", table).await?;
    let mut out = Vec::new();
    for row in &list {
        let target: String = row.try_get("", "table")?;
        if !out.contains(&target) {
            out.push(target);
        }
    }
    Ok(out)
}
