//! The models an application syncs, registered at compile time by
//! `#[derive(Syncable)]`, and their dependency order.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::sea_query::Value;
use sea_orm::{DbErr, QueryResult};

use crate::model::{ModelMeta, SyncModel};
use crate::value::{ValueError, WireValue};

type ToSqlFn = fn(usize, &WireValue) -> Result<Value, ValueError>;
type ReadFieldFn = fn(usize, &QueryResult, &str) -> Result<WireValue, DbErr>;

/// A registered model: its metadata and its typed conversions with the
/// model type erased, so the engine can work through a list of them.
pub struct ModelDescriptor {
    meta: &'static ModelMeta,
    to_sql: ToSqlFn,
    read_field: ReadFieldFn,
    local_defaults: fn() -> Vec<Value>,
    column_nullable: fn(usize) -> bool,
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
            to_sql: M::to_sql,
            read_field: M::read_field,
            local_defaults: M::local_defaults,
            column_nullable: M::column_nullable,
        }
    }

    /// The model's sync semantics.
    pub fn meta(&self) -> &'static ModelMeta {
        self.meta
    }

    /// The model's wire name.
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    /// [`SyncModel::to_sql`] for this model.
    pub fn to_sql(&self, index: usize, value: &WireValue) -> Result<Value, ValueError> {
        (self.to_sql)(index, value)
    }

    /// [`SyncModel::read_field`] for this model.
    pub fn read_field(
        &self,
        index: usize,
        row: &QueryResult,
        alias: &str,
    ) -> Result<WireValue, DbErr> {
        (self.read_field)(index, row, alias)
    }

    /// [`SyncModel::local_defaults`] for this model.
    pub fn local_defaults(&self) -> Vec<Value> {
        (self.local_defaults)()
    }

    /// [`SyncModel::column_nullable`] for this model.
    pub fn column_nullable(&self, index: usize) -> bool {
        (self.column_nullable)(index)
    }
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

    /// The model at a position of the dependency order.
    pub fn at(&self, rank: usize) -> Option<&'static ModelDescriptor> {
        self.ordered.get(rank).copied()
    }

    /// How many models are registered.
    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    /// Whether no model is registered.
    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
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
            local_key_column: "id",
            local_only: &[],
            local_only_columns: &[],
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
