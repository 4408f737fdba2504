//! The two models the network tests sync: a shared one and a device-owned
//! one (also the hostile-input harness's, which the fuzz targets include).

pub mod tag {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, sync_core::Syncable)]
    #[sea_orm(table_name = "tags")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub name: String,
        pub color: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod volume {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, sync_core::Syncable)]
    #[sea_orm(table_name = "volumes")]
    #[sync(device_owned)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(owner)]
        pub device: Uuid,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
