//! Catch-up by version vector: serving a peer exactly what it lacks, from
//! the bytes stored (log entries and device-owned states), with a claim per
//! origin that this device can vouch for.

use sea_orm::TransactionTrait;

use crate::change::EncodedChange;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::protocol::{Batch, ErrorCode, ErrorMessage, PullRequest, PullResponse};
use crate::store;

/// The largest page a peer may ask for.
pub const MAX_PULL_LIMIT: u32 = 10_000;

/// The encoded size at which a page (or a push) is cut, well under the
/// message cap, so that a page of large rows still fits one frame.
pub const PAGE_BYTES: usize = crate::protocol::MAX_MESSAGE_BYTES / 4;

impl Engine {
    /// What a peer with vector `request.vector` lacks, one page of it. A
    /// peer that lacks changes this device no longer holds as changes (its
    /// log was pruned, or it loaded them as a snapshot's states) is told to
    /// resync from a snapshot.
    #[tracing::instrument(skip_all, fields(device = %self.device()))]
    pub(crate) async fn serve_pull(
        &self,
        request: &PullRequest,
    ) -> Result<Result<PullResponse, ErrorMessage>, EngineError> {
        let (mine, pruned, origins) = {
            let m = self.memory();
            (
                m.received.vector.clone(),
                m.pruned.clone(),
                m.origins.clone(),
            )
        };
        // The vector was read first: everything it names is in what the
        // read below sees.
        let tx = self.db().begin().await?;
        let mut remaining = u64::from(request.limit.clamp(1, MAX_PULL_LIMIT));
        let mut batches = Vec::new();
        let mut has_more = false;
        let mut bytes = 0usize;
        for (origin, upto) in mine.iter() {
            let after = request.vector.get(origin);
            if upto <= after {
                continue;
            }
            if pruned.get(origin) > after {
                tx.commit().await?;
                return Ok(Err(ErrorMessage {
                    code: ErrorCode::ResyncRequired,
                    message: format!(
                        "changes of {origin} after {after} are no longer kept here as changes \
                         (up to {}); resync from a snapshot",
                        pruned.get(origin)
                    ),
                }));
            }
            let Some(device) = origins.get(&origin).copied() else {
                continue;
            };
            let mut held: Vec<(u64, EncodedChange)> =
                store::log_since(&tx, origin, after, upto, remaining).await?;
            held.extend(store::owned_since(&tx, origin, after, upto, remaining).await?);
            held.sort_by_key(|(seq, _)| *seq);
            held.truncate(remaining as usize);
            let full = held.len() as u64 == remaining;
            let mut reach = upto;
            let mut changes = Vec::with_capacity(held.len());
            let mut cut = full;
            for (seq, change) in held {
                if bytes.saturating_add(change.len()) > PAGE_BYTES && bytes > 0 {
                    cut = true;
                    break;
                }
                bytes = bytes.saturating_add(change.len());
                reach = seq;
                changes.push(change);
                remaining -= 1;
            }
            if !cut {
                reach = upto;
            } else if changes.is_empty() {
                has_more = true;
                break;
            }
            batches.push(Batch {
                origin,
                device,
                after,
                upto: reach,
                changes,
            });
            if cut {
                has_more = true;
                break;
            }
        }
        tx.commit().await?;
        let sent: usize = batches.iter().map(|b| b.changes.len()).sum();
        metrics::counter!("syncable_changes_sent_total").increment(sent as u64);
        Ok(Ok(PullResponse { batches, has_more }))
    }
}
