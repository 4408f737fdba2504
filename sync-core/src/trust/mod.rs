//! Trust: device keys, sealed commits, and the library's membership.
//!
//! A link is bound to the device its transport authenticated; what that
//! device says about changes is believed only as far as signatures carry
//! it. Each commit is sealed by its device's key (`seal.rs`); any device can
//! relay a commit's changes, whole or in part, with a proof against the
//! seal; and the membership (`members.rs`) says whose keys count.

pub(crate) mod check;
pub(crate) mod key;
pub(crate) mod members;
pub(crate) mod seal;

pub use key::{DeviceKey, KeyError, PublicKey};
pub use members::{Admission, Member, MemberRecord, Removal};
pub use seal::{Hash, Husk, ProofError, Seal, SealProof, origin_of};
