//! The engine's side of the library's membership: removing devices, and
//! merging the signed records peers send (see `trust/members.rs`).

use uuid::Uuid;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::store;
use crate::trust::{Hash, Member, MemberRecord};

/// The most membership records one message may carry.
pub const MAX_MEMBER_RECORDS: usize = 10_000;

impl Engine {
    /// The library's members as this device knows them, with who admitted
    /// and who removed each.
    pub fn members(&self) -> Vec<Member> {
        self.memory().membership.view()
    }

    /// Whether `device` was removed from the library.
    pub fn is_removed(&self, device: Uuid) -> bool {
        self.memory().membership.is_removed(device)
    }

    /// The membership records this device holds (for a peer whose digest
    /// differs).
    pub fn member_records(&self) -> Vec<MemberRecord> {
        self.memory().membership.records()
    }

    /// The membership records `skip` does not name, with their ids.
    pub(crate) fn member_records_but(
        &self,
        skip: impl Fn(&Hash) -> bool,
    ) -> Vec<(Hash, MemberRecord)> {
        self.memory().membership.records_but(skip)
    }

    /// A digest of the membership records held: two devices with equal
    /// digests hold the same membership.
    pub fn members_digest(&self) -> Hash {
        self.memory().membership.digest()
    }

    /// Removes `device` from the library: this device signs its removal,
    /// which every member that learns of it believes. Its changes up to
    /// what this device holds of it are kept; later ones are refused
    /// everywhere. It is unpaired here (pruning no longer waits for it); the
    /// transport closes its connections and refuses its key.
    pub async fn remove(&self, device: Uuid) -> Result<(), EngineError> {
        if device == self.device() {
            return Err(EngineError::Membership(
                "a device cannot remove itself; remove it from another device".into(),
            ));
        }
        {
            let m = self.memory();
            if !m.membership.is_member(device) && !m.membership.is_removed(device) {
                return Err(EngineError::Membership(format!(
                    "device {device} is not a member of this library (a typo? the paired \
                     devices are listed by status)"
                )));
            }
        }
        let cutoff: Vec<(Uuid, u64)> = {
            let m = self.memory();
            m.origins
                .iter()
                .filter(|(_, d)| **d == device)
                .map(|(o, _)| (*o, m.received.vector.get(*o)))
                .collect()
        };
        let record = MemberRecord::remove(self.key(), device, self.now_ms(), cutoff);
        self.add_members(vec![record]).await?;
        tracing::warn!(%device, "device removed from the library");
        Ok(())
    }

    /// Merges membership records a peer sent: each is checked (signature),
    /// stored, and the membership recomputed. Devices newly removed are
    /// unpaired. Returns how many records were new; records that do not
    /// verify are counted and dropped.
    pub async fn add_members(&self, records: Vec<MemberRecord>) -> Result<usize, EngineError> {
        Ok(self.merge_members(records).await?.0)
    }

    /// [`Engine::add_members`], also returning the ids of the records that
    /// verify (held before or not).
    pub(crate) async fn merge_members(
        &self,
        records: Vec<MemberRecord>,
    ) -> Result<(usize, Vec<Hash>), EngineError> {
        let mut fresh = Vec::new();
        let mut held = Vec::new();
        let mut bad = 0u64;
        {
            let m = self.memory();
            for r in records.into_iter().take(MAX_MEMBER_RECORDS) {
                let (id, bytes) = r.id().map_err(|e| EngineError::Malformed(e.to_string()))?;
                // Records held here were verified when they arrived.
                if m.membership.has(&id) {
                    held.push(id);
                    continue;
                }
                if !r.signed() {
                    bad += 1;
                    continue;
                }
                fresh.push((id, bytes, r));
            }
        }
        if bad > 0 {
            metrics::counter!("syncable_member_records_refused_total").increment(bad);
            tracing::warn!(bad, "membership records whose signatures do not verify");
        }
        held.extend(fresh.iter().map(|(id, _, _)| *id));
        if fresh.is_empty() {
            return Ok((0, held));
        }
        let was_removed: Vec<Uuid> = self.memory().membership.removed().collect();
        {
            // The writer is released before the unpairing below takes it.
            let w = self.write_tx().await?;
            let mut script = store::Script::default();
            let rows: Vec<(Hash, Vec<u8>)> =
                fresh.iter().map(|(id, b, _)| (*id, b.clone())).collect();
            store::save_members(&mut script, &rows);
            script.run(&w.tx).await?;
            w.tx.commit().await?;
        }
        let n = fresh.len();
        let newly_removed: Vec<Uuid> = {
            let mut m = self.memory();
            m.membership
                .add(fresh.into_iter().map(|(id, _, r)| (id, r)).collect());
            let me = self.device();
            let peers: Vec<Uuid> = m.peers.keys().copied().collect();
            m.membership.recompute(me, peers);
            m.membership
                .removed()
                .filter(|d| !was_removed.contains(d))
                .collect()
        };
        for device in newly_removed {
            if self.is_paired(device) {
                self.unpair(device).await?;
            }
            metrics::counter!("syncable_devices_removed_total").increment(1);
        }
        Ok((n, held))
    }
}
