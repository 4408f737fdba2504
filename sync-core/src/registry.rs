//! The models an application syncs, registered at compile time by
//! `#[derive(Syncable)]`, and their dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use sea_orm::{DatabaseTransaction, DbErr};
use uuid::Uuid;

use crate::model::{
    Applied, ApplyError, CaptureError, FieldValue, MissingParent, ModelMeta, SyncModel,
};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

type ApplyFn = for<'a> fn(
    &'a DatabaseTransaction,
    Uuid,
    &'a [FieldValue],
    MissingParent,
) -> BoxFuture<'a, Result<Applied, ApplyError>>;
type DeleteFn = for<'a> fn(&'a DatabaseTransaction, Uuid) -> BoxFuture<'a, Result<bool, DbErr>>;
type CaptureFn = for<'a> fn(
    &'a DatabaseTransaction,
    Uuid,
) -> BoxFuture<'a, Result<Option<Vec<FieldValue>>, CaptureError>>;

/// A page of rows in wire form: (local key, global id, fields).
pub type RowPage = Vec<(i64, Uuid, Vec<FieldValue>)>;
type PageFn =
    for<'a> fn(&'a DatabaseTransaction, i64, u64) -> BoxFuture<'a, Result<RowPage, CaptureError>>;
type LocalKeyFn =
    for<'a> fn(&'a DatabaseTransaction, Uuid) -> BoxFuture<'a, Result<Option<i64>, DbErr>>;
type ReferencingFn =
    for<'a> fn(&'a DatabaseTransaction, &'a str, i64) -> BoxFuture<'a, Result<Vec<Uuid>, DbErr>>;
type ClearFn =
    for<'a> fn(&'a DatabaseTransaction, &'a str, i64) -> BoxFuture<'a, Result<u64, DbErr>>;

/// A registered model: its metadata and its operations with the model type
/// erased, so the engine can work through a list of them.
pub struct ModelDescriptor {
    meta: &'static ModelMeta,
    apply: ApplyFn,
    delete: DeleteFn,
    capture: CaptureFn,
    local_key: LocalKeyFn,
    referencing: ReferencingFn,
    clear: ClearFn,
    page: PageFn,
}

impl std::fmt::Debug for ModelDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDescriptor")
            .field("name", &self.meta.name)
            .finish_non_exhaustive()
    }
}

inventory::collect!(ModelDescriptor);

impl ModelDescriptor {
    /// The descriptor of a model type.
    pub const fn of<M: SyncModel>() -> Self {
        Self {
            meta: const { &M::META },
            apply: apply_erased::<M>,
            delete: delete_erased::<M>,
            capture: capture_erased::<M>,
            local_key: local_key_erased::<M>,
            referencing: referencing_erased::<M>,
            clear: clear_erased::<M>,
            page: page_erased::<M>,
        }
    }

    /// Up to `limit` rows with a local key above `after`, by local key, in
    /// wire form.
    pub fn page<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        after: i64,
        limit: u64,
    ) -> BoxFuture<'a, Result<RowPage, CaptureError>> {
        (self.page)(tx, after, limit)
    }

    /// The local key of the row with this global id.
    pub fn local_key<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<i64>, DbErr>> {
        (self.local_key)(tx, id)
    }

    /// [`SyncModel::rows_referencing`] for this model.
    pub fn rows_referencing<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        field: &'a str,
        key: i64,
    ) -> BoxFuture<'a, Result<Vec<Uuid>, DbErr>> {
        (self.referencing)(tx, field, key)
    }

    /// [`SyncModel::clear_references`] for this model.
    pub fn clear_references<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        field: &'a str,
        key: i64,
    ) -> BoxFuture<'a, Result<u64, DbErr>> {
        (self.clear)(tx, field, key)
    }

    /// The model's sync semantics.
    pub fn meta(&self) -> &'static ModelMeta {
        self.meta
    }

    /// The model's wire name.
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    /// [`SyncModel::apply`] for this model.
    pub fn apply<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        id: Uuid,
        fields: &'a [FieldValue],
        missing_parent: MissingParent,
    ) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        (self.apply)(tx, id, fields, missing_parent)
    }

    /// [`SyncModel::delete_by_id`] for this model.
    pub fn delete<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool, DbErr>> {
        (self.delete)(tx, id)
    }

    /// Every synced field of the row with this id, or `None` if it does not
    /// exist.
    pub fn capture<'a>(
        &self,
        tx: &'a DatabaseTransaction,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<Vec<FieldValue>>, CaptureError>> {
        (self.capture)(tx, id)
    }
}

fn apply_erased<'a, M: SyncModel>(
    tx: &'a DatabaseTransaction,
    id: Uuid,
    fields: &'a [FieldValue],
    missing_parent: MissingParent,
) -> BoxFuture<'a, Result<Applied, ApplyError>> {
    Box::pin(M::apply(tx, id, fields, missing_parent))
}

fn delete_erased<M: SyncModel>(
    tx: &DatabaseTransaction,
    id: Uuid,
) -> BoxFuture<'_, Result<bool, DbErr>> {
    Box::pin(M::delete_by_id(tx, id))
}

fn capture_erased<M: SyncModel>(
    tx: &DatabaseTransaction,
    id: Uuid,
) -> BoxFuture<'_, Result<Option<Vec<FieldValue>>, CaptureError>> {
    Box::pin(async move {
        match M::find_by_id(tx, id).await? {
            Some(row) => Ok(Some(row.capture(tx).await?)),
            None => Ok(None),
        }
    })
}

fn page_erased<M: SyncModel>(
    tx: &DatabaseTransaction,
    after: i64,
    limit: u64,
) -> BoxFuture<'_, Result<RowPage, CaptureError>> {
    Box::pin(async move {
        let rows = M::page(tx, after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((row.local_key(), row.sync_id(), row.capture(tx).await?));
        }
        Ok(out)
    })
}

fn local_key_erased<M: SyncModel>(
    tx: &DatabaseTransaction,
    id: Uuid,
) -> BoxFuture<'_, Result<Option<i64>, DbErr>> {
    Box::pin(<M::Entity as crate::model::SyncEntity>::local_key_of(
        tx, id,
    ))
}

fn referencing_erased<'a, M: SyncModel>(
    tx: &'a DatabaseTransaction,
    field: &'a str,
    key: i64,
) -> BoxFuture<'a, Result<Vec<Uuid>, DbErr>> {
    Box::pin(M::rows_referencing(tx, field, key))
}

fn clear_erased<'a, M: SyncModel>(
    tx: &'a DatabaseTransaction,
    field: &'a str,
    key: i64,
) -> BoxFuture<'a, Result<u64, DbErr>> {
    Box::pin(M::clear_references(tx, field, key))
}

/// The registered models are not a valid set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two models share a wire name.
    #[error("two models are named `{0}` on the wire: give one `#[sync(name = \"...\")]`")]
    DuplicateName(&'static str),
    /// A reference names a model that is not registered.
    #[error("`{model}.{field}` refers to `{target}`, which is not a registered Syncable model")]
    UnknownTarget {
        /// The referencing model.
        model: &'static str,
        /// The referencing field.
        field: &'static str,
        /// The missing model.
        target: &'static str,
    },
    /// The references form a cycle in which every edge is non-nullable, so no
    /// row of the cycle could ever be created first.
    #[error(
        "the references {} form a cycle with no nullable edge: make one of them an `Option`",
        .0.join(" -> ")
    )]
    Cycle(Vec<String>),
}

/// The set of synced models in dependency order: every model comes after
/// the models it references (a nullable edge may be broken to order a cycle).
#[derive(Debug, Clone)]
pub struct Registry {
    ordered: Vec<&'static ModelDescriptor>,
    by_name: BTreeMap<&'static str, usize>,
}

impl Registry {
    /// Every model in this program that derives `Syncable`.
    pub fn global() -> Result<Self, RegistryError> {
        Self::new(inventory::iter::<ModelDescriptor>)
    }

    /// A registry of the given models only.
    pub fn new(
        models: impl IntoIterator<Item = &'static ModelDescriptor>,
    ) -> Result<Self, RegistryError> {
        let mut by_name: BTreeMap<&'static str, &'static ModelDescriptor> = BTreeMap::new();
        for model in models {
            if by_name.insert(model.name(), model).is_some() {
                return Err(RegistryError::DuplicateName(model.name()));
            }
        }
        for model in by_name.values() {
            for r in model.meta().references() {
                if !by_name.contains_key(r.target) {
                    return Err(RegistryError::UnknownTarget {
                        model: model.name(),
                        field: r.field,
                        target: r.target,
                    });
                }
            }
        }
        let order = dependency_order(by_name.values().map(|m| m.meta()))?;
        let ordered: Vec<&'static ModelDescriptor> = order
            .iter()
            .filter_map(|name| by_name.get(name).copied())
            .collect();
        let by_name = ordered
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name(), i))
            .collect();
        Ok(Self { ordered, by_name })
    }

    /// The models, each after every model it references.
    pub fn models(&self) -> &[&'static ModelDescriptor] {
        &self.ordered
    }

    /// A model by wire name.
    pub fn get(&self, name: &str) -> Option<&'static ModelDescriptor> {
        self.by_name.get(name).map(|&i| self.ordered[i])
    }

    /// Every reference to the model named `target`, with the referencing
    /// model.
    pub fn references_to<'r>(
        &'r self,
        target: &'r str,
    ) -> impl Iterator<Item = (&'static ModelDescriptor, crate::model::Reference)> + 'r {
        self.ordered.iter().flat_map(move |m| {
            m.meta()
                .references()
                .filter(move |r| r.target == target)
                .map(move |r| (*m, r))
        })
    }

    /// A model's position in the dependency order.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// Orders models so that each comes after what it references. Non-nullable
/// edges are hard constraints; nullable edges are honoured unless they close
/// a cycle. Ties break by name, so every device computes the same order.
pub fn dependency_order<'m>(
    models: impl IntoIterator<Item = &'m ModelMeta>,
) -> Result<Vec<&'static str>, RegistryError> {
    // deps[m] = (target, nullable) for each reference of m to another model.
    let mut deps: BTreeMap<&'static str, Vec<(&'static str, bool)>> = BTreeMap::new();
    for meta in models {
        let entry = deps.entry(meta.name).or_default();
        for r in meta.references() {
            if r.target == meta.name && r.nullable {
                continue; // a nullable self-reference orders rows, not models
            }
            entry.push((r.target, r.nullable));
        }
    }
    if let Some(cycle) = hard_cycle(&deps) {
        return Err(RegistryError::Cycle(cycle));
    }

    let mut placed: BTreeSet<&'static str> = BTreeSet::new();
    let mut order = Vec::with_capacity(deps.len());
    while order.len() < deps.len() {
        let unplaced = || deps.iter().filter(|(name, _)| !placed.contains(*name));
        // Prefer a model whose every dependency is placed; failing that (a
        // cycle), one whose unplaced dependencies are all nullable. The hard
        // graph is acyclic, so the second always exists.
        let next = unplaced()
            .find(|(_, d)| {
                d.iter()
                    .all(|(t, _)| placed.contains(t) || !deps.contains_key(t))
            })
            .or_else(|| {
                unplaced().find(|(_, d)| {
                    d.iter()
                        .all(|(t, nullable)| *nullable || placed.contains(t))
                })
            })
            .map(|(name, _)| *name);
        match next {
            Some(name) => {
                placed.insert(name);
                order.push(name);
            }
            None => break,
        }
    }
    Ok(order)
}

/// A cycle made only of non-nullable edges, as a path that ends where it
/// starts.
fn hard_cycle(deps: &BTreeMap<&'static str, Vec<(&'static str, bool)>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &'static str,
        deps: &BTreeMap<&'static str, Vec<(&'static str, bool)>>,
        marks: &mut BTreeMap<&'static str, Mark>,
        path: &mut Vec<&'static str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Open);
        path.push(node);
        for (target, nullable) in deps.get(node).into_iter().flatten() {
            if !nullable && let Some(cycle) = visit(target, deps, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    let mut path = Vec::new();
    deps.keys()
        .find_map(|node| visit(node, deps, &mut marks, &mut path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FieldMeta, FieldRole, Ownership};

    const fn reference(name: &'static str, target: &'static str, nullable: bool) -> FieldMeta {
        FieldMeta {
            name,
            column: name,
            rust_type: "i32",
            nullable,
            role: FieldRole::Reference { target },
        }
    }

    const fn meta(name: &'static str, fields: &'static [FieldMeta]) -> ModelMeta {
        ModelMeta {
            name,
            table: name,
            ownership: Ownership::Shared,
            fields,
            local_key: "id",
            local_only: &[],
        }
    }

    #[test]
    fn parents_come_first_and_ties_break_by_name() {
        let models = [
            meta(
                "c",
                const { &[reference("a", "a", false), reference("b", "b", false)] },
            ),
            meta("b", const { &[reference("a", "a", true)] }),
            meta("a", &[]),
            meta("d", &[]),
        ];
        assert_eq!(dependency_order(&models).unwrap(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_nullable_edge_breaks_a_cycle_and_is_the_one_broken() {
        // location.root_entry (nullable) -> entry, entry.location -> location
        let models = [
            meta(
                "entries",
                const {
                    &[
                        reference("location", "locations", false),
                        reference("parent", "entries", true),
                    ]
                },
            ),
            meta(
                "locations",
                const {
                    &[
                        reference("root_entry", "entries", true),
                        reference("volume", "volumes", true),
                    ]
                },
            ),
            meta("volumes", &[]),
        ];
        assert_eq!(
            dependency_order(&models).unwrap(),
            ["volumes", "locations", "entries"]
        );
    }

    #[test]
    fn a_hard_cycle_is_an_error_naming_its_path() {
        let models = [
            meta("a", const { &[reference("b", "b", false)] }),
            meta("b", const { &[reference("c", "c", false)] }),
            meta(
                "c",
                const { &[reference("a", "a", false), reference("d", "d", true)] },
            ),
            meta("d", &[]),
        ];
        assert_eq!(
            dependency_order(&models).unwrap_err(),
            RegistryError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn a_non_nullable_self_reference_is_a_cycle() {
        let models = [meta("a", const { &[reference("me", "a", false)] })];
        assert!(matches!(
            dependency_order(&models),
            Err(RegistryError::Cycle(_))
        ));
    }
}
