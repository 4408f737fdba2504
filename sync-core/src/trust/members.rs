//! The library's membership as signed, synced data: which devices belong,
//! who admitted them, and which were removed.
//!
//! Records only accumulate (a grow-only set), so any two devices that hold
//! the same records agree on the membership, whatever order they learned
//! them in. A device's members are itself, the devices it paired with
//! directly, and every device a member admitted; a device is removed once
//! any member signed its removal. A removal names, per incarnation of the
//! removed device, the number up to which its changes are kept: the
//! remover's vector when it removed it. Changes past that are held back
//! everywhere; two removals of one device keep the higher number, so every
//! device converges on the same cut whichever removal it saw first.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::key::{DeviceKey, PublicKey};
use super::seal::Hash;

/// "`by` admits `device` into the library."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The admitted device.
    pub device: Uuid,
    /// The admitting device's key.
    pub by: PublicKey,
    /// When, in milliseconds since the Unix epoch, by the admitter's clock.
    pub at: u64,
    /// Ed25519 by `by`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// "`by` removes `device` from the library; of its changes, those of each
/// incarnation up to the number given are kept."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// The removed device.
    pub device: Uuid,
    /// The removing device's key.
    pub by: PublicKey,
    /// When, in milliseconds since the Unix epoch, by the remover's clock.
    pub at: u64,
    /// Per incarnation of the removed device, the last number kept.
    pub cutoff: Vec<(Uuid, u64)>,
    /// Ed25519 by `by`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A signed membership statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRecord {
    /// A device admitted.
    Admit(Admission),
    /// A device removed.
    Remove(Removal),
}

fn admission_message(device: Uuid, by: &PublicKey, at: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(80);
    m.extend_from_slice(b"syncable admit v1");
    m.extend_from_slice(device.as_bytes());
    m.extend_from_slice(&by.0);
    m.extend_from_slice(&at.to_be_bytes());
    m
}

fn removal_message(device: Uuid, by: &PublicKey, at: u64, cutoff: &[(Uuid, u64)]) -> Vec<u8> {
    let mut m = Vec::with_capacity(80 + 24 * cutoff.len());
    m.extend_from_slice(b"syncable remove v1");
    m.extend_from_slice(device.as_bytes());
    m.extend_from_slice(&by.0);
    m.extend_from_slice(&at.to_be_bytes());
    m.extend_from_slice(&(cutoff.len() as u64).to_be_bytes());
    for (origin, seq) in cutoff {
        m.extend_from_slice(origin.as_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
    }
    m
}

impl MemberRecord {
    /// `key`'s admission of `device`.
    pub fn admit(key: &DeviceKey, device: Uuid, at: u64) -> Self {
        let by = key.public();
        MemberRecord::Admit(Admission {
            device,
            by,
            at,
            signature: key.sign(&admission_message(device, &by, at)),
        })
    }

    /// `key`'s removal of `device`, keeping its changes up to `cutoff`.
    pub fn remove(key: &DeviceKey, device: Uuid, at: u64, mut cutoff: Vec<(Uuid, u64)>) -> Self {
        cutoff.sort();
        cutoff.dedup_by_key(|(o, _)| *o);
        let by = key.public();
        let signature = key.sign(&removal_message(device, &by, at, &cutoff));
        MemberRecord::Remove(Removal {
            device,
            by,
            at,
            cutoff,
            signature,
        })
    }

    /// The device that signed it.
    pub fn signer(&self) -> Uuid {
        match self {
            MemberRecord::Admit(a) => a.by.device(),
            MemberRecord::Remove(r) => r.by.device(),
        }
    }

    /// The device it is about.
    pub fn subject(&self) -> Uuid {
        match self {
            MemberRecord::Admit(a) => a.device,
            MemberRecord::Remove(r) => r.device,
        }
    }

    /// Whether its signature is its signer's.
    pub fn signed(&self) -> bool {
        match self {
            MemberRecord::Admit(a) => {
                a.by.verifies(&admission_message(a.device, &a.by, a.at), &a.signature)
            }
            MemberRecord::Remove(r) => r.by.verifies(
                &removal_message(r.device, &r.by, r.at, &r.cutoff),
                &r.signature,
            ),
        }
    }

    /// Its identity: the hash of its encoding.
    pub(crate) fn id(&self) -> Result<(Hash, Vec<u8>), rmp_serde::encode::Error> {
        let bytes = rmp_serde::to_vec(self)?;
        Ok((*blake3::hash(&bytes).as_bytes(), bytes))
    }
}

/// One device as the membership sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The device.
    pub device: Uuid,
    /// Who admitted it first (by the admitter's clock), if anyone did:
    /// `None` for this device itself and for peers paired before admissions
    /// were recorded.
    pub admitted_by: Option<(Uuid, u64)>,
    /// Who removed it, and when, if anyone did.
    pub removed_by: Option<(Uuid, u64)>,
}

/// The membership, as this device holds it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Membership {
    records: BTreeMap<Hash, MemberRecord>,
    members: BTreeSet<Uuid>,
    /// Removed devices: per incarnation, the last number kept.
    removed: BTreeMap<Uuid, BTreeMap<Uuid, u64>>,
    digest: Hash,
}

impl Membership {
    /// Adds verified records; returns the ones that were new.
    pub(crate) fn add(&mut self, records: Vec<(Hash, MemberRecord)>) -> Vec<(Hash, MemberRecord)> {
        let mut new = Vec::new();
        for (id, r) in records {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.records.entry(id) {
                slot.insert(r.clone());
                new.push((id, r));
            }
        }
        new
    }

    /// Recomputes who is in, from this device and its direct peers.
    pub(crate) fn recompute(&mut self, me: Uuid, paired: impl IntoIterator<Item = Uuid>) {
        // Whom each device admitted; then everyone reachable from this
        // device and its peers through admissions.
        let mut admitted: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for r in self.records.values() {
            if let MemberRecord::Admit(a) = r {
                admitted.entry(a.by.device()).or_default().push(a.device);
            }
        }
        let mut members: BTreeSet<Uuid> = paired.into_iter().collect();
        members.insert(me);
        let mut next: Vec<Uuid> = members.iter().copied().collect();
        while let Some(by) = next.pop() {
            for device in admitted.get(&by).into_iter().flatten() {
                if members.insert(*device) {
                    next.push(*device);
                }
            }
        }
        let mut removed: BTreeMap<Uuid, BTreeMap<Uuid, u64>> = BTreeMap::new();
        for r in self.records.values() {
            if let MemberRecord::Remove(x) = r
                && members.contains(&x.by.device())
            {
                let cut = removed.entry(x.device).or_default();
                for (origin, seq) in &x.cutoff {
                    let slot = cut.entry(*origin).or_insert(0);
                    *slot = (*slot).max(*seq);
                }
            }
        }
        let mut h = blake3::Hasher::new();
        for id in self.records.keys() {
            h.update(id);
        }
        self.digest = *h.finalize().as_bytes();
        self.members = members;
        self.removed = removed;
    }

    /// Whether the record with this id is held.
    pub(crate) fn has(&self, id: &Hash) -> bool {
        self.records.contains_key(id)
    }

    /// Every record, for a peer whose digest differs.
    pub(crate) fn records(&self) -> Vec<MemberRecord> {
        self.records.values().cloned().collect()
    }

    /// The records `skip` does not name, with their ids.
    pub(crate) fn records_but(&self, skip: impl Fn(&Hash) -> bool) -> Vec<(Hash, MemberRecord)> {
        self.records
            .iter()
            .filter(|(id, _)| !skip(id))
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    }

    /// A digest of the records held: equal digests, equal membership.
    pub(crate) fn digest(&self) -> Hash {
        self.digest
    }

    /// The members (removed devices are not).
    pub(crate) fn current(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.members.iter().copied()
    }

    pub(crate) fn is_member(&self, device: Uuid) -> bool {
        self.members.contains(&device)
    }

    /// Where `device` stands, for checking its changes.
    pub(crate) fn standing(&self, device: Uuid) -> super::check::Standing {
        super::check::Standing {
            member: self.is_member(device),
            cut: self.removed.get(&device).cloned(),
        }
    }

    pub(crate) fn is_removed(&self, device: Uuid) -> bool {
        self.removed.contains_key(&device)
    }

    /// Whether the change `seq` of `origin` by `device` is past its
    /// device's removal.
    #[cfg(test)]
    pub(crate) fn cut(&self, device: Uuid, origin: Uuid, seq: u64) -> bool {
        self.removed
            .get(&device)
            .is_some_and(|c| seq > c.get(&origin).copied().unwrap_or(0))
    }

    pub(crate) fn removed(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.removed.keys().copied()
    }

    /// Whether this device already admitted `device`.
    pub(crate) fn admitted(&self, by: Uuid, device: Uuid) -> bool {
        self.records.values().any(
            |r| matches!(r, MemberRecord::Admit(a) if a.device == device && a.by.device() == by),
        )
    }

    /// The members and removed devices, for status.
    pub(crate) fn view(&self) -> Vec<Member> {
        let mut out: BTreeMap<Uuid, Member> = self
            .members
            .iter()
            .map(|d| {
                (
                    *d,
                    Member {
                        device: *d,
                        admitted_by: None,
                        removed_by: None,
                    },
                )
            })
            .collect();
        for r in self.records.values() {
            match r {
                MemberRecord::Admit(a) if self.members.contains(&a.by.device()) => {
                    if let Some(m) = out.get_mut(&a.device)
                        && m.admitted_by.is_none_or(|(_, at)| a.at < at)
                    {
                        m.admitted_by = Some((a.by.device(), a.at));
                    }
                }
                MemberRecord::Remove(x) if self.removed.contains_key(&x.device) => {
                    let m = out.entry(x.device).or_insert(Member {
                        device: x.device,
                        admitted_by: None,
                        removed_by: None,
                    });
                    if m.removed_by.is_none_or(|(_, at)| x.at < at) {
                        m.removed_by = Some((x.by.device(), x.at));
                    }
                }
                _ => {}
            }
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DeviceKey {
        DeviceKey::from_seed([n; 32]).unwrap()
    }

    fn ided(r: MemberRecord) -> (Hash, MemberRecord) {
        (r.id().unwrap().0, r)
    }

    #[test]
    fn membership_follows_admissions_from_direct_peers_and_removals_converge() {
        let (a, b, c, x) = (key(1), key(2), key(3), key(4));
        // A and B paired (each admitted the other); B and C paired.
        let records = vec![
            ided(MemberRecord::admit(&a, b.device(), 1)),
            ided(MemberRecord::admit(&b, a.device(), 1)),
            ided(MemberRecord::admit(&b, c.device(), 2)),
            ided(MemberRecord::admit(&c, b.device(), 2)),
            // X admits itself: that proves nothing.
            ided(MemberRecord::admit(&x, x.device(), 3)),
        ];
        for r in &records {
            assert!(r.1.signed());
        }
        let mut at_c = Membership::default();
        at_c.add(records.clone());
        at_c.recompute(c.device(), [b.device()]);
        assert!(
            at_c.is_member(a.device()),
            "A, admitted by B, is C's member"
        );
        assert!(!at_c.is_member(x.device()));

        // Two removals of A with different cuts, learned in either order.
        let origin = Uuid::from_u128(7);
        let r1 = ided(MemberRecord::remove(&b, a.device(), 5, vec![(origin, 10)]));
        let r2 = ided(MemberRecord::remove(&c, a.device(), 6, vec![(origin, 12)]));
        let mut one = at_c.clone();
        one.add(vec![r1.clone()]);
        one.add(vec![r2.clone()]);
        one.recompute(c.device(), [b.device()]);
        let mut two = at_c.clone();
        two.add(vec![r2, r1]);
        two.recompute(c.device(), [b.device()]);
        assert_eq!(one.digest(), two.digest());
        for m in [&one, &two] {
            assert!(m.is_removed(a.device()));
            assert!(!m.cut(a.device(), origin, 12));
            assert!(m.cut(a.device(), origin, 13));
        }

        // A forged signature does not verify.
        let MemberRecord::Admit(mut forged) = MemberRecord::admit(&x, x.device(), 3) else {
            unreachable!()
        };
        forged.by = a.public();
        assert!(!MemberRecord::Admit(forged).signed());
    }
}
