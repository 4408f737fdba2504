mod volume {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "volumes")]
    #[sync(device_owned, name = "volume")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique, column_name = "global_id")]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(owner)]
        pub r#device: Uuid,
        #[sync(references = super::volume::Entity)]
        pub parent_id: Option<u32>,
        #[sea_orm(enum_name = "DisplayName")]
        pub name: String,
        #[sync(skip)]
        pub is_online: bool,
        #[sea_orm(ignore)]
        pub scratch: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn main() {
    use sync_core::SyncModel;
    assert_eq!(volume::Model::META.name, "volume");
    assert_eq!(volume::Model::META.table, "volumes");
    assert_eq!(volume::Model::META.local_only, ["is_online"]);
    let names: Vec<&str> = volume::Model::META.fields.iter().map(|f| f.name).collect();
    assert_eq!(names, ["gid", "device", "parent_id", "name"]);
}
