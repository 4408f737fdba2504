#[derive(sync_core::Syncable)]
#[sync(shared)]
pub enum Tag {
    Red,
    Blue,
}

fn main() {}
