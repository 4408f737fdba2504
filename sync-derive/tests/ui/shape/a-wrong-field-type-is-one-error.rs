mod tag {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "tags")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::tag::Entity)]
        pub parent: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

// The model stays usable where a SyncModel is expected: the wrong field type
// is the only error, reported once.
fn needs_a_sync_model<M: sync_core::SyncModel>() {}

#[allow(dead_code)]
fn uses() {
    needs_a_sync_model::<tag::Model>();
}

fn main() {}
