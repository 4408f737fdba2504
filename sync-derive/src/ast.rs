//! A borrowed view of the derive input that keeps the original syn nodes, so
//! every error and every generated assertion can point at the user's tokens.

use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr;
use crate::ctxt::Ctxt;

pub(crate) struct Container<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: attr::Container,
    pub(crate) fields: Vec<Field<'a>>,
}

pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: attr::Field,
    pub(crate) original: &'a syn::Field,
}

impl<'a> Container<'a> {
    /// `None` when the input is not a struct with named fields; the reason is
    /// recorded in `cx`.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named,
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(
                        unnamed,
                        "`Syncable` needs a struct with named fields (a sea-orm `Model`); \
                         a tuple struct has no column names",
                    );
                    return None;
                }
                Fields::Unit => {
                    cx.error_spanned_by(
                        &input.ident,
                        "`Syncable` needs a struct with named fields (a sea-orm `Model`); \
                         a unit struct has no columns",
                    );
                    return None;
                }
            },
            Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "`Syncable` can only be derived for a sea-orm `Model` struct, not an enum; \
                     to sync an enum column, derive `DeriveActiveEnum` on the enum and use it \
                     as a field of the model",
                );
                return None;
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "`Syncable` can only be derived for a sea-orm `Model` struct, not a union",
                );
                return None;
            }
        };

        let fields = named
            .named
            .iter()
            .filter_map(|field| {
                Some(Field {
                    ident: field.ident.as_ref()?,
                    ty: &field.ty,
                    attrs: attr::Field::from_ast(cx, &field.attrs),
                    original: field,
                })
            })
            .collect();

        Some(Container {
            ident: &input.ident,
            attrs: attr::Container::from_ast(cx, &input.attrs),
            fields,
        })
    }
}

impl Field<'_> {
    /// Whether the field's type is written as `Option<...>`.
    pub(crate) fn is_option(&self) -> bool {
        let Type::Path(path) = self.ty else {
            return false;
        };
        path.qself.is_none()
            && path
                .path
                .segments
                .last()
                .is_some_and(|seg| seg.ident == "Option")
    }

    /// The name sea-orm gives this field's `Column` variant.
    pub(crate) fn column_variant(&self) -> Ident {
        use heck::ToUpperCamelCase;
        let name = match &self.attrs.column_variant {
            Some(name) => name.clone(),
            None => {
                let raw = self.ident.to_string();
                raw.trim_start_matches("r#").to_upper_camel_case()
            }
        };
        Ident::new(&name, self.ident.span())
    }

    /// The SQL column's name.
    pub(crate) fn column_name(&self) -> String {
        self.attrs
            .column_name
            .clone()
            .unwrap_or_else(|| self.wire_name())
    }

    /// The wire name: the field name without a raw-identifier prefix.
    pub(crate) fn wire_name(&self) -> String {
        self.ident.to_string().trim_start_matches("r#").to_owned()
    }
}
