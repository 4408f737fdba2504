#[derive(sync_core::Syncable)]
#[sync(shared)]
pub struct Tag(i32, uuid::Uuid);

fn main() {}
