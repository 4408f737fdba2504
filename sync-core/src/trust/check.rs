//! Checking a received batch against its seals, before anything of it is
//! merged: which of its changes are proven to be its device's, and whether
//! its claim ("everything of this origin up to n") is proven position by
//! position.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::seal::{self, Hash, Husk, Seal, SealProof, Skeleton};
use crate::change::{Change, EncodedChange};

/// Where a device stands in the membership, as the check needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Standing {
    pub(crate) member: bool,
    /// Set when the device was removed: per incarnation, the last number
    /// kept.
    pub(crate) cut: Option<BTreeMap<Uuid, u64>>,
}

/// What a batch's seals prove.
#[derive(Debug, Default)]
pub(crate) struct Proven {
    /// Why none of the batch is believed, if so.
    pub(crate) refused: Option<String>,
    /// The numbers of the batch's changes that are proven.
    pub(crate) proven: BTreeSet<u64>,
    /// Whether every number the claim covers is proven (a change or a
    /// husk).
    pub(crate) claim_proven: bool,
    /// Husks proven to be the device's: each still has to be superseded
    /// here for the claim to pass it.
    pub(crate) husks: Vec<Husk>,
    /// What was learned of each seal's tree.
    pub(crate) learned: Vec<(Seal, Skeleton)>,
    /// Numbers above this are past the device's removal.
    pub(crate) cut: Option<u64>,
}

impl Proven {
    /// Why the change `seq` is not believed, if it is not.
    pub(crate) fn refusal(&self, seq: u64) -> Option<String> {
        if let Some(why) = &self.refused {
            return Some(why.clone());
        }
        if self.cut.is_some_and(|c| seq > c) {
            return Some("its device was removed from the library".into());
        }
        if !self.proven.contains(&seq) {
            return Some("no seal of its device proves it".into());
        }
        None
    }

    fn refuse(why: String) -> Self {
        Self {
            refused: Some(why),
            ..Self::default()
        }
    }
}

/// Checks the changes (decoded, with their bytes) of one batch of `origin`,
/// said to be `device`'s, against `proofs`.
pub(crate) fn check_batch(
    origin: Uuid,
    device: Uuid,
    claim: Option<(u64, u64)>,
    changes: &[(Change, EncodedChange)],
    proofs: &[SealProof],
    standing: &Standing,
) -> Proven {
    if !standing.member {
        return Proven::refuse(format!(
            "device {device} is not a member of the library as this device knows it"
        ));
    }
    let mut out = Proven {
        cut: standing
            .cut
            .as_ref()
            .map(|c| c.get(&origin).copied().unwrap_or(0)),
        ..Proven::default()
    };
    let by_seq: BTreeMap<u64, &(Change, EncodedChange)> =
        changes.iter().map(|c| (c.0.seq, c)).collect();
    let mut covered: BTreeSet<u64> = BTreeSet::new();
    let mut last_end = 0u64;
    for proof in proofs {
        let s = &proof.seal;
        if s.origin != origin {
            return Proven::refuse(format!(
                "a seal of origin {} in a batch of {origin}",
                s.origin
            ));
        }
        // Seals come in order and do not overlap.
        if s.first <= last_end || s.first > s.last {
            return Proven::refuse("seals out of order or overlapping".into());
        }
        last_end = s.last;
        let mut revealed: BTreeMap<u64, Hash> = BTreeMap::new();
        for (seq, (change, bytes)) in by_seq.range(s.first..=s.last) {
            revealed.insert(seq - s.first, seal::change_leaf(change, bytes.as_bytes()));
        }
        let mut prev = 0u64;
        for husk in &proof.husks {
            if husk.seq < s.first || husk.seq > s.last || husk.seq <= prev {
                return Proven::refuse("a husk outside its seal, or out of order".into());
            }
            prev = husk.seq;
            if revealed.insert(husk.seq - s.first, husk.leaf()).is_some() {
                return Proven::refuse("a husk for a change the batch carries".into());
            }
        }
        match seal::verify(proof, device, &revealed) {
            Ok(learned) => {
                covered.extend(revealed.keys().map(|p| p + s.first));
                out.proven
                    .extend(by_seq.range(s.first..=s.last).map(|(seq, _)| *seq));
                out.husks.extend(proof.husks.iter().cloned());
                out.learned.push((s.clone(), learned));
            }
            Err(e) => return Proven::refuse(e.to_string()),
        }
    }
    out.claim_proven = match claim {
        Some((after, upto)) if after <= upto => {
            let n = covered.range(after.saturating_add(1)..=upto).count() as u64;
            n == upto - after
        }
        _ => false,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;
    use crate::clock::{NTP64, Timestamp, clock_id};
    use crate::trust::key::DeviceKey;

    fn change(device: Uuid, origin: Uuid, seq: u64) -> Change {
        Change {
            device,
            origin,
            seq,
            hlc: Timestamp::new(NTP64(seq << 32), clock_id(origin).unwrap()),
            model: "label".into(),
            id: Uuid::from_u128(seq as u128),
            op: Op::Upsert(vec![]),
            replaces: None,
        }
    }

    #[test]
    fn a_claim_passes_only_over_proven_numbers() {
        let key = DeviceKey::from_seed([3; 32]).unwrap();
        let nonce = Uuid::from_u128(1);
        let origin = seal::origin_of(key.device(), nonce);
        let changes: Vec<Change> = (1..=4).map(|s| change(key.device(), origin, s)).collect();
        let encoded: Vec<EncodedChange> = changes.iter().map(|c| c.encode().unwrap()).collect();
        let leaves: Vec<Hash> = changes
            .iter()
            .zip(&encoded)
            .map(|(c, e)| seal::change_leaf(c, e.as_bytes()))
            .collect();
        let sealed = Seal::sign(&key, nonce, 1, &leaves).unwrap();
        let member = Standing {
            member: true,
            cut: None,
        };
        let skeleton = Skeleton::of_leaves(&leaves);
        // Changes 3 and 4, for a peer that holds 1 and 2.
        let sent: Vec<(Change, EncodedChange)> = (2..4)
            .map(|i| (changes[i].clone(), encoded[i].clone()))
            .collect();
        let proof = SealProof {
            seal: sealed.clone(),
            husks: vec![],
            hashes: skeleton.prove(4, &[2, 3].into()).unwrap(),
        };
        let ok = check_batch(
            origin,
            key.device(),
            Some((2, 4)),
            &sent,
            std::slice::from_ref(&proof),
            &member,
        );
        assert!(ok.refused.is_none() && ok.claim_proven);
        assert_eq!(ok.proven, [3, 4].into());
        // The same proof cannot vouch for a longer claim.
        let far = check_batch(
            origin,
            key.device(),
            Some((2, 1 << 62)),
            &sent,
            std::slice::from_ref(&proof),
            &member,
        );
        assert!(!far.claim_proven);
        // Nor for a change it does not hold, nor for another device.
        let mut altered = changes[2].clone();
        altered.op = Op::Delete { seen: None };
        let altered_bytes = altered.encode().unwrap();
        let mut forged = sent.clone();
        forged[0] = (altered, altered_bytes);
        let bad = check_batch(
            origin,
            key.device(),
            Some((2, 4)),
            &forged,
            std::slice::from_ref(&proof),
            &member,
        );
        assert!(bad.refused.is_some());
        let other = DeviceKey::from_seed([4; 32]).unwrap();
        let stranger = check_batch(
            origin,
            other.device(),
            Some((2, 4)),
            &sent,
            std::slice::from_ref(&proof),
            &member,
        );
        assert!(stranger.refused.is_some());
        // A removed device's changes past its cut are refused.
        let removed = Standing {
            member: true,
            cut: Some([(origin, 3)].into()),
        };
        let cut = check_batch(
            origin,
            key.device(),
            Some((2, 4)),
            &sent,
            &[proof],
            &removed,
        );
        assert!(cut.refusal(3).is_none() && cut.refusal(4).is_some());
    }
}
