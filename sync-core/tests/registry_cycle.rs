//! A program whose models reference each other through non-nullable keys
//! only: no row of either could ever be created first, and the registry says
//! so.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod folder {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, sync_core::Syncable)]
    #[sea_orm(table_name = "folders")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::file::Entity)]
        pub cover_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod file {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, sync_core::Syncable)]
    #[sea_orm(table_name = "files")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::folder::Entity)]
        pub folder_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[test]
fn a_cycle_without_a_nullable_edge_is_reported() {
    let err = sync_core::Registry::global().unwrap_err();
    assert_eq!(
        err,
        sync_core::RegistryError::Cycle(vec!["files".into(), "folders".into(), "files".into()])
    );
    let message = err.to_string();
    assert!(message.contains("files -> folders -> files"), "{message}");
    assert!(
        message.contains("Option"),
        "the error says how to fix it: {message}"
    );
}
