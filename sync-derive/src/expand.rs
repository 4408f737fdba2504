//! Code generation for a validated model.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::valid::{Model, Ownership, Role};

pub(crate) fn expand(model: &Model<'_>) -> TokenStream {
    let core = core_path();
    let ident = model.ident;
    let wire_name = &model.wire_name;
    let table = &model.table;
    let ownership = match model.ownership {
        Ownership::Shared => quote!(__sync::Ownership::Shared),
        Ownership::DeviceOwned => quote!(__sync::Ownership::DeviceOwned),
    };
    let id_ident = model.id.ident;
    let pk_ident = model.primary_key.ident;
    let pk_name = model.primary_key.wire_name();
    let pk_column = model.primary_key.column_name();

    // Each use of a field's type through one of the derive's traits is a
    // fully qualified path spanned at the type: a wrong type is reported
    // there, once (rustc merges the identical reports of several uses), with
    // the trait's `on_unimplemented` message. The impls carry no
    // where-clauses, so they exist whatever the field types and nothing that
    // needs them (the registration, the application's `tx.insert`) adds an
    // error of its own.
    let id_ty = model.id.ty;
    let sync_id = quote_spanned! {id_ty.span()=>
        <#id_ty as __sync::GlobalIdType>::to_uuid(&self.#id_ident)
    };
    let pk_ty = model.primary_key.ty;
    let local_key = quote_spanned! {pk_ty.span()=>
        <#pk_ty as __sync::PrimaryKeyType>::to_key(&self.#pk_ident)
    };

    let owner_fn = match model.owner {
        Some(owner) => {
            let owner_ident = owner.ident;
            let owner_ty = owner.ty;
            let to_uuid = quote_spanned! {owner_ty.span()=>
                <#owner_ty as __sync::OwnerIdType>::to_uuid(&self.#owner_ident)
            };
            quote! {
                fn owner(&self) -> __sync::Option<__sync::Uuid> {
                    __sync::Option::Some(#to_uuid)
                }
            }
        }
        None => quote! {
            fn owner(&self) -> __sync::Option<__sync::Uuid> {
                __sync::Option::None
            }
        },
    };

    let mut field_metas = Vec::new();
    let mut changed_checks = Vec::new();
    let mut wire_values = Vec::new();
    let mut to_sql_arms = Vec::new();
    let mut read_arms = Vec::new();
    let mut nullable_arms = Vec::new();

    for (index, (field, role)) in model.synced.iter().enumerate() {
        let f = field.ident;
        let ty = field.ty;
        let name = field.wire_name();
        let rust_type = quote!(#ty).to_string().replace(' ', "");
        let column = field.column_name();
        let variant = field.column_variant();
        let spelled_nullable = field.is_option();
        let role_tokens = match role {
            Role::Id => quote!(__sync::FieldRole::Id),
            Role::Owner => quote!(__sync::FieldRole::Owner),
            Role::Data => quote!(__sync::FieldRole::Data),
            Role::Reference(target) => {
                let name = quote_spanned! {target.span()=>
                    <<#target as __sync::SyncEntity>::SyncModel as __sync::SyncModel>::NAME
                };
                quote!(__sync::FieldRole::Reference { target: #name })
            }
        };
        let nullable = match role {
            // What the type says, aliases included.
            Role::Reference(_) => {
                quote_spanned!(ty.span()=> <#ty as __sync::ForeignKeyType>::NULLABLE)
            }
            _ => quote!(#spelled_nullable),
        };
        field_metas.push(quote! {
            __sync::FieldMeta {
                name: #name,
                column: #column,
                rust_type: #rust_type,
                nullable: #nullable,
                role: #role_tokens,
            }
        });
        changed_checks.push(quote! {
            if !__sync::field_eq(&old.#f, &new.#f) {
                changed.push(#index);
            }
        });
        nullable_arms.push(quote! {
            #index => __sync::column_nullable(
                <<Self as __sync::sea_orm::ModelTrait>::Entity as __sync::sea_orm::EntityTrait>::Column::#variant
            ),
        });
        if let Role::Reference(_) = role {
            wire_values.push(quote_spanned! {ty.span()=>
                __sync::WireValue::I64(<#ty as __sync::ForeignKeyType>::to_key(&self.#f))
            });
            read_arms.push(quote!(#index => __sync::read_key(row, alias),));
        } else {
            wire_values.push(quote!(__sync::encode_field::<#ty>(&self.#f, MODEL, #name)?));
            to_sql_arms.push(quote!(#index => __sync::to_sql::<#ty>(value),));
            read_arms.push(quote!(#index => __sync::read_field::<#ty>(row, alias),));
        }
    }

    let local_only_names: Vec<String> = model.local_only.iter().map(|f| f.wire_name()).collect();
    let local_only_columns: Vec<String> =
        model.local_only.iter().map(|f| f.column_name()).collect();
    let local_defaults = model.local_only.iter().map(|f| {
        let ty = f.ty;
        quote_spanned! {ty.span()=> __sync::default_value::<#ty>() }
    });

    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            use #core::__private as __sync;

            const MODEL: &str = #wire_name;

            #[automatically_derived]
            impl __sync::SyncModel for #ident {
                const NAME: &'static str = #wire_name;

                const META: __sync::ModelMeta = __sync::ModelMeta {
                    name: #wire_name,
                    table: #table,
                    ownership: #ownership,
                    fields: &[#(#field_metas),*],
                    local_key: #pk_name,
                    local_key_column: #pk_column,
                    local_only: &[#(#local_only_names),*],
                    local_only_columns: &[#(#local_only_columns),*],
                };

                fn sync_id(&self) -> __sync::Uuid {
                    #sync_id
                }

                #owner_fn

                fn local_key(&self) -> i64 {
                    #local_key
                }

                fn changed_fields(old: &Self, new: &Self) -> ::std::vec::Vec<usize> {
                    let mut changed = ::std::vec::Vec::new();
                    #(#changed_checks)*
                    changed
                }

                fn wire(&self) -> __sync::Result<::std::vec::Vec<__sync::WireValue>, __sync::CaptureError> {
                    __sync::Result::Ok(::std::vec![#(#wire_values),*])
                }

                fn to_sql(
                    index: usize,
                    value: &__sync::WireValue,
                ) -> __sync::Result<__sync::Value, __sync::ValueError> {
                    match index {
                        #(#to_sql_arms)*
                        _ => __sync::Result::Err(__sync::ValueError::Unsupported(
                            ::std::format!("field {} of `{}` is not a data field", index, MODEL),
                        )),
                    }
                }

                fn read_field(
                    index: usize,
                    row: &__sync::sea_orm::QueryResult,
                    alias: &str,
                ) -> __sync::Result<__sync::WireValue, __sync::sea_orm::DbErr> {
                    match index {
                        #(#read_arms)*
                        _ => __sync::Result::Err(__sync::sea_orm::DbErr::Custom(
                            ::std::format!("`{}` has no synced field {}", MODEL, index),
                        )),
                    }
                }

                fn local_defaults() -> ::std::vec::Vec<__sync::Value> {
                    ::std::vec![#(#local_defaults),*]
                }

                fn column_nullable(index: usize) -> bool {
                    match index {
                        #(#nullable_arms)*
                        _ => false,
                    }
                }
            }

            #[automatically_derived]
            impl __sync::SyncEntity for <#ident as __sync::sea_orm::ModelTrait>::Entity {
                type SyncModel = #ident;
            }

            __sync::inventory::submit! {
                __sync::ModelDescriptor::of::<#ident>()
            }
        };
    }
}

/// What a failed derive emits beside its errors, on a struct with named
/// fields (a sea-orm model): impls that say nothing, so that the model's
/// uses elsewhere (`tx.insert(...)`) add no "SyncModel is not implemented"
/// to the real mistake. The build fails on the errors; this code never runs
/// and is never registered.
pub(crate) fn fallback(input: &syn::DeriveInput) -> TokenStream {
    let syn::Data::Struct(syn::DataStruct {
        fields: syn::Fields::Named(_),
        ..
    }) = &input.data
    else {
        return TokenStream::new();
    };
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let core = core_path();
    let ident = &input.ident;
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, unused_variables, clippy::all)]
        const _: () = {
            use #core::__private as __sync;

            #[automatically_derived]
            impl __sync::SyncModel for #ident {
                const NAME: &'static str = "";
                const META: __sync::ModelMeta = __sync::ModelMeta {
                    name: "",
                    table: "",
                    ownership: __sync::Ownership::Shared,
                    fields: &[],
                    local_key: "",
                    local_key_column: "",
                    local_only: &[],
                    local_only_columns: &[],
                };
                fn sync_id(&self) -> __sync::Uuid {
                    __sync::Uuid::nil()
                }
                fn owner(&self) -> __sync::Option<__sync::Uuid> {
                    __sync::Option::None
                }
                fn local_key(&self) -> i64 {
                    0
                }
                fn changed_fields(old: &Self, new: &Self) -> ::std::vec::Vec<usize> {
                    ::std::vec::Vec::new()
                }
                fn wire(&self) -> __sync::Result<::std::vec::Vec<__sync::WireValue>, __sync::CaptureError> {
                    __sync::Result::Ok(::std::vec::Vec::new())
                }
                fn to_sql(
                    index: usize,
                    value: &__sync::WireValue,
                ) -> __sync::Result<__sync::Value, __sync::ValueError> {
                    __sync::Result::Err(__sync::ValueError::Unsupported(::std::string::String::new()))
                }
                fn read_field(
                    index: usize,
                    row: &__sync::sea_orm::QueryResult,
                    alias: &str,
                ) -> __sync::Result<__sync::WireValue, __sync::sea_orm::DbErr> {
                    __sync::Result::Err(__sync::sea_orm::DbErr::Custom(::std::string::String::new()))
                }
                fn local_defaults() -> ::std::vec::Vec<__sync::Value> {
                    ::std::vec::Vec::new()
                }
                fn column_nullable(index: usize) -> bool {
                    false
                }
            }

            #[automatically_derived]
            impl __sync::SyncEntity for <#ident as __sync::sea_orm::ModelTrait>::Entity {
                type SyncModel = #ident;
            }
        };
    }
}

/// The path of the engine crate as the deriving crate sees it: `sync_core`
/// (possibly renamed) when it depends on it, else the `syncable` facade's
/// re-export.
fn core_path() -> TokenStream {
    use proc_macro_crate::{FoundCrate, crate_name};
    match crate_name("sync-core") {
        Ok(FoundCrate::Itself) => quote!(::sync_core),
        Ok(FoundCrate::Name(name)) => {
            let ident = format_ident!("{}", name);
            quote!(::#ident)
        }
        Err(_) => match crate_name("syncable") {
            Ok(FoundCrate::Name(name)) => {
                let ident = format_ident!("{}", name);
                quote!(::#ident::core)
            }
            Ok(FoundCrate::Itself) => quote!(crate::core),
            Err(_) => quote!(::sync_core),
        },
    }
}
