//! Catch-up by version vector: serving a peer exactly what it lacks, and
//! advancing this device's vector by what peers vouch for.

use sea_orm::TransactionTrait;
use uuid::Uuid;

use crate::apply::Rejection;
use crate::change::{Change, FieldChange, Op};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::protocol::{ErrorCode, ErrorMessage, PullRequest, PullResponse};
use crate::store::{self, Held};
use crate::vector::VersionVector;

/// A sender's claim about a set of changes from one origin: whoever holds
/// everything of `origin` up to `after` holds everything up to `upto` once
/// the changes are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The origin.
    pub origin: Uuid,
    /// The number the claim starts after.
    pub after: u64,
    /// The number it reaches.
    pub upto: u64,
}

/// The largest page a peer may ask for.
pub const MAX_PULL_LIMIT: u32 = 10_000;

/// The encoded size at which a page (or a push) is cut, well under the
/// message cap, so that a page of large rows still fits one frame.
pub const PAGE_BYTES: usize = crate::protocol::MAX_MESSAGE_BYTES / 4;

/// The encoded size of a change, for paging.
pub(crate) fn encoded_len(change: &Change) -> usize {
    change.encode().map_or(usize::MAX, |b| b.len())
}

impl Engine {
    /// This device's version vector: for every origin, the number up to
    /// which it holds everything.
    pub async fn vector(&self) -> Result<VersionVector, EngineError> {
        Ok(store::load_vector(self.db()).await?)
    }

    /// What a peer with vector `request.vector` lacks, one page of it. A
    /// peer that lacks changes this device has pruned is told to resync from
    /// a snapshot.
    #[tracing::instrument(skip_all, fields(device = %self.device()))]
    pub async fn serve_pull(
        &self,
        request: &PullRequest,
    ) -> Result<Result<PullResponse, ErrorMessage>, EngineError> {
        let tx = self.db().begin().await?;
        let mine = store::load_vector(&tx).await?;
        let pruned = store::load_pruned(&tx).await?;
        let mut remaining = u64::from(request.limit.clamp(1, MAX_PULL_LIMIT));
        let mut changes = Vec::new();
        let mut complete = VersionVector::new();
        let mut has_more = false;
        let mut bytes = 0usize;
        for (origin, upto) in mine.iter() {
            let after = request.vector.get(origin);
            if upto <= after {
                continue;
            }
            if pruned.get(origin) > after {
                return Ok(Err(ErrorMessage {
                    code: ErrorCode::ResyncRequired,
                    message: format!(
                        "changes of {origin} after {after} were pruned here (up to {}); resync from a snapshot",
                        pruned.get(origin)
                    ),
                }));
            }
            let held = store::held_since(&tx, origin, after, upto, remaining).await?;
            let mut full = held.len() as u64 == remaining;
            let mut last = after;
            for h in held {
                if let Some(change) = self.held_change(&tx, origin, h).await? {
                    let size = encoded_len(&change);
                    if bytes.saturating_add(size) > PAGE_BYTES && !changes.is_empty() {
                        full = true;
                        break;
                    }
                    bytes = bytes.saturating_add(size);
                    last = last.max(change.seq);
                    changes.push(change);
                }
                remaining -= 1;
            }
            if full {
                complete.advance(origin, last);
                has_more = true;
                break;
            }
            complete.advance(origin, upto);
        }
        tx.commit().await?;
        metrics::counter!("syncable_changes_sent_total").increment(changes.len() as u64);
        Ok(Ok(PullResponse {
            changes,
            complete,
            has_more,
        }))
    }

    /// A held change or state as a change to send.
    async fn held_change(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        origin: Uuid,
        held: Held,
    ) -> Result<Option<Change>, EngineError> {
        let (model, record, version, state) = match held {
            Held::Change(change) => return Ok(Some(change)),
            Held::Owned {
                model,
                record,
                version,
                state,
            } => (model, record, version, state),
        };
        let Some(desc) = self.registry().get(&model) else {
            return Ok(None);
        };
        let Some(hlc) = state.hlc.or(state.deleted_at) else {
            return Ok(None);
        };
        let op = if state.deleted {
            Op::Delete
        } else {
            match desc.capture(tx, record).await? {
                Some(fields) => Op::Upsert(FieldChange::unversioned(fields)),
                None => return Ok(None),
            }
        };
        Ok(Some(Change {
            origin,
            seq: version,
            hlc: state.deleted_at.filter(|_| state.deleted).unwrap_or(hlc),
            model,
            id: record,
            op,
        }))
    }

    /// Pairs a peer: it may sync with this device, and pruning waits for its
    /// acknowledgements.
    pub async fn pair(&self, peer: Uuid) -> Result<(), EngineError> {
        Ok(store::add_peer(self.db(), peer, self.now_ms()).await?)
    }

    /// Forgets a peer: pruning no longer waits for it.
    pub async fn unpair(&self, peer: Uuid) -> Result<(), EngineError> {
        Ok(store::remove_peer(self.db(), peer).await?)
    }

    /// Whether a peer is paired.
    pub async fn is_paired(&self, peer: Uuid) -> Result<bool, EngineError> {
        Ok(store::peers(self.db())
            .await?
            .iter()
            .any(|p| p.peer == peer))
    }
}

/// How far a claim lets the vector advance, given the changes refused.
pub(crate) fn claim_reach(claim: &Claim, rejected: &[Rejection]) -> u64 {
    let first_refused = rejected
        .iter()
        .filter(|r| r.origin == claim.origin && r.seq > claim.after && r.seq <= claim.upto)
        .map(|r| r.seq)
        .min();
    match first_refused {
        Some(seq) => seq.saturating_sub(1),
        None => claim.upto,
    }
}
