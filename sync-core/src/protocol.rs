//! The messages devices exchange, and their encoding.
//!
//! Every message travels in an envelope that starts with the protocol
//! version, so a peer speaking another version is told so in words (and the
//! range this device supports) instead of failing to decode.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::EncodedChange;
use crate::trust::{Hash, MemberRecord, SealProof};
use crate::vector::VersionVector;

/// The protocol version this engine speaks.
pub const PROTOCOL_VERSION: u16 = 13;
/// The oldest protocol version this engine still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 13;
/// The largest encoded message accepted. Larger payloads are paged.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// A message between two devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// The first message each side sends.
    Hello(Hello),
    /// Changes pushed as they are written (or relayed).
    Push(Push),
    /// "Send me what I lack": the requester's version vector.
    PullRequest(PullRequest),
    /// A page of changes the requester lacked.
    PullResponse(PullResponse),
    /// A new device asks for a page of the whole library.
    SnapshotRequest(SnapshotRequest),
    /// A page of the whole library.
    SnapshotResponse(SnapshotResponse),
    /// What the sender holds, so the receiver may prune what both have.
    Ack(Ack),
    /// Liveness, with the sender's vector so each side sees its lag.
    Heartbeat(Heartbeat),
    /// The sender refuses something, and says why.
    Error(ErrorMessage),
    /// The library's membership records the sender holds.
    Members(Members),
}

impl Message {
    /// The message kind's number, as written in a frame header.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Push(_) => 2,
            Message::PullRequest(_) => 3,
            Message::PullResponse(_) => 4,
            Message::SnapshotRequest(_) => 5,
            Message::SnapshotResponse(_) => 6,
            Message::Ack(_) => 7,
            Message::Heartbeat(_) => 8,
            Message::Error(_) => 9,
            Message::Members(_) => 10,
        }
    }

    /// The message kind's name, for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Push(_) => "push",
            Message::PullRequest(_) => "pull_request",
            Message::PullResponse(_) => "pull_response",
            Message::SnapshotRequest(_) => "snapshot_request",
            Message::SnapshotResponse(_) => "snapshot_response",
            Message::Ack(_) => "ack",
            Message::Heartbeat(_) => "heartbeat",
            Message::Error(_) => "error",
            Message::Members(_) => "members",
        }
    }
}

/// The handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's device id.
    pub device: Uuid,
    /// The library the sender syncs.
    pub library: Uuid,
    /// The protocol versions the sender speaks.
    pub min_version: u16,
    /// The newest protocol version the sender speaks.
    pub max_version: u16,
    /// What the sender holds.
    pub vector: VersionVector,
    /// Whether the sender is a new device that still needs a snapshot.
    pub needs_backfill: bool,
    /// A digest of the membership records the sender holds.
    #[serde(with = "serde_bytes")]
    pub members: Hash,
}

/// Changes of one origin with a claim: whoever holds everything of `origin`
/// up to `after` holds everything up to `upto` once it has applied
/// `changes` (device-owned changes that a newer state superseded leave
/// holes, which the claim covers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Whose changes these are.
    pub origin: Uuid,
    /// The device that origin is an incarnation of.
    pub device: Uuid,
    /// The number the claim starts after.
    pub after: u64,
    /// The number the claim reaches.
    pub upto: u64,
    /// The changes, in number order, as their origin encoded them.
    pub changes: Vec<EncodedChange>,
    /// The seals of the commits these changes belong to, with what proves
    /// the changes (and the numbers the claim covers without them) against
    /// each.
    pub seals: Vec<SealProof>,
}

/// Pushed changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// Batches, one per origin.
    pub batches: Vec<Batch>,
}

/// A request for what the requester lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// What the requester holds.
    pub vector: VersionVector,
    /// The most changes to send in one response.
    pub limit: u32,
    /// Numbers the requester holds above its vector, as `(origin, first,
    /// last)`: received beyond a gap that has not filled. What it holds
    /// there is not sent again; a range the server pruned that it lacks
    /// sends it to a snapshot. At most [`MAX_AHEAD`] are read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<(Uuid, u64, u64)>,
}

/// A page of changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Per origin, what the requester lacked, with a claim the responder
    /// can vouch for (only up to its own vector).
    pub batches: Vec<Batch>,
    /// Whether there is more: ask again with the advanced vector.
    pub has_more: bool,
}

/// Where a snapshot resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCursor {
    /// The device serving the snapshot: a cursor is only meaningful to it.
    pub source: Uuid,
    /// The model being sent (its position in dependency order); the number
    /// of models for the final section of held rows.
    pub model: u32,
    /// The last record id sent of that model.
    pub after: Option<Uuid>,
    /// The vector the snapshot reflects, fixed by its first page.
    pub vector: VersionVector,
    /// Rows in the whole snapshot, as counted at its first page.
    pub total: u64,
    /// Rows sent so far.
    pub done: u64,
    /// The records whose rows the serving device held back when the
    /// snapshot started (model, id): their numbers are in its vector, and
    /// one released since is served, as it stands, with the held rows
    /// (their model's pages may have gone by before it was stored). At
    /// most [`MAX_SNAPSHOT_LIMIT`](crate::MAX_SNAPSHOT_LIMIT) are kept.
    #[serde(default)]
    pub held: Vec<(String, Uuid)>,
    /// The serving device's incarnation (its origin) when the snapshot
    /// started. A device that opened since (after a crash, a power loss, a
    /// restored backup) may have lost writes that pages already served
    /// carry (rows are read after the vector is fixed): it starts the
    /// snapshot over rather than continue it. Last, and nil when missing:
    /// a cursor a device stored before protocol 12 (it resumes a backfill
    /// from it) still decodes, and its server starts over.
    #[serde(default)]
    pub origin: Uuid,
    /// Ranges above the vector, as `(origin, first, last)`, whose changes
    /// the serving device had pruned when the snapshot started (held beyond
    /// a gap that never filled): the rows carry them, no change can bring
    /// them. At most [`MAX_AHEAD`] are kept.
    #[serde(default)]
    pub pruned: Vec<(Uuid, u64, u64)>,
}

/// A request for a page of the whole library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Where to resume; `None` starts a snapshot.
    pub cursor: Option<SnapshotCursor>,
    /// The most rows to send in one response.
    pub limit: u32,
}

/// One record's state in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SnapshotRow {
    /// A shared record: its fields with their clocks, or its tombstone.
    Shared {
        /// The model's wire name.
        model: String,
        /// The record.
        id: Uuid,
        /// Its state: an encoded [`SharedImage`](crate::SharedImage), as the serving device
        /// stores it.
        #[serde(with = "serde_bytes")]
        image: Vec<u8>,
    },
    /// A device-owned record: its owner's newest change, as the owner
    /// encoded it.
    Owned(EncodedChange),
}

/// A page of the whole library: every record's state, as the serving
/// device holds it (references to records it does not have yet included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The rows.
    pub rows: Vec<SnapshotRow>,
    /// Where the next page starts, `None` at the end.
    pub next: Option<SnapshotCursor>,
    /// The vector the snapshot reflects.
    pub vector: VersionVector,
    /// Rows in the whole snapshot.
    pub total: u64,
    /// Rows sent up to and including this page.
    pub done: u64,
    /// On the last page: the changes the serving device received since the
    /// snapshot's vector (as a pull from that vector brings them, one pull's
    /// worth). The snapshot's rows may carry them, read after the vector
    /// was; taken with the page, they are held as changes, which the new
    /// device can pass on, even if the serving device loses them right
    /// after (a power loss). Empty elsewhere. (Always written: messages
    /// are positional, and a field after it follows.)
    #[serde(default)]
    pub changes: Vec<Batch>,
    /// The ranges above the vector that the snapshot's rows carry and no
    /// change can bring (see [`SnapshotCursor::pruned`]): held, once the
    /// last page is applied, as the vector is. At most [`MAX_AHEAD`] are
    /// read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<(Uuid, u64, u64)>,
}

/// Changes a receiver holds back for now (their clock is too far ahead,
/// their model unknown here): its vector stops before them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    /// The origin.
    pub origin: Uuid,
    /// The first change held back.
    pub seq: u64,
    /// How many of that origin's changes are held back.
    pub count: u64,
    /// Why, in words.
    pub reason: String,
}

/// What the sender holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The sender's vector.
    pub vector: VersionVector,
    /// Changes the sender received from the receiver of this ack and holds
    /// back for now, with why (at most a few origins).
    pub held_back: Vec<HeldBack>,
}

/// Liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's vector; empty when [`since`](Heartbeat::since) stands
    /// for it.
    pub vector: VersionVector,
    /// A digest of the membership records the sender holds.
    #[serde(with = "serde_bytes")]
    pub members: Hash,
    /// The devices the sender has a session with now: each of them pushes
    /// its own commits to the sender directly, so a relay need not forward
    /// them (at most [`MAX_LINKS`] are read).
    #[serde(default)]
    pub links: Vec<Uuid>,
    /// What the sender knows each member of the library holds (its own
    /// vector included), each report stamped with the time (milliseconds, by
    /// that member's clock) the member held it: devices that never meet
    /// learn of each other's progress through those between, which
    /// tombstone collection waits for (at most [`MAX_LINKS`] are read).
    #[serde(default)]
    pub held: Vec<HeldReport>,
    /// The sender's vector as a difference from one it sent in full
    /// earlier in the session: a vector grows with every origin the
    /// library ever had, and heartbeats go to every peer every few seconds,
    /// so sending it whole each time is most of a large fleet's traffic.
    #[serde(default)]
    pub since: Option<VectorSince>,
}

/// A vector given as its difference from a base vector, named by its
/// digest ([`vector_digest`]): a receiver that holds a vector of that
/// digest rebuilds the sender's exactly, whatever heartbeats were lost
/// between; one that does not ignores the vector (and what is reported
/// against it) until the sender's next full heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorSince {
    /// The digest of the base vector.
    #[serde(with = "serde_bytes")]
    pub base: Hash,
    /// Each origin whose number differs from the base, with the sender's
    /// number (0: none of it).
    pub differs: Vec<(Uuid, u64)>,
}

/// The digest that names a vector in [`VectorSince::base`]: of its origins
/// and numbers, in order (an origin at 0 is one it does not hold).
pub fn vector_digest(vector: &VersionVector) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("syncable heartbeat vector v1");
    for (origin, seq) in vector.iter().filter(|(_, s)| *s > 0) {
        h.update(origin.as_bytes());
        h.update(&seq.to_be_bytes());
    }
    *h.finalize().as_bytes()
}

/// What one member of the library held, as a heartbeat reports it: where
/// its vector differs from the heartbeat's own `vector`. Members mostly hold
/// what the sender holds, so a report is a few bytes, not a vector per
/// member (which grows with members x origins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldReport {
    /// The member.
    pub device: Uuid,
    /// When the member held it, in milliseconds by its own clock.
    pub stamp: u64,
    /// Each origin whose number the member holds differs from the
    /// heartbeat's vector, with the member's number (0: none of it).
    pub differs: Vec<(Uuid, u64)>,
    /// Numbers the member holds above its vector, as `(origin, first,
    /// last)`: received out of order, before a gap that has not filled.
    /// If the only device that held a gap's numbers lost them (a power
    /// loss), the gap never fills, and what lies beyond it is known to be
    /// held everywhere only through these (tombstone collection waits for
    /// it). Usually empty; at most [`MAX_AHEAD`] are sent or read.
    #[serde(default)]
    pub ahead: Vec<(Uuid, u64, u64)>,
    /// Per origin, the lowest number the member counts as held only
    /// through snapshot rows it holds back for now (their clock ahead,
    /// their model unknown): its vector covers them, but their state is not
    /// merged there yet, so a delete from there on is not held by it, and
    /// its tombstone must stay. Usually empty; at most [`MAX_AHEAD`] are
    /// sent or read (held rows of more origins than that at once are not
    /// all reported: a known limit, far beyond what held rows reach).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<(Uuid, u64)>,
}

/// The most ranges of [`HeldReport::ahead`] sent or read: a report cut
/// short claims less than its member holds, which only delays collection.
pub const MAX_AHEAD: usize = 1_024;

impl HeldReport {
    /// The member's vector, given the heartbeat's vector it differs from.
    pub fn vector(&self, base: &VersionVector) -> VersionVector {
        let mut v = base.clone();
        for (origin, seq) in &self.differs {
            v.set(*origin, *seq);
        }
        v
    }
}

/// The most entries of [`Heartbeat::links`] (and of [`Heartbeat::held`]) a
/// receiver reads.
pub const MAX_LINKS: usize = 4_096;

/// Membership records, sent when two devices' digests differ: those the
/// sender has not sent that peer yet (all of them again after a full
/// heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Members {
    /// The records.
    pub records: Vec<MemberRecord>,
}

/// Why a peer refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer's protocol versions and ours do not overlap.
    UnsupportedVersion {
        /// The oldest version we speak.
        min: u16,
        /// The newest version we speak.
        max: u16,
    },
    /// The peer syncs another library.
    WrongLibrary,
    /// The peer is not paired with us.
    NotPaired,
    /// The peer asked for changes we no longer keep: it must resync from a
    /// snapshot.
    ResyncRequired,
    /// A message we could not accept.
    Malformed,
    /// A message that makes no sense in the session's state.
    Unexpected,
    /// Our side failed.
    Internal,
    /// The peer was away beyond the retention horizon: it must resync from
    /// a snapshot, and settle the records the snapshot lacks (their
    /// tombstones may have been collected meanwhile).
    Expired,
}

/// An error sent to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// In words.
    pub message: String,
}

/// A message that could not be decoded. Decoding never panics and never
/// allocates more than the input's size allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Another protocol version.
    #[error("protocol version {got} is not supported (this device speaks {min} to {max})")]
    UnsupportedVersion {
        /// The version received.
        got: u16,
        /// The oldest supported.
        min: u16,
        /// The newest supported.
        max: u16,
    },
    /// Not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    version: u16,
    message: &'a Message,
}

#[derive(Deserialize)]
struct EnvelopeHeader {
    version: u16,
    #[allow(dead_code)]
    message: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    #[allow(dead_code)]
    version: u16,
    message: Message,
}

/// Encodes a message in its envelope.
pub fn encode(message: &Message) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(&EnvelopeOut {
        version: PROTOCOL_VERSION,
        message,
    })
}

/// Decodes an envelope from untrusted bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let header: EnvelopeHeader =
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&header.version) {
        return Err(DecodeError::UnsupportedVersion {
            got: header.version,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
    }
    let envelope: EnvelopeIn =
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(envelope.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Message {
        Message::Hello(Hello {
            device: Uuid::from_u128(1),
            library: Uuid::from_u128(2),
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            vector: [(Uuid::from_u128(1), 5)].into_iter().collect(),
            needs_backfill: false,
            members: [3; 32],
        })
    }

    #[test]
    fn a_message_round_trips() {
        let m = hello();
        assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
    }

    /// Messages are positional: a field left out when empty must be the
    /// last, or the one after it is read in its place. Each such field,
    /// empty and not, beside the fields around it.
    #[test]
    fn fields_left_out_when_empty_keep_the_others_in_place() {
        let o = Uuid::from_u128(4);
        let vector: VersionVector = [(o, 2)].into_iter().collect();
        for ahead in [Vec::new(), vec![(o, 4, 6)]] {
            let pull = Message::PullRequest(PullRequest {
                vector: vector.clone(),
                limit: 7,
                ahead,
            });
            assert_eq!(decode(&encode(&pull).unwrap()).unwrap(), pull);
        }
        for pruned in [Vec::new(), vec![(o, 4, 6)]] {
            let page = Message::SnapshotResponse(SnapshotResponse {
                rows: Vec::new(),
                next: None,
                vector: vector.clone(),
                total: 3,
                done: 3,
                changes: Vec::new(),
                pruned,
            });
            assert_eq!(decode(&encode(&page).unwrap()).unwrap(), page);
        }
    }

    #[test]
    fn another_protocol_version_is_named_with_the_supported_range() {
        #[derive(Serialize)]
        struct Future<'a> {
            version: u16,
            message: &'a str,
        }
        let bytes = rmp_serde::to_vec(&Future {
            version: 99,
            message: "from the future",
        })
        .unwrap();
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::UnsupportedVersion {
                got: 99,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION
            }
        );
    }

    /// A device stores its backfill's cursor to resume it after a restart;
    /// one stored before protocol 12 has no origin, and still decodes.
    #[test]
    fn a_cursor_stored_before_protocol_12_decodes_with_a_nil_origin() {
        let source = Uuid::from_u128(7);
        let mut vector = VersionVector::new();
        vector.advance(Uuid::from_u128(8), 3);
        let old = rmp_serde::to_vec(&(source, 2u32, None::<Uuid>, &vector, 10u64, 4u64)).unwrap();
        let cursor: SnapshotCursor = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(
            (cursor.source, cursor.done, cursor.origin),
            (source, 4, Uuid::nil())
        );
        assert_eq!(cursor.vector, vector);

        let new = SnapshotCursor {
            origin: Uuid::from_u128(9),
            ..cursor
        };
        let back: SnapshotCursor =
            rmp_serde::from_slice(&rmp_serde::to_vec(&new).unwrap()).unwrap();
        assert_eq!(back, new);

        // One stored by protocol 12: held rows and an origin, no pruned
        // ranges.
        let twelve = rmp_serde::to_vec(&(
            source,
            2u32,
            None::<Uuid>,
            &vector,
            10u64,
            4u64,
            vec![("tags".to_owned(), Uuid::from_u128(5))],
            Uuid::from_u128(9),
        ))
        .unwrap();
        let cursor: SnapshotCursor = rmp_serde::from_slice(&twelve).unwrap();
        assert_eq!(
            (cursor.origin, cursor.held.len(), cursor.pruned.len()),
            (Uuid::from_u128(9), 1, 0)
        );
    }

    #[test]
    fn an_oversized_message_is_refused_before_decoding() {
        let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(decode(&bytes), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn a_huge_claimed_length_does_not_allocate_it() {
        // An envelope whose change list claims 4 billion entries.
        let mut bytes = rmp_serde::to_vec(&(PROTOCOL_VERSION,)).unwrap();
        bytes.truncate(0);
        rmp::encode::write_array_len(&mut bytes, 2).unwrap();
        rmp::encode::write_u16(&mut bytes, PROTOCOL_VERSION).unwrap();
        rmp::encode::write_map_len(&mut bytes, 1).unwrap();
        rmp::encode::write_str(&mut bytes, "Push").unwrap();
        rmp::encode::write_array_len(&mut bytes, 1).unwrap();
        rmp::encode::write_array_len(&mut bytes, u32::MAX).unwrap();
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&hello()).unwrap();
            for (at, byte) in flips {
                let n = bytes.len();
                bytes[at % n] = byte;
            }
            let _ = decode(&bytes);
        }
    }
}
