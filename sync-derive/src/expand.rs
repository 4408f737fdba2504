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
    let id_variant = model.id.column_variant();
    let pk_ident = model.primary_key.ident;
    let pk_name = model.primary_key.wire_name();
    let pk_variant = model.primary_key.column_variant();

    // Type assertions carry the user's span, so a wrong type is reported at
    // the field, with the trait's `on_unimplemented` message.
    let id_ty = model.id.ty;
    let mut assertions = vec![quote_spanned! {id_ty.span()=>
        #id_ty: __sync::GlobalIdType,
    }];
    let pk_ty = model.primary_key.ty;
    assertions.push(quote_spanned! {pk_ty.span()=>
        #pk_ty: __sync::PrimaryKeyType,
    });

    let owner_fn = match model.owner {
        Some(owner) => {
            let owner_ident = owner.ident;
            let owner_ty = owner.ty;
            assertions.push(quote_spanned! {owner_ty.span()=>
                #owner_ty: __sync::OwnerIdType,
            });
            quote! {
                fn owner(&self) -> __sync::Option<__sync::Uuid> {
                    __sync::Option::Some(__sync::OwnerIdType::to_uuid(&self.#owner_ident))
                }
            }
        }
        None => quote! {
            fn owner(&self) -> __sync::Option<__sync::Uuid> {
                __sync::Option::None
            }
        },
    };

    let mut target_assertions = Vec::new();
    let mut referencing_arms = Vec::new();
    let mut clear_arms = Vec::new();
    let mut field_metas = Vec::new();
    let mut changed_checks = Vec::new();
    let mut capture_arms = Vec::new();
    let mut slots = Vec::new();
    let mut apply_arms = Vec::new();
    let mut update_sets = Vec::new();
    let mut insert_sets = Vec::new();

    for (field, role) in &model.synced {
        let f = field.ident;
        let ty = field.ty;
        let name = field.wire_name();
        let rust_type = quote!(#ty).to_string().replace(' ', "");
        let column = field.column_name();
        let nullable = field.is_option();
        let slot = format_ident!("__slot_{}", name);
        let role_tokens = match role {
            Role::Id => quote!(__sync::FieldRole::Id),
            Role::Owner => quote!(__sync::FieldRole::Owner),
            Role::Data => quote!(__sync::FieldRole::Data),
            Role::Reference(target) => {
                quote!(__sync::FieldRole::Reference {
                    target: <<#target as __sync::SyncEntity>::SyncModel as __sync::SyncModel>::NAME,
                })
            }
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
                changed.push(#name);
            }
        });
        slots.push(quote!(let mut #slot: __sync::Option<#ty> = __sync::Option::None;));
        let duplicate = quote! {
            if #slot.is_some() {
                return __sync::Result::Err(__sync::ApplyError::DuplicateField {
                    model: MODEL,
                    field: #name.into(),
                });
            }
        };

        if let Role::Reference(target) = role {
            assertions.push(quote_spanned! {ty.span()=>
                #ty: __sync::ForeignKeyType,
            });
            // Only on the SyncModel impl: on the SyncEntity impl, a reference
            // cycle (location <-> entry, a self-reference) would make proving
            // either entity's impl recurse forever.
            target_assertions.push(quote_spanned! {target.span()=>
                #target: __sync::SyncEntity,
            });
            let variant = field.column_variant();
            referencing_arms.push(quote! {
                #name => Entity::find().filter(Column::#variant.eq(key)).all(db).await?,
            });
            if field.is_option() {
                clear_arms.push(quote! {
                    #name => {
                        let null: __sync::sea_orm::Value =
                            __sync::Option::<<#ty as __sync::NullableKey>::Inner>::None.into();
                        Entity::update_many()
                            .col_expr(Column::#variant, __sync::sea_orm::sea_query::Expr::value(null))
                            .filter(Column::#variant.eq(key))
                            .exec(db)
                            .await?
                            .rows_affected
                    }
                });
            }
            capture_arms.push(quote! {
                #name => out.push(__sync::FieldValue::new(
                    #name,
                    __sync::capture_reference::<#target, #ty, C>(db, &self.#f, MODEL, #name).await?,
                )),
            });
            apply_arms.push(quote! {
                #name => {
                    #duplicate
                    #slot = __sync::Option::Some(
                        __sync::resolve_reference::<#target, #ty, C>(
                            db,
                            &field.value,
                            __sync::ReferenceSite { model: MODEL, id, field: #name },
                            missing_parent,
                            &mut deferred,
                        )
                        .await?,
                    );
                }
            });
        } else {
            capture_arms.push(quote! {
                #name => out.push(__sync::FieldValue::new(
                    #name,
                    __sync::encode_field::<#ty>(&self.#f, MODEL, #name)?,
                )),
            });
            apply_arms.push(quote! {
                #name => {
                    #duplicate
                    #slot = __sync::Option::Some(
                        __sync::decode_field::<#ty>(&field.value, MODEL, #name)?,
                    );
                }
            });
        }

        if *role == Role::Id {
            continue;
        }
        update_sets.push(quote! {
            if let __sync::Option::Some(value) = #slot {
                active.#f.set_if_not_equals(value);
            }
        });
        insert_sets.push(quote! {
            #f: __sync::sea_orm::ActiveValue::Set(#slot.ok_or(
                __sync::ApplyError::Incomplete { model: MODEL, id, field: #name },
            )?),
        });
    }

    let local_only_names: Vec<String> = model.local_only.iter().map(|f| f.wire_name()).collect();
    let local_inserts = model.local_only.iter().map(|f| {
        let ident = f.ident;
        let ty = f.ty;
        quote_spanned! {ty.span()=>
            #ident: __sync::sea_orm::ActiveValue::Set(<#ty as ::core::default::Default>::default()),
        }
    });
    let id_slot = format_ident!("__slot_{}", model.id.wire_name());

    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            use #core::__private as __sync;
            use __sync::sea_orm::{ActiveModelTrait as _, EntityTrait as _, QueryFilter as _, ColumnTrait as _};

            const MODEL: &str = #wire_name;

            // The field types' requirements are where-clauses of the impl:
            // a wrong type is reported once, at the field, and the body is
            // checked as if it were right, so no cascade follows.
            #[automatically_derived]
            impl __sync::SyncModel for #ident
            where
                #(#assertions)*
                #(#target_assertions)*
            {
                type Entity = Entity;
                type ActiveModel = ActiveModel;

                const NAME: &'static str = #wire_name;

                const META: __sync::ModelMeta = __sync::ModelMeta {
                    name: #wire_name,
                    table: #table,
                    ownership: #ownership,
                    fields: &[#(#field_metas),*],
                    local_key: #pk_name,
                    local_only: &[#(#local_only_names),*],
                };

                fn sync_id(&self) -> __sync::Uuid {
                    __sync::GlobalIdType::to_uuid(&self.#id_ident)
                }

                #owner_fn

                fn local_key(&self) -> i64 {
                    __sync::PrimaryKeyType::to_key(&self.#pk_ident)
                }

                fn changed_fields(old: &Self, new: &Self) -> ::std::vec::Vec<&'static str> {
                    let mut changed = ::std::vec::Vec::new();
                    #(#changed_checks)*
                    changed
                }

                fn capture<C: __sync::sea_orm::ConnectionTrait>(
                    &self,
                    db: &C,
                ) -> impl __sync::Future<
                    Output = __sync::Result<::std::vec::Vec<__sync::FieldValue>, __sync::CaptureError>,
                > + Send {
                    async move {
                        let names = __sync::field_names(&<Self as __sync::SyncModel>::META);
                        self.capture_fields(db, &names).await
                    }
                }

                fn capture_fields<C: __sync::sea_orm::ConnectionTrait>(
                    &self,
                    db: &C,
                    fields: &[&str],
                ) -> impl __sync::Future<
                    Output = __sync::Result<::std::vec::Vec<__sync::FieldValue>, __sync::CaptureError>,
                > + Send {
                    async move {
                        let mut out = ::std::vec::Vec::with_capacity(fields.len());
                        for &name in fields {
                            match name {
                                #(#capture_arms)*
                                _ => {}
                            }
                        }
                        __sync::Result::Ok(out)
                    }
                }

                fn apply<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    id: __sync::Uuid,
                    fields: &[__sync::FieldValue],
                    missing_parent: __sync::MissingParent,
                ) -> impl __sync::Future<
                    Output = __sync::Result<__sync::Applied, __sync::ApplyError>,
                > + Send {
                    async move {
                        #(#slots)*
                        let mut deferred = ::std::vec::Vec::new();
                        for field in fields {
                            match field.name.as_str() {
                                #(#apply_arms)*
                                other => {
                                    return __sync::Result::Err(__sync::ApplyError::UnknownField {
                                        model: MODEL,
                                        field: other.into(),
                                    });
                                }
                            }
                        }
                        if let __sync::Option::Some(sent) = &#id_slot {
                            if __sync::GlobalIdType::to_uuid(sent) != id {
                                return __sync::Result::Err(__sync::ApplyError::IdMismatch { model: MODEL, id });
                            }
                        }
                        let existing = Entity::find()
                            .filter(Column::#id_variant.eq(id))
                            .one(db)
                            .await?;
                        match existing {
                            __sync::Option::Some(row) => {
                                let mut active: ActiveModel =
                                    __sync::sea_orm::IntoActiveModel::into_active_model(row);
                                #(#update_sets)*
                                if active.is_changed() {
                                    let attempted = active.clone();
                                    if let __sync::Result::Err(e) = active.update(db).await {
                                        return __sync::Result::Err(
                                            __sync::unique_or_db::<Entity, ActiveModel, C>(db, MODEL, id, &attempted, e).await,
                                        );
                                    }
                                }
                                __sync::Result::Ok(__sync::Applied { inserted: false, deferred })
                            }
                            __sync::Option::None => {
                                let active = ActiveModel {
                                    #pk_ident: __sync::sea_orm::ActiveValue::NotSet,
                                    #id_ident: __sync::sea_orm::ActiveValue::Set(
                                        __sync::GlobalIdType::from_uuid(id),
                                    ),
                                    #(#insert_sets)*
                                    #(#local_inserts)*
                                };
                                let attempted = active.clone();
                                if let __sync::Result::Err(e) = Entity::insert(active).exec_without_returning(db).await {
                                    return __sync::Result::Err(
                                        __sync::unique_or_db::<Entity, ActiveModel, C>(db, MODEL, id, &attempted, e).await,
                                    );
                                }
                                __sync::Result::Ok(__sync::Applied { inserted: true, deferred })
                            }
                        }
                    }
                }

                fn delete_by_id<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    id: __sync::Uuid,
                ) -> impl __sync::Future<Output = __sync::Result<bool, __sync::sea_orm::DbErr>> + Send {
                    async move {
                        let result = Entity::delete_many()
                            .filter(Column::#id_variant.eq(id))
                            .exec(db)
                            .await?;
                        __sync::Result::Ok(result.rows_affected > 0)
                    }
                }

                fn rows_referencing<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    field: &str,
                    key: i64,
                ) -> impl __sync::Future<
                    Output = __sync::Result<::std::vec::Vec<__sync::Uuid>, __sync::sea_orm::DbErr>,
                > + Send {
                    async move {
                        #[allow(unreachable_code)]
                        let rows: ::std::vec::Vec<Self> = match field {
                            #(#referencing_arms)*
                            _ => ::std::vec::Vec::new(),
                        };
                        __sync::Result::Ok(rows.iter().map(<Self as __sync::SyncModel>::sync_id).collect())
                    }
                }

                fn clear_references<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    field: &str,
                    key: i64,
                ) -> impl __sync::Future<
                    Output = __sync::Result<u64, __sync::sea_orm::DbErr>,
                > + Send {
                    async move {
                        #[allow(unreachable_code)]
                        let changed: u64 = match field {
                            #(#clear_arms)*
                            _ => 0,
                        };
                        __sync::Result::Ok(changed)
                    }
                }

                fn page<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    after: i64,
                    limit: u64,
                ) -> impl __sync::Future<
                    Output = __sync::Result<::std::vec::Vec<Self>, __sync::sea_orm::DbErr>,
                > + Send {
                    use __sync::sea_orm::QuerySelect as _;
                    use __sync::sea_orm::QueryOrder as _;
                    Entity::find()
                        .filter(Column::#pk_variant.gt(after))
                        .order_by_asc(Column::#pk_variant)
                        .limit(limit)
                        .all(db)
                }

                fn find_by_id<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    id: __sync::Uuid,
                ) -> impl __sync::Future<
                    Output = __sync::Result<__sync::Option<Self>, __sync::sea_orm::DbErr>,
                > + Send {
                    Entity::find().filter(Column::#id_variant.eq(id)).one(db)
                }
            }

            #[automatically_derived]
            impl __sync::SyncEntity for Entity
            where
                #(#assertions)*
            {
                type SyncModel = #ident;

                fn local_key_of<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    id: __sync::Uuid,
                ) -> impl __sync::Future<
                    Output = __sync::Result<__sync::Option<i64>, __sync::sea_orm::DbErr>,
                > + Send {
                    async move {
                        let row = Entity::find()
                            .filter(Column::#id_variant.eq(id))
                            .one(db)
                            .await?;
                        __sync::Result::Ok(row.map(|row| <#ident as __sync::SyncModel>::local_key(&row)))
                    }
                }

                fn global_id_of<C: __sync::sea_orm::ConnectionTrait>(
                    db: &C,
                    key: i64,
                ) -> impl __sync::Future<
                    Output = __sync::Result<__sync::Option<__sync::Uuid>, __sync::sea_orm::DbErr>,
                > + Send {
                    async move {
                        let row = Entity::find()
                            .filter(Column::#pk_variant.eq(key))
                            .one(db)
                            .await?;
                        __sync::Result::Ok(row.map(|row| <#ident as __sync::SyncModel>::sync_id(&row)))
                    }
                }
            }

            __sync::inventory::submit! {
                __sync::ModelDescriptor::of::<#ident>()
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
