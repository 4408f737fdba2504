//! Catch-up by version vector: serving a peer exactly what it lacks, from
//! the bytes stored (log entries and device-owned states), with a claim per
//! origin that this device can vouch for.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::TransactionTrait;

use crate::change::EncodedChange;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::protocol::{Batch, ErrorCode, ErrorMessage, PullRequest, PullResponse};
use crate::store;
use crate::trust::seal::{Husk, SealProof};
use crate::vector::Received;

/// The largest page a peer may ask for.
pub const MAX_PULL_LIMIT: u32 = 10_000;

/// The encoded size at which a page (or a push) is cut, well under the
/// message cap, so that a page of large rows still fits one frame.
pub const PAGE_BYTES: usize = crate::protocol::MAX_MESSAGE_BYTES / 4;

impl Engine {
    /// A request for what a peer holds that this device lacks: its vector,
    /// and the numbers it holds beyond (at most
    /// [`MAX_AHEAD`](crate::MAX_AHEAD) ranges).
    pub fn pull_request(&self, limit: u32) -> PullRequest {
        let m = self.memory();
        PullRequest {
            vector: m.received.vector.clone(),
            limit,
            ahead: m
                .received
                .ahead_ranges()
                .take(crate::protocol::MAX_AHEAD)
                .collect(),
        }
    }

    /// What a peer with vector `request.vector` lacks, one page of it. A
    /// peer that lacks changes this device no longer holds as changes (its
    /// log was pruned, or it loaded them as a snapshot's states) is told to
    /// resync from a snapshot.
    #[tracing::instrument(skip_all, fields(device = %self.device()))]
    pub(crate) async fn serve_pull(
        &self,
        request: &PullRequest,
    ) -> Result<Result<PullResponse, ErrorMessage>, EngineError> {
        self.answer_pull(request, true).await
    }

    /// What `serve_pull` answers. `peer`: the request is a peer's pull,
    /// which a husk that no answer from here can ever pass has resync.
    /// The last page of a snapshot asks too (`peer` false), for the
    /// changes since its vector: its requester holds the snapshot's rows,
    /// the husk's newer state among them, so the husk's origin is left
    /// out and the other origins' changes are served.
    pub(crate) async fn answer_pull(
        &self,
        request: &PullRequest,
        peer: bool,
    ) -> Result<Result<PullResponse, ErrorMessage>, EngineError> {
        let (mine, ahead, pruned, origins) = {
            let m = self.memory();
            (
                m.received.vector.clone(),
                m.received.ahead.clone(),
                m.pruned.clone(),
                m.origins.clone(),
            )
        };
        let requester = Received::stated(&request.vector, &request.ahead);
        // Ranges pruned above a gap (every peer held them once) that the
        // requester lacks: it lost them since (a power loss, a restored
        // backup), and no change can bring them back.
        if let Some((origin, start, end)) = pruned
            .ahead_ranges()
            .find(|(o, s, e)| !requester.holds_range(*o, *s, *e))
        {
            return Ok(Err(ErrorMessage {
                code: ErrorCode::ResyncRequired,
                message: format!(
                    "changes {start}..={end} of {origin} are no longer kept here as changes; \
                     resync from a snapshot"
                ),
            }));
        }
        // The vector was read first: everything it names is in what the
        // read below sees.
        let tx = self.db().begin().await?;
        let mut remaining = u64::from(request.limit.clamp(1, MAX_PULL_LIMIT));
        let mut batches = Vec::new();
        let mut has_more = false;
        let mut bytes = 0usize;
        let mut carried: BTreeSet<(uuid::Uuid, u64)> = BTreeSet::new();
        let mut trimmed = false;
        let mut states = OwnedStates::new();
        for (origin, upto) in mine.iter() {
            let after = request.vector.get(origin);
            if upto <= after {
                continue;
            }
            if pruned.vector.get(origin) > after {
                tx.commit().await?;
                return Ok(Err(ErrorMessage {
                    code: ErrorCode::ResyncRequired,
                    message: format!(
                        "changes of {origin} after {after} are no longer kept here as changes \
                         (up to {}); resync from a snapshot",
                        pruned.vector.get(origin)
                    ),
                }));
            }
            let Some(device) = origins.get(&origin).copied() else {
                // Numbers held without knowing their device (a database of
                // an engine that did not learn it from husk-only claims)
                // cannot be served as changes; skipping them would leave
                // the peer short of them for ever.
                tracing::warn!(%origin, "an origin held without its device");
                tx.commit().await?;
                return Ok(Err(ErrorMessage {
                    code: ErrorCode::ResyncRequired,
                    message: format!(
                        "changes of {origin} after {after} cannot be served here as changes; \
                         resync from a snapshot"
                    ),
                }));
            };
            let Page {
                mut changes,
                seqs,
                reach,
                mut cut,
            } = page(&tx, origin, after, upto, remaining, &mut bytes).await?;
            if cut && changes.is_empty() {
                has_more = true;
                break;
            }
            // Vouch only as far as the seals prove.
            let (mut seals, mut vouched) = prove(&tx, origin, after, reach, &seqs).await?;
            if vouched < reach {
                tracing::debug!(
                    %origin,
                    after,
                    reach,
                    vouched,
                    "changes held without seals that vouch for them: served only as far as proven"
                );
                let keep = seqs.iter().take_while(|s| **s <= vouched).count();
                changes.truncate(keep);
                cut = false;
                if vouched == after {
                    // Numbers held here with neither their change, nor a
                    // state, nor a husk to prove the next one: skipping
                    // them would leave the peer short of them for ever,
                    // asking again. (The simulation, 3 devices, seed 56 of
                    // every fault: a snapshot row replaced a writer's own
                    // writes without keeping their husks, fixed since in
                    // `receive`; any other way to such a hole ends here.)
                    tracing::warn!(%origin, after, "changes held here that cannot be proven");
                    tx.commit().await?;
                    return Ok(Err(ErrorMessage {
                        code: ErrorCode::ResyncRequired,
                        message: format!(
                            "changes of {origin} after {after} cannot be proven here as \
                             changes; resync from a snapshot"
                        ),
                    }));
                }
            }
            // A husk whose newer state this answer cannot carry, nor the
            // requester hold, would have the batch held back there, and,
            // asked again, fill every answer (see `unprovable_husk`): the
            // batch stops before it, and the other origins are served.
            if let Some(Unprovable { husk, newer }) = unprovable_husk(
                &tx,
                request,
                &seals,
                &seqs[..changes.len()],
                origin,
                &carried,
                &mut states,
            )
            .await?
            {
                trimmed = true;
                let upto = husk.saturating_sub(1);
                let keep = seqs.iter().take_while(|s| **s <= upto).count();
                changes.truncate(keep);
                (seals, vouched) = prove(&tx, origin, after, upto, &seqs[..keep]).await?;
                changes.truncate(seqs.iter().take_while(|s| **s <= vouched).count());
                cut = false;
                if vouched <= after {
                    // Stopped at its first number. If this device does not
                    // hold the newer state's number either (it holds the
                    // state from a snapshot row, its vector short of it:
                    // a backfill cut by a power loss), no answer from here
                    // will ever pass the husk, and the requester would ask
                    // for ever (the simulation, 3 devices, 600 operations,
                    // seed 431 of every fault): it resyncs instead, and the
                    // snapshot brings the state as a row.
                    let (o, seq) = newer;
                    if peer && seq > mine.get(o) {
                        tx.commit().await?;
                        return Ok(Err(ErrorMessage {
                            code: ErrorCode::ResyncRequired,
                            message: format!(
                                "changes of {origin} after {after} include a superseded change \
                                 whose newer state ({o} {seq}) is held here only as a row; \
                                 resync from a snapshot"
                            ),
                        }));
                    }
                    continue;
                }
            }
            remaining -= changes.len() as u64;
            for seq in seqs.iter().take(changes.len()) {
                carried.insert((origin, *seq));
            }
            batches.push(Batch {
                origin,
                device,
                after,
                upto: vouched,
                changes,
                seals,
            });
            if cut {
                has_more = true;
                break;
            }
        }
        // What a batch stopped before follows in the next answer, once the
        // requester holds the states these ones bring.
        has_more |= trimmed && !batches.is_empty();
        // Numbers held beyond a gap (received out of order) that the
        // requester lacks. A gap usually fills soon; but if the only device
        // that held its numbers lost them (a power loss, a restored backup),
        // what lies beyond reaches other devices only this way. Only the
        // parts the requester does not hold are sent. Never a reason for
        // `has_more`: the requester's vector does not pass a gap, so it
        // would ask for the same again at once.
        for (origin, ranges) in &ahead {
            let Some(device) = origins.get(origin).copied() else {
                continue;
            };
            let missing = ranges
                .iter()
                .flat_map(|(&s, &e)| requester.missing_within(*origin, s, e));
            for (start, end) in missing {
                let after = start.saturating_sub(1);
                if remaining == 0 || bytes >= PAGE_BYTES {
                    continue;
                }
                let Page {
                    mut changes,
                    seqs,
                    reach,
                    ..
                } = page(&tx, *origin, after, end, remaining, &mut bytes).await?;
                let (seals, vouched) = prove(&tx, *origin, after, reach, &seqs).await?;
                if vouched <= after {
                    continue;
                }
                let keep = seqs.iter().take_while(|s| **s <= vouched).count();
                changes.truncate(keep);
                remaining -= keep as u64;
                for seq in seqs.iter().take(keep) {
                    carried.insert((*origin, *seq));
                }
                batches.push(Batch {
                    origin: *origin,
                    device,
                    after,
                    upto: vouched,
                    changes,
                    seals,
                });
            }
        }
        self.add_newer_states(&tx, request, &origins, &mut batches, &carried, &mut states)
            .await?;
        tx.commit().await?;
        let sent: usize = batches.iter().map(|b| b.changes.len()).sum();
        metrics::counter!("syncable_changes_sent_total").increment(sent as u64);
        Ok(Ok(PullResponse { batches, has_more }))
    }
}

impl Engine {
    /// A husk (a superseded device-owned change left out) is believed only
    /// beside its record's newer state. A page cut before that state, or a
    /// newer state by another incarnation of the device, would leave the
    /// husk unprovable and the requester stuck on it, page after page: so
    /// each such state the requester lacks goes in the response too, in a
    /// batch of its own that claims just its number, proven by its seal.
    async fn add_newer_states(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        request: &PullRequest,
        origins: &std::collections::HashMap<uuid::Uuid, uuid::Uuid>,
        batches: &mut Vec<Batch>,
        carried: &BTreeSet<(uuid::Uuid, u64)>,
        states: &mut OwnedStates,
    ) -> Result<(), EngineError> {
        let mut extras: BTreeMap<uuid::Uuid, BTreeMap<u64, EncodedChange>> = BTreeMap::new();
        for batch in batches.iter() {
            for husk in batch.seals.iter().flat_map(|p| p.husks.iter()) {
                let Some((origin, seq, state)) = newer_state(tx, states, husk).await?.clone()
                else {
                    continue;
                };
                if carried.contains(&(origin, seq)) {
                    continue;
                }
                // A delete goes even to a requester that holds its number:
                // one that collected the record's tombstone since holds no
                // state of it, and the husk is believed only beside a
                // newer state, or a proven delete, of its record.
                let lacks = seq > request.vector.get(origin);
                if lacks
                    || state
                        .decode()
                        .is_ok_and(|c| matches!(c.op, crate::change::Op::Delete { .. }))
                {
                    extras.entry(origin).or_default().insert(seq, state);
                }
            }
        }
        for (origin, states) in extras {
            let Some(device) = origins.get(&origin).copied() else {
                continue;
            };
            for (seq, state) in states {
                // Its own batch, claiming exactly its number: held beyond
                // the requester's vector until the numbers between arrive.
                let after = seq.saturating_sub(1);
                let (seals, vouched) = prove(tx, origin, after, seq, &[seq]).await?;
                if vouched == seq {
                    batches.push(Batch {
                        origin,
                        device,
                        after,
                        upto: seq,
                        changes: vec![state],
                        seals,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The first husk of `seals` (a batch of `origin` carrying the changes
/// `sent`) that the requester could not believe: its record's newer
/// state is neither in the batch, nor carried earlier in the answer,
/// nor held by the requester, nor provable alone (as
/// `add_newer_states` would add it). That happens when the newer state
/// is another origin's (an earlier incarnation of the same device,
/// whose state this device took back from a snapshot) and this device
/// holds it without the seal that would prove it alone: only that
/// origin's own batch can bring it. A pull limited to a few changes
/// filled every answer with the batch the requester held back, and
/// never reached that origin (the simulation, 3 devices, seed 982 of
/// every fault).
async fn unprovable_husk(
    tx: &sea_orm::DatabaseTransaction,
    request: &PullRequest,
    seals: &[SealProof],
    sent: &[u64],
    origin: uuid::Uuid,
    carried: &BTreeSet<(uuid::Uuid, u64)>,
    states: &mut OwnedStates,
) -> Result<Option<Unprovable>, EngineError> {
    for husk in seals.iter().flat_map(|p| p.husks.iter()) {
        let Some((o, seq, _)) = *newer_state(tx, states, husk).await? else {
            continue;
        };
        let believed = (o == origin && sent.contains(&seq))
            || carried.contains(&(o, seq))
            || seq <= request.vector.get(o)
            || prove(tx, o, seq.saturating_sub(1), seq, &[seq]).await?.1 == seq;
        if !believed {
            return Ok(Some(Unprovable {
                husk: husk.seq,
                newer: (o, seq),
            }));
        }
    }
    Ok(None)
}

/// A husk the requester could not believe, and its record's newer state.
struct Unprovable {
    /// The husk's number.
    husk: u64,
    /// The origin and number of the record's newer state.
    newer: (uuid::Uuid, u64),
}

/// Records' device-owned states read for an answer's husks, by model and
/// record, so that each is read once per answer.
type OwnedStates = BTreeMap<(String, uuid::Uuid), Option<(uuid::Uuid, u64, EncodedChange)>>;

/// The stored device-owned state of a husk's record, read once per answer.
async fn newer_state<'a>(
    tx: &sea_orm::DatabaseTransaction,
    states: &'a mut OwnedStates,
    husk: &Husk,
) -> Result<&'a Option<(uuid::Uuid, u64, EncodedChange)>, EngineError> {
    let key = (husk.model.clone(), husk.record);
    if !states.contains_key(&key) {
        let state = store::owned_state(tx, &husk.model, husk.record).await?;
        states.insert(key.clone(), state);
    }
    Ok(states.get(&key).unwrap_or(&None))
}

/// Changes of one origin read for a page.
struct Page {
    changes: Vec<EncodedChange>,
    seqs: Vec<u64>,
    /// How far the page reaches: `upto`, or the last number read if cut.
    reach: u64,
    /// Cut short, by the page's count or its bytes.
    cut: bool,
}

/// The stored changes of `origin` in `(after, upto]` (log entries and
/// device-owned states), at most `remaining` of them and as many as fit the
/// page's bytes (`bytes` so far, updated).
async fn page(
    tx: &sea_orm::DatabaseTransaction,
    origin: uuid::Uuid,
    after: u64,
    upto: u64,
    remaining: u64,
    bytes: &mut usize,
) -> Result<Page, EngineError> {
    let mut held: Vec<(u64, EncodedChange)> =
        store::log_since(tx, origin, after, upto, remaining).await?;
    held.extend(store::owned_since(tx, origin, after, upto, remaining).await?);
    held.sort_by_key(|(seq, _)| *seq);
    held.truncate(remaining as usize);
    let mut cut = held.len() as u64 == remaining;
    let mut reach = upto;
    let mut changes = Vec::with_capacity(held.len());
    let mut seqs = Vec::with_capacity(held.len());
    for (seq, change) in held {
        if bytes.saturating_add(change.len()) > PAGE_BYTES && *bytes > 0 {
            cut = true;
            break;
        }
        *bytes = bytes.saturating_add(change.len());
        reach = seq;
        seqs.push(seq);
        changes.push(change);
    }
    if !cut {
        reach = upto;
    }
    Ok(Page {
        changes,
        seqs,
        reach,
        cut,
    })
}

/// The seals that prove the changes `sent` (by number) of `origin` and the
/// numbers in `(after, reach]` left out of them, and how far that proof
/// reaches: every number up to it is a change sent or a husk, inside a
/// stored seal whose tree is known well enough to prove them.
async fn prove(
    tx: &sea_orm::DatabaseTransaction,
    origin: uuid::Uuid,
    after: u64,
    reach: u64,
    sent: &[u64],
) -> Result<(Vec<SealProof>, u64), EngineError> {
    if reach <= after {
        return Ok((Vec::new(), after));
    }
    let sent: BTreeSet<u64> = sent.iter().copied().collect();
    let husks: BTreeMap<u64, Husk> = store::husks_between(tx, origin, after, reach)
        .await?
        .into_iter()
        .filter(|h| !sent.contains(&h.seq))
        .map(|h| (h.seq, h))
        .collect();
    let mut vouched = after;
    let mut proofs = Vec::new();
    for (seal, skeleton) in store::seals_between(tx, origin, after, reach).await? {
        if seal.first > vouched.saturating_add(1) {
            break;
        }
        let lo = vouched.saturating_add(1);
        let hi = seal.last.min(reach);
        let mut ok = vouched;
        for p in lo..=hi {
            if sent.contains(&p) || husks.contains_key(&p) {
                ok = p;
            } else {
                break;
            }
        }
        if ok == vouched {
            break;
        }
        let revealed: BTreeSet<u64> = sent
            .range(seal.first.max(lo)..=ok)
            .chain(husks.range(seal.first.max(lo)..=ok).map(|(s, _)| s))
            .map(|s| s - seal.first)
            .collect();
        let Some(hashes) = skeleton.prove(seal.len(), &revealed) else {
            break;
        };
        proofs.push(SealProof {
            husks: husks
                .range(seal.first.max(lo)..=ok)
                .map(|(_, h)| h.clone())
                .collect(),
            seal,
            hashes,
        });
        vouched = ok;
        if ok < hi {
            break;
        }
    }
    Ok((proofs, vouched))
}
