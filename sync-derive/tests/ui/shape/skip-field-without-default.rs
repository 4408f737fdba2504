mod tag {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum ScanState {
        #[sea_orm(string_value = "idle")]
        Idle,
    }

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "tags")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sync(id)]
        pub gid: Uuid,
        #[sync(skip)]
        pub scan_state: ScanState,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn main() {}
