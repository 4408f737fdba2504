//! Cross-field rules: what makes a set of individually well-formed attributes
//! a valid sync model.

use proc_macro2::Span;
use syn::Ident;

use crate::ast::{Container, Field};
use crate::ctxt::Ctxt;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    Shared,
    DeviceOwned,
}

/// The part a synced field plays.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role<'a> {
    Id,
    Owner,
    /// A local foreign key, with the referenced entity's path.
    Reference(&'a syn::Path),
    Data,
}

pub(crate) struct Model<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) wire_name: String,
    pub(crate) table: String,
    pub(crate) ownership: Ownership,
    pub(crate) id: &'a Field<'a>,
    pub(crate) owner: Option<&'a Field<'a>>,
    pub(crate) primary_key: &'a Field<'a>,
    /// Sent to peers, in declaration order.
    pub(crate) synced: Vec<(&'a Field<'a>, Role<'a>)>,
    /// `#[sync(skip)]`: kept local, filled with `Default` on rows created by
    /// a peer.
    pub(crate) local_only: Vec<&'a Field<'a>>,
}

pub(crate) fn check<'a>(cx: &Ctxt, cont: &'a Container<'a>) -> Option<Model<'a>> {
    let ownership = check_ownership(cx, cont);
    let wire_name = match (&cont.attrs.name, &cont.attrs.table_name) {
        (Some((_, name)), _) => Some(name.clone()),
        (None, Some(table)) => Some(table.clone()),
        (None, None) if cont.attrs.broken => None,
        (None, None) => {
            cx.error_spanned_by(
                cont.ident,
                "a Syncable model needs a name on the wire: add `#[sea_orm(table_name = \"...\")]` \
                 (the default) or `#[sync(name = \"...\")]`",
            );
            None
        }
    };
    let table = cont
        .attrs
        .table_name
        .clone()
        .or_else(|| wire_name.clone())
        .unwrap_or_default();

    for field in &cont.fields {
        check_field(cx, field);
    }

    let id = exactly_one(
        cx,
        cont,
        |f| f.attrs.id,
        "a Syncable model needs a global id: mark its `Uuid` field with `#[sync(id)]`",
        "a model has exactly one global id: remove `#[sync(id)]` from all fields but one",
    );

    let owner = match ownership {
        Some(Ownership::DeviceOwned) => exactly_one(
            cx,
            cont,
            |f| f.attrs.owner,
            "a `#[sync(device_owned)]` model needs the owning device's id: mark its `Uuid` \
             field with `#[sync(owner)]`",
            "a device-owned row has exactly one owner: remove `#[sync(owner)]` from all \
             fields but one",
        ),
        Some(Ownership::Shared) => {
            for field in &cont.fields {
                if let Some(span) = field.attrs.owner {
                    cx.syn_error(syn::Error::new(
                        span,
                        "`#[sync(owner)]` is only for `#[sync(device_owned)]` models: any device \
                         may write a shared row; remove `owner`, or make the model device-owned",
                    ));
                }
            }
            None
        }
        None => None,
    };

    let keys: Vec<&Field> = cont.fields.iter().filter(|f| f.attrs.primary_key).collect();
    let primary_key = match keys.as_slice() {
        [key] => Some(*key),
        [] => {
            cx.error_spanned_by(
                cont.ident,
                "a Syncable model needs a local integer primary key: mark it \
                 `#[sea_orm(primary_key)]` (it is never sent; the `#[sync(id)]` field identifies \
                 the row between devices)",
            );
            None
        }
        [_, second, ..] => {
            cx.error_spanned_by(
                second.ident,
                "a Syncable model needs a single-column local primary key; a composite key is not \
                 supported: add an integer `id` primary key and make the pair unique instead",
            );
            None
        }
    };
    if let (Some(key), Some(id)) = (primary_key, id)
        && std::ptr::eq(key, id)
    {
        cx.error_spanned_by(
            id.ident,
            "the `#[sync(id)]` field must not be the primary key: keep a local integer \
             `#[sea_orm(primary_key)]` and a separate `Uuid` global id",
        );
    }

    for (field, what) in [(id, "id"), (owner, "owner")] {
        if let Some(field) = field.filter(|f| f.is_option()) {
            cx.error_spanned_by(
                field.ty,
                format!(
                    "the `#[sync({what})]` field must be a `Uuid`, not an `Option`: every row \
                     needs one, so make the column non-null (`pub {}: Uuid`, and a `NOT NULL` \
                     column in the table)",
                    field.ident
                ),
            );
        }
    }

    let synced = cont
        .fields
        .iter()
        .filter(|f| !f.attrs.primary_key && f.attrs.skip.is_none() && !f.attrs.ignored)
        .map(|f| {
            let role = if f.attrs.id.is_some() {
                Role::Id
            } else if f.attrs.owner.is_some() {
                Role::Owner
            } else if let Some((_, target)) = &f.attrs.references {
                Role::Reference(target)
            } else {
                Role::Data
            };
            (f, role)
        })
        .collect();
    let local_only = cont
        .fields
        .iter()
        .filter(|f| !f.attrs.primary_key && f.attrs.skip.is_some() && !f.attrs.ignored)
        .collect();

    Some(Model {
        ident: cont.ident,
        wire_name: wire_name?,
        table,
        ownership: ownership?,
        id: id?,
        owner: match ownership? {
            Ownership::DeviceOwned => Some(owner?),
            Ownership::Shared => None,
        },
        primary_key: primary_key?,
        synced,
        local_only,
    })
}

fn check_ownership(cx: &Ctxt, cont: &Container<'_>) -> Option<Ownership> {
    match (cont.attrs.shared, cont.attrs.device_owned) {
        (Some(_), None) => Some(Ownership::Shared),
        (None, Some(_)) => Some(Ownership::DeviceOwned),
        (Some(_), Some(second)) => {
            cx.syn_error(syn::Error::new(
                second,
                "a model is either `shared` or `device_owned`, not both: keep `shared` if any \
                 device may write its rows, `device_owned` if only the row's owner does",
            ));
            None
        }
        (None, None) if cont.attrs.broken => None,
        (None, None) => {
            cx.error_spanned_by(
                cont.ident,
                "say who writes this model's rows: add `#[sync(shared)]` (any device; merged per \
                 field) or `#[sync(device_owned)]` (only the device named by the `#[sync(owner)]` \
                 field)",
            );
            None
        }
    }
}

/// Rules that concern one field's own attributes.
fn check_field(cx: &Ctxt, field: &Field<'_>) {
    let a = &field.attrs;
    let conflict = |span: Span, msg: &str| cx.syn_error(syn::Error::new(span, msg));
    if let Some(skip) = a.skip {
        if a.id.is_some() {
            conflict(
                skip,
                "the global id cannot be `skip`: it is how devices name the row; remove `skip`",
            );
        }
        if a.owner.is_some() {
            conflict(
                skip,
                "the owner cannot be `skip`: peers need it to check who may write the row; \
                 remove `skip`",
            );
        }
        if a.references.is_some() {
            conflict(
                skip,
                "a local-only field is never sent, so it cannot travel as a reference: remove \
                 `skip` or `references`",
            );
        }
        if a.primary_key {
            conflict(
                skip,
                "the primary key is never sent anyway: remove `skip` from it",
            );
        }
    }
    if let (Some(_), Some(owner)) = (a.id, a.owner) {
        conflict(
            owner,
            "one field cannot be both the row's id and its owner: the owner is the id of a device",
        );
    }
    if let Some((span, _)) = &a.references {
        if a.id.is_some() || a.owner.is_some() {
            conflict(
                *span,
                "`references` marks a local foreign key; the id and owner fields are global ids \
                 already",
            );
        }
        if a.primary_key {
            conflict(
                *span,
                "the primary key cannot be a reference: put `references` on the foreign key field",
            );
        }
    }
    if a.ignored
        && (a.id.is_some() || a.owner.is_some() || a.references.is_some() || a.skip.is_some())
    {
        cx.error_spanned_by(
            field.original,
            "`#[sea_orm(ignore)]` fields are not columns and are never synced: remove the \
             `#[sync(...)]` attribute",
        );
    }
}

fn exactly_one<'a>(
    cx: &Ctxt,
    cont: &'a Container<'a>,
    marker: impl Fn(&Field<'_>) -> Option<Span>,
    missing: &str,
    extra: &str,
) -> Option<&'a Field<'a>> {
    let mut marked = cont.fields.iter().filter_map(|f| marker(f).map(|s| (f, s)));
    let Some((first, _)) = marked.next() else {
        if !cont.fields.iter().any(|f| f.attrs.broken) {
            cx.error_spanned_by(cont.ident, missing);
        }
        return None;
    };
    let mut ok = true;
    for (_, span) in marked {
        cx.syn_error(syn::Error::new(span, extra));
        ok = false;
    }
    ok.then_some(first)
}
