//! Backfill: a new device loads the whole library from a peer, page by page,
//! resumable after a restart, then catches up from the vector the snapshot
//! reflects.
//!
//! A snapshot sends, in order: the changes the peer holds parked (so that
//! one unparked while the snapshot is read is met again among the rows), then
//! every model in dependency order, its rows and then its tombstones. Rows
//! travel as changes that carry their merge state, so applying them merges
//! exactly like applying the writes that made them: a change that reaches the
//! new device during the backfill, before or after the row it touches, ends
//! in the same state. That is why such changes are applied on arrival rather
//! than held back until the snapshot ends.

use sea_orm::TransactionTrait;
use uuid::Uuid;

use crate::apply::ApplyReport;
use crate::change::{Change, FieldChange, FieldImage, Op};
use crate::clock::{NTP64, Timestamp, clock_id, timestamp_device};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::model::{FieldValue, Ownership};
use crate::peers::Phase;
use crate::protocol::{ErrorCode, ErrorMessage, SnapshotCursor, SnapshotRequest, SnapshotResponse};
use crate::registry::ModelDescriptor;
use crate::store::{self, RowState};

/// The largest snapshot page a peer may ask for.
pub const MAX_SNAPSHOT_LIMIT: u32 = 10_000;

const META_BACKFILL: &str = "backfill";
const META_BACKFILL_CURSOR: &str = "backfill_cursor";
const BACKFILL_NEEDED: u64 = 0;
const BACKFILL_RUNNING: u64 = 1;
const BACKFILL_DONE: u64 = 2;

fn malformed(message: impl Into<String>) -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::Malformed,
        message: message.into(),
    }
}

impl Engine {
    /// One page of a snapshot of everything this device holds.
    #[tracing::instrument(skip_all, fields(device = %self.device()))]
    pub async fn serve_snapshot(
        &self,
        request: &SnapshotRequest,
    ) -> Result<Result<SnapshotResponse, ErrorMessage>, EngineError> {
        let tx = self.db().begin().await?;
        // A cursor from another device's snapshot (a backfill that moved to
        // this peer) means nothing here: start over.
        let mut cursor = match &request.cursor {
            Some(cursor) if cursor.source == self.device() => cursor.clone(),
            _ => SnapshotCursor {
                source: self.device(),
                model: 0,
                section: 0,
                after: Vec::new(),
                vector: store::load_vector(&tx).await?,
                total: store::snapshot_size(&tx).await?,
                done: 0,
            },
        };
        let models = self.registry().models();
        let limit = request.limit.clamp(1, MAX_SNAPSHOT_LIMIT) as usize;
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        // Whether the page is full by size: the cursor stays in its section.
        let mut cut = false;
        while !cut && changes.len() < limit && (cursor.model as usize) <= models.len() {
            let room = (limit - changes.len()) as u64;
            if cursor.model == 0 {
                let after = match cursor.after.as_slice() {
                    [] => None,
                    bytes => Some(
                        rmp_serde::from_slice::<store::ParkedKey>(bytes)
                            .map_err(|e| EngineError::Malformed(e.to_string()))?,
                    ),
                };
                let page = store::parked_after(&tx, after.as_ref(), room).await?;
                let full = page.len() as u64 == room;
                for (key, change) in page {
                    cursor.after = rmp_serde::to_vec(&key)
                        .map_err(|e| EngineError::Malformed(e.to_string()))?;
                    cut |= take(&mut changes, &mut bytes, change);
                    if cut {
                        break;
                    }
                }
                if !full && !cut {
                    next_section(&mut cursor, true);
                }
                continue;
            }
            let Some(desc) = models.get(cursor.model as usize - 1).copied() else {
                return Ok(Err(malformed("snapshot cursor names no model")));
            };
            if cursor.section == 0 {
                let after = match cursor.after.as_slice() {
                    [] => i64::MIN,
                    bytes => match <[u8; 8]>::try_from(bytes) {
                        Ok(b) => i64::from_be_bytes(b),
                        Err(_) => return Ok(Err(malformed("snapshot cursor has a bad row key"))),
                    },
                };
                let page = desc.page(&tx, after, room).await?;
                let full = page.len() as u64 == room;
                for (key, id, fields) in page {
                    cursor.after = key.to_be_bytes().to_vec();
                    let state = store::load_row(&tx, desc.name(), id)
                        .await?
                        .unwrap_or_default();
                    if let Some(change) = self.row_change(desc, id, fields, &state) {
                        cut |= take(&mut changes, &mut bytes, change);
                        if cut {
                            break;
                        }
                    }
                }
                if !full && !cut {
                    next_section(&mut cursor, false);
                }
            } else {
                let page = store::tombstones(&tx, desc.name(), &cursor.after, room).await?;
                let full = page.len() as u64 == room;
                for (id, state) in page {
                    cursor.after = id.as_bytes().to_vec();
                    if let Some(change) = tombstone_change(desc, id, &state) {
                        cut |= take(&mut changes, &mut bytes, change);
                        if cut {
                            break;
                        }
                    }
                }
                if !full && !cut {
                    next_section(&mut cursor, true);
                }
            }
        }
        tx.commit().await?;
        cursor.done += changes.len() as u64;
        let (vector, total, done) = (cursor.vector.clone(), cursor.total, cursor.done);
        let next = ((cursor.model as usize) <= models.len()).then_some(cursor);
        metrics::counter!("syncable_snapshot_rows_sent_total").increment(changes.len() as u64);
        Ok(Ok(SnapshotResponse {
            changes,
            next,
            vector,
            total,
            done,
        }))
    }

    /// A row as a change carrying its merge state.
    fn row_change(
        &self,
        desc: &ModelDescriptor,
        id: Uuid,
        fields: Vec<FieldValue>,
        state: &RowState,
    ) -> Option<Change> {
        match desc.meta().ownership {
            Ownership::DeviceOwned => Some(Change {
                origin: state.owner?,
                seq: state.version?,
                hlc: state.hlc?,
                model: desc.name().to_owned(),
                id,
                op: Op::Upsert(FieldChange::unversioned(fields)),
            }),
            Ownership::Shared => {
                // A field without a clock (a reference still waiting for its
                // parent) goes at the lowest clock, so any write beats it.
                let floor = Timestamp::new(NTP64(0), clock_id(self.device()).ok()?);
                let images: Vec<FieldImage> = fields
                    .into_iter()
                    .map(|f| {
                        let clock = state.clocks.get(&f.name);
                        FieldImage {
                            hlc: clock.map_or(floor, |c| c.hlc),
                            base: clock.and_then(|c| c.base),
                            name: f.name,
                            value: f.value,
                        }
                    })
                    .collect();
                let hlc = images.iter().map(|f| f.hlc).max()?;
                Some(Change {
                    origin: self.device(),
                    seq: 0,
                    hlc,
                    model: desc.name().to_owned(),
                    id,
                    op: Op::Image(images),
                })
            }
        }
    }

    /// Whether this device still has to load a snapshot before it syncs.
    pub async fn needs_backfill(&self) -> Result<bool, EngineError> {
        Ok(store::get_meta_u64(self.db(), META_BACKFILL).await? != BACKFILL_DONE)
    }

    /// Records that no backfill is needed (the first device of a library,
    /// or one whose peers hold nothing yet).
    pub async fn skip_backfill(&self) -> Result<(), EngineError> {
        Ok(store::set_meta_u64(self.db(), META_BACKFILL, BACKFILL_DONE).await?)
    }

    /// Starts a backfill over, as a peer that was away too long must.
    pub async fn restart_backfill(&self) -> Result<(), EngineError> {
        store::set_meta_u64(self.db(), META_BACKFILL, BACKFILL_NEEDED).await?;
        store::set_meta(self.db(), META_BACKFILL_CURSOR, Vec::new()).await?;
        Ok(())
    }

    /// The request that continues (or starts) this device's backfill.
    pub async fn backfill_request(&self, limit: u32) -> Result<SnapshotRequest, EngineError> {
        let cursor = match store::get_meta(self.db(), META_BACKFILL_CURSOR).await? {
            Some(bytes) if !bytes.is_empty() => Some(
                rmp_serde::from_slice(&bytes).map_err(|e| EngineError::Malformed(e.to_string()))?,
            ),
            _ => None,
        };
        Ok(SnapshotRequest { cursor, limit })
    }

    /// Applies one snapshot page and records where the backfill stands, so
    /// it resumes there after a restart. After the last page the device
    /// holds everything the snapshot's vector names. Returns whether the
    /// backfill is complete.
    pub async fn apply_snapshot(
        &self,
        page: SnapshotResponse,
    ) -> Result<(ApplyReport, bool), EngineError> {
        let report = self.apply(page.changes).await?;
        store::set_meta_u64(self.db(), META_BACKFILL, BACKFILL_RUNNING).await?;
        match &page.next {
            Some(cursor) => {
                let bytes =
                    rmp_serde::to_vec(cursor).map_err(|e| EngineError::Malformed(e.to_string()))?;
                store::set_meta(self.db(), META_BACKFILL_CURSOR, bytes).await?;
                Ok((report, false))
            }
            None => {
                if report.rejected.is_empty() {
                    for (origin, seq) in page.vector.iter() {
                        if origin != self.device() {
                            store::advance_vector(self.db(), origin, seq).await?;
                            // The snapshot brought states, not the changes
                            // that made them: this device cannot serve those
                            // changes to a peer that lacks them, so it must
                            // not vouch for them. Such a peer is told to
                            // resync, as from a pruned log.
                            store::prune_log(self.db(), origin, seq).await?;
                        }
                    }
                } else {
                    tracing::warn!(
                        refused = report.rejected.len(),
                        "snapshot rows were refused; catching up without the snapshot's vector"
                    );
                }
                store::set_meta(self.db(), META_BACKFILL_CURSOR, Vec::new()).await?;
                store::set_meta_u64(self.db(), META_BACKFILL, BACKFILL_DONE).await?;
                tracing::info!(rows = page.total, "backfill complete");
                Ok((report, true))
            }
        }
    }

    /// Backfilling (with progress), or ready as far as this device alone can
    /// tell.
    pub async fn phase(&self) -> Result<Phase, EngineError> {
        if store::get_meta_u64(self.db(), META_BACKFILL).await? == BACKFILL_RUNNING {
            let cursor: Option<SnapshotCursor> =
                match store::get_meta(self.db(), META_BACKFILL_CURSOR).await? {
                    Some(bytes) if !bytes.is_empty() => rmp_serde::from_slice(&bytes).ok(),
                    _ => None,
                };
            let (done, total) = cursor.map_or((0, 0), |c| (c.done, c.total));
            return Ok(Phase::Backfilling { done, total });
        }
        Ok(Phase::Ready)
    }
}

/// Adds a change to a page; whether the page is now full by size.
fn take(changes: &mut Vec<Change>, bytes: &mut usize, change: Change) -> bool {
    *bytes = bytes.saturating_add(crate::catchup::encoded_len(&change));
    changes.push(change);
    *bytes >= crate::catchup::PAGE_BYTES
}

fn next_section(cursor: &mut SnapshotCursor, next_model: bool) {
    cursor.after = Vec::new();
    if next_model {
        cursor.model += 1;
        cursor.section = 0;
    } else {
        cursor.section = 1;
    }
}

fn tombstone_change(desc: &ModelDescriptor, id: Uuid, state: &RowState) -> Option<Change> {
    let hlc = state.deleted_at?;
    let (origin, seq) = match desc.meta().ownership {
        Ownership::DeviceOwned => (
            state.owner.unwrap_or_else(|| timestamp_device(&hlc)),
            state.version.unwrap_or(0),
        ),
        Ownership::Shared => (timestamp_device(&hlc), 0),
    };
    Some(Change {
        origin,
        seq,
        hlc,
        model: desc.name().to_owned(),
        id,
        op: Op::Delete,
    })
}
