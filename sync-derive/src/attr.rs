//! Parsing of `#[sync(...)]`, and of the `#[sea_orm(...)]` keys the derive
//! needs to read (every other sea-orm key is skipped untouched).

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, LitStr, Token};

use crate::ctxt::Ctxt;

/// An attribute value that may be set once; a second setting is an error.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: &'static str,
    value: Option<(Span, T)>,
}

impl<'c, T> Attr<'c, T> {
    fn none(cx: &'c Ctxt, name: &'static str) -> Self {
        Self {
            cx,
            name,
            value: None,
        }
    }

    fn set<S: ToTokens>(&mut self, at: S, value: T) {
        let tokens = at.into_token_stream();
        if self.value.is_some() {
            self.cx.error_spanned_by(
                tokens,
                format!(
                    "duplicate sync attribute `{}`: remove one of them",
                    self.name
                ),
            );
        } else {
            let span = tokens
                .into_iter()
                .next()
                .map_or_else(Span::call_site, |t| t.span());
            self.value = Some((span, value));
        }
    }

    fn get(self) -> Option<(Span, T)> {
        self.value
    }
}

/// A flag that was present, with where it was written.
pub(crate) type Flag = Option<Span>;

/// `#[sync(...)]` on the struct.
pub(crate) struct Container {
    pub(crate) shared: Flag,
    pub(crate) device_owned: Flag,
    pub(crate) name: Option<(Span, String)>,
    /// `#[sea_orm(table_name = "...")]`
    pub(crate) table_name: Option<String>,
    /// A `#[sync(...)]` here did not parse (already reported): what it
    /// may have said is unknown, so nothing is reported as missing.
    pub(crate) broken: bool,
}

const CONTAINER_KEYS: &[&str] = &["shared", "device_owned", "name = \"...\""];
const FIELD_KEYS: &[&str] = &["id", "owner", "references = path::to::Entity", "skip"];

/// `key`, `key`, ... as a message lists them.
fn listed(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `#[sync]` or `#[sync()]` with nothing inside: which keys fit there.
fn bare(attr: &Attribute, keys: &[&str], place: &str, note: Option<&str>) -> Option<syn::Error> {
    let empty = match &attr.meta {
        syn::Meta::Path(_) => true,
        syn::Meta::List(list) => list.tokens.is_empty(),
        syn::Meta::NameValue(_) => false,
    };
    empty.then(|| {
        let mut message = format!(
            "`#[sync]` needs a key {place}: write `#[sync(KEY)]` with one of {}",
            listed(keys)
        );
        if let Some(note) = note {
            message.push_str("; ");
            message.push_str(note);
            message.push_str(", so remove the attribute if that is what you meant");
        }
        syn::Error::new_spanned(attr, message)
    })
}

impl Container {
    pub(crate) fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut shared = Attr::none(cx, "shared");
        let mut device_owned = Attr::none(cx, "device_owned");
        let mut name = Attr::none(cx, "name");
        let mut table_name = None;
        let mut broken = false;

        for attr in attrs {
            if attr.path().is_ident("sync") {
                if let Some(err) = bare(attr, CONTAINER_KEYS, "on the struct", None) {
                    cx.syn_error(err);
                    broken = true;
                    continue;
                }
                let parsed = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("shared") {
                        reject_value(&meta, "shared")?;
                        shared.set(&meta.path, ());
                    } else if meta.path.is_ident("device_owned") {
                        reject_value(&meta, "device_owned")?;
                        device_owned.set(&meta.path, ());
                    } else if meta.path.is_ident("name") {
                        let lit = string_value(&meta, "name", "#[sync(name = \"tags\")]")?;
                        if lit.value().is_empty() {
                            return Err(syn::Error::new_spanned(
                                &lit,
                                "`name` must not be empty: it is the model's name on the wire",
                            ));
                        }
                        name.set(&meta.path, lit.value());
                    } else {
                        return Err(unknown_key(&meta, CONTAINER_KEYS, "on the struct"));
                    }
                    Ok(())
                });
                if let Err(err) = parsed {
                    cx.syn_error(err);
                    broken = true;
                }
            } else if attr.path().is_ident("sea_orm") {
                let _ = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("table_name") {
                        let lit: LitStr = meta.value()?.parse()?;
                        table_name = Some(lit.value());
                    } else {
                        skip_sea_orm_key(&meta)?;
                    }
                    Ok(())
                });
            }
        }

        Container {
            shared: shared.get().map(|(s, ())| s),
            device_owned: device_owned.get().map(|(s, ())| s),
            name: name.get(),
            table_name,
            broken,
        }
    }
}

/// `#[sync(...)]` and the relevant `#[sea_orm(...)]` keys on one field.
pub(crate) struct Field {
    pub(crate) id: Flag,
    pub(crate) owner: Flag,
    pub(crate) skip: Flag,
    pub(crate) references: Option<(Span, syn::Path)>,
    /// `#[sea_orm(primary_key)]`
    pub(crate) primary_key: bool,
    /// `#[sea_orm(ignore)]`: not a column at all.
    pub(crate) ignored: bool,
    /// `#[sea_orm(enum_name = "...")]`: the `Column` variant's name.
    pub(crate) column_variant: Option<String>,
    /// `#[sea_orm(column_name = "...")]`: the SQL column's name.
    pub(crate) column_name: Option<String>,
    /// A `#[sync(...)]` here did not parse (already reported).
    pub(crate) broken: bool,
}

impl Field {
    pub(crate) fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut id = Attr::none(cx, "id");
        let mut owner = Attr::none(cx, "owner");
        let mut skip = Attr::none(cx, "skip");
        let mut references = Attr::none(cx, "references");
        let mut primary_key = false;
        let mut ignored = false;
        let mut column_variant = None;
        let mut column_name = None;
        let mut broken = false;

        for attr in attrs {
            if attr.path().is_ident("sync") {
                if let Some(err) = bare(
                    attr,
                    FIELD_KEYS,
                    "on a field",
                    Some("a field with no `#[sync]` attribute is synced as data"),
                ) {
                    cx.syn_error(err);
                    broken = true;
                    continue;
                }
                let parsed = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("id") {
                        reject_value(&meta, "id")?;
                        id.set(&meta.path, ());
                    } else if meta.path.is_ident("owner") {
                        reject_value(&meta, "owner")?;
                        owner.set(&meta.path, ());
                    } else if meta.path.is_ident("skip") {
                        reject_value(&meta, "skip")?;
                        skip.set(&meta.path, ());
                    } else if meta.path.is_ident("references") {
                        let path = path_value(&meta)?;
                        references.set(&meta.path, path);
                    } else {
                        return Err(unknown_key(&meta, FIELD_KEYS, "on a field"));
                    }
                    Ok(())
                });
                if let Err(err) = parsed {
                    cx.syn_error(err);
                    broken = true;
                }
            } else if attr.path().is_ident("sea_orm") {
                let _ = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("primary_key") {
                        primary_key = true;
                    } else if meta.path.is_ident("ignore") {
                        ignored = true;
                    } else if meta.path.is_ident("enum_name") {
                        let lit: LitStr = meta.value()?.parse()?;
                        column_variant = Some(lit.value());
                    } else if meta.path.is_ident("column_name") {
                        let lit: LitStr = meta.value()?.parse()?;
                        column_name = Some(lit.value());
                    } else {
                        skip_sea_orm_key(&meta)?;
                    }
                    Ok(())
                });
            }
        }

        Field {
            id: id.get().map(|(s, ())| s),
            owner: owner.get().map(|(s, ())| s),
            skip: skip.get().map(|(s, ())| s),
            references: references.get(),
            primary_key,
            ignored,
            column_variant,
            column_name,
            broken,
        }
    }
}

/// A flag key written with a value (`#[sync(id = true)]`).
fn reject_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!("`{key}` takes no value: write `#[sync({key})]`")));
    }
    Ok(())
}

fn string_value(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<LitStr> {
    let expr: syn::Expr = meta
        .value()
        .map_err(|_| meta.error(format!("`{key}` needs a string value: write `{example}`")))?
        .parse()?;
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{key}` needs a string literal: write `{example}`"),
        )),
    }
}

/// `references = path::to::Entity`: a path, not a string.
fn path_value(meta: &ParseNestedMeta<'_>) -> syn::Result<syn::Path> {
    const EXAMPLE: &str = "#[sync(references = super::location::Entity)]";
    let expr: syn::Expr = meta
        .value()
        .map_err(|_| {
            meta.error(format!(
                "`references` needs the referenced entity's path: write `{EXAMPLE}`"
            ))
        })?
        .parse()?;
    match expr {
        syn::Expr::Path(p) if p.qself.is_none() => Ok(p.path),
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Err(syn::Error::new_spanned(
            &lit,
            format!(
                "`references` takes a path, not a string: write `#[sync(references = {})]`",
                lit.value()
            ),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`references` needs the referenced entity's path: write `{EXAMPLE}`"),
        )),
    }
}

fn unknown_key(meta: &ParseNestedMeta<'_>, expected: &[&str], place: &str) -> syn::Error {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let nearest = expected
        .iter()
        .map(|k| k.split_whitespace().next().unwrap_or(k))
        .map(|k| (edit_distance(&key, k), k))
        .filter(|(d, k)| *d > 0 && *d <= (k.len() / 3).max(1))
        .min();
    let mut message = format!(
        "unknown sync attribute `{key}` {place}; expected one of {}",
        listed(expected)
    );
    if let Some((_, k)) = nearest {
        message = format!(
            "unknown sync attribute `{key}` {place}: did you mean `{k}`? (expected one of {})",
            listed(expected)
        );
    }
    syn::Error::new_spanned(&meta.path, message)
}

/// Levenshtein distance between two keys (short strings: the plain
/// quadratic table is enough).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Consumes a sea-orm key the derive does not read: `key`, `key = value` or
/// `key(...)`.
fn skip_sea_orm_key(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}
