//! Seals: each commit's changes are signed once, by their device's key, as
//! the root of a Merkle tree over the commit's changes in number order.
//!
//! One signature per commit keeps signing off the per-change path; the tree
//! lets any device forward any subset of a commit's changes with a proof: a
//! change a peer already holds, or one not in this page, travels as one
//! hash for a whole subtree, and a device-owned change that a newer state
//! of the same record superseded travels as a [`Husk`] (its record, clock
//! and the hash of its bytes), which the receiver accepts only if it holds
//! that newer state. So a claim "everything of this origin up to n" can be
//! checked position by position, by any device, whoever relays it.
//!
//! The tree is RFC 6962's shape: a node over `len > 1` leaves splits at the
//! largest power of two below `len`. Leaves and nodes hash with distinct
//! prefixes (BLAKE3).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::key::{DeviceKey, PublicKey};
use crate::change::Change;
use crate::clock::Timestamp;

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The hash of a change's bytes.
pub(crate) fn body_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// A leaf: what a change is, bound to its bytes.
pub(crate) fn leaf(model: &str, record: Uuid, hlc: &Timestamp, body: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    h.update(&(model.len() as u64).to_be_bytes());
    h.update(model.as_bytes());
    h.update(record.as_bytes());
    h.update(&hlc.get_time().0.to_be_bytes());
    h.update(&hlc.get_id().to_le_bytes());
    h.update(body);
    *h.finalize().as_bytes()
}

/// The leaf of a change and its encoded bytes.
pub(crate) fn change_leaf(change: &Change, bytes: &[u8]) -> Hash {
    leaf(&change.model, change.id, &change.hlc, &body_hash(bytes))
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[1]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// Where a node over `len >= 2` leaves splits.
fn split(len: u64) -> u64 {
    1u64 << (63 - (len - 1).leading_zeros())
}

/// The root over `leaves`.
pub(crate) fn root(leaves: &[Hash]) -> Option<Hash> {
    match leaves.len() {
        0 => None,
        1 => Some(leaves[0]),
        n => {
            let k = split(n as u64) as usize;
            Some(node(&root(&leaves[..k])?, &root(&leaves[k..])?))
        }
    }
}

/// A commit's signature: `key` signed that the changes of `origin`
/// numbered `first..=last` are the leaves under `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The signing device's key; its device id is the changes' device.
    pub key: PublicKey,
    /// The incarnation that numbered the changes.
    pub origin: Uuid,
    /// What the origin derives from, with the device id
    /// ([`origin_of`]): no other device can sign for this origin.
    pub nonce: Uuid,
    /// The first number.
    pub first: u64,
    /// The last number.
    pub last: u64,
    /// The Merkle root over the changes' leaves.
    #[serde(with = "serde_bytes")]
    pub root: Hash,
    /// Ed25519 over the above.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Seal {
    fn message(
        device: Uuid,
        origin: Uuid,
        nonce: Uuid,
        first: u64,
        last: u64,
        root: &Hash,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + 48 + 16 + 32);
        m.extend_from_slice(b"syncable seal v1");
        m.extend_from_slice(device.as_bytes());
        m.extend_from_slice(origin.as_bytes());
        m.extend_from_slice(nonce.as_bytes());
        m.extend_from_slice(&first.to_be_bytes());
        m.extend_from_slice(&last.to_be_bytes());
        m.extend_from_slice(root);
        m
    }

    /// Seals the changes numbered from `first` of the origin derived from
    /// `nonce`, whose leaves are `leaves`.
    pub(crate) fn sign(key: &DeviceKey, nonce: Uuid, first: u64, leaves: &[Hash]) -> Option<Self> {
        let root = root(leaves)?;
        let last = first.checked_add(leaves.len() as u64 - 1)?;
        let origin = origin_of(key.device(), nonce);
        let signature = key.sign(&Self::message(
            key.device(),
            origin,
            nonce,
            first,
            last,
            &root,
        ));
        Some(Self {
            key: key.public(),
            origin,
            nonce,
            first,
            last,
            root,
            signature,
        })
    }

    /// The device that signed.
    pub fn device(&self) -> Uuid {
        self.key.device()
    }

    /// How many changes it covers.
    pub fn len(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }

    /// Whether it covers no change (never, for a well-formed seal).
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Whether the signature is the key's.
    pub(crate) fn signed(&self) -> bool {
        self.first >= 1
            && self.first <= self.last
            && origin_of(self.device(), self.nonce) == self.origin
            && self.key.verifies(
                &Self::message(
                    self.device(),
                    self.origin,
                    self.nonce,
                    self.first,
                    self.last,
                    &self.root,
                ),
                &self.signature,
            )
    }
}

/// The origin (incarnation id) a device derives from `nonce`: bound to the
/// device, so that no other device can number changes in its name.
pub fn origin_of(device: Uuid, nonce: Uuid) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"syncable origin v1");
    h.update(device.as_bytes());
    h.update(nonce.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A device-owned change that a newer state of its record superseded,
/// standing in for it in a proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Husk {
    /// Its number.
    pub seq: u64,
    /// Its model's wire name.
    pub model: String,
    /// Its record.
    pub record: Uuid,
    /// Its clock.
    pub hlc: Timestamp,
    /// The hash of its bytes.
    #[serde(with = "serde_bytes")]
    pub body: Hash,
}

impl Husk {
    pub(crate) fn of(change: &Change, bytes: &[u8]) -> Self {
        Self {
            seq: change.seq,
            model: change.model.clone(),
            record: change.id,
            hlc: change.hlc,
            body: body_hash(bytes),
        }
    }

    pub(crate) fn leaf(&self) -> Hash {
        leaf(&self.model, self.record, &self.hlc, &self.body)
    }
}

/// A seal with what proves a batch's changes against it: husks for
/// superseded changes, and the hashes of the subtrees holding none of the
/// batch's changes or husks, left to right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealProof {
    /// The seal.
    pub seal: Seal,
    /// Superseded changes, by number.
    pub husks: Vec<Husk>,
    /// Subtree hashes, in order.
    #[serde(with = "hash_list")]
    pub hashes: Vec<Hash>,
}

/// A list of hashes as one byte string.
pub(crate) mod hash_list {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Hash;

    pub(crate) fn serialize<S: Serializer>(hashes: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(32 * hashes.len());
        for h in hashes {
            bytes.extend_from_slice(h);
        }
        serde_bytes::serialize(&bytes, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        if bytes.len() % 32 != 0 {
            return Err(D::Error::custom("a hash list is a multiple of 32 bytes"));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }
}

/// What a device knows of a seal's tree: node hashes by (first position,
/// leaf count), positions counted from the seal's first number. Enough to
/// prove any subset of the changes it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Skeleton {
    nodes: BTreeMap<(u64, u64), Hash>,
}

impl Skeleton {
    /// Every leaf known.
    pub(crate) fn of_leaves(leaves: &[Hash]) -> Self {
        Self {
            nodes: leaves
                .iter()
                .enumerate()
                .map(|(i, h)| ((i as u64, 1), *h))
                .collect(),
        }
    }

    /// Whether every leaf of a tree of `len` leaves is known.
    pub(crate) fn is_complete(&self, len: u64) -> bool {
        self.nodes.keys().filter(|(_, n)| *n == 1).count() as u64 >= len
    }

    pub(crate) fn merge(&mut self, other: Skeleton) {
        self.nodes.extend(other.nodes);
    }

    /// The hash of the node over `len` leaves from `start`, if known.
    fn hash(&self, start: u64, len: u64) -> Option<Hash> {
        if let Some(h) = self.nodes.get(&(start, len)) {
            return Some(*h);
        }
        if len < 2 {
            return None;
        }
        let k = split(len);
        Some(node(&self.hash(start, k)?, &self.hash(start + k, len - k)?))
    }

    /// The subtree hashes that prove `revealed` positions of a tree of
    /// `len` leaves; `None` if a needed hash is unknown here.
    pub(crate) fn prove(&self, len: u64, revealed: &BTreeSet<u64>) -> Option<Vec<Hash>> {
        let mut out = Vec::new();
        self.prove_node(0, len, revealed, &mut out)?;
        Some(out)
    }

    fn prove_node(
        &self,
        start: u64,
        len: u64,
        revealed: &BTreeSet<u64>,
        out: &mut Vec<Hash>,
    ) -> Option<()> {
        if revealed.range(start..start + len).next().is_none() {
            out.push(self.hash(start, len)?);
            return Some(());
        }
        if len == 1 {
            return Some(());
        }
        let k = split(len);
        self.prove_node(start, k, revealed, out)?;
        self.prove_node(start + k, len - k, revealed, out)
    }

    /// Encodes for storage: every leaf in order when all are known (the
    /// usual case), else the known nodes.
    pub(crate) fn encode(&self, len: u64) -> Vec<u8> {
        let leaves: Vec<&Hash> = (0..len).map_while(|i| self.nodes.get(&(i, 1))).collect();
        if leaves.len() as u64 == len {
            let mut out = Vec::with_capacity(1 + 32 * leaves.len());
            out.push(0);
            for h in leaves {
                out.extend_from_slice(h);
            }
            return out;
        }
        let mut out = Vec::with_capacity(1 + 48 * self.nodes.len());
        out.push(1);
        for ((start, n), h) in &self.nodes {
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(h);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (tag, rest) = bytes.split_first()?;
        match tag {
            0 if rest.len() % 32 == 0 => {
                let leaves: Vec<Hash> = rest
                    .chunks_exact(32)
                    .map(|c| c.try_into().ok())
                    .collect::<Option<_>>()?;
                Some(Self::of_leaves(&leaves))
            }
            1 if rest.len() % 48 == 0 => {
                let mut nodes = BTreeMap::new();
                for c in rest.chunks_exact(48) {
                    let start = u64::from_be_bytes(c[..8].try_into().ok()?);
                    let len = u64::from_be_bytes(c[8..16].try_into().ok()?);
                    nodes.insert((start, len), c[16..].try_into().ok()?);
                }
                Some(Self { nodes })
            }
            _ => None,
        }
    }
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The seal's signature is not its key's.
    #[error("the seal's signature does not verify")]
    BadSignature,
    /// The seal is signed by another device than the batch's.
    #[error("the seal is signed by {signer}, the changes are {device}'s")]
    WrongSigner {
        /// The key's device.
        signer: Uuid,
        /// The batch's device.
        device: Uuid,
    },
    /// The revealed leaves and hashes do not make the signed root.
    #[error("the changes do not match their seal")]
    Mismatch,
    /// A seal too large to check.
    #[error("a seal of {0} changes is larger than any commit")]
    TooLarge(u64),
}

/// The largest commit a seal may cover.
pub(crate) const MAX_SEAL_CHANGES: u64 = 1 << 32;

/// Checks `proof` for a batch of `device`'s changes whose leaves at
/// positions (from the seal's first number) are `revealed` (the batch's
/// changes and the proof's husks). Returns what was learned of the tree.
pub(crate) fn verify(
    proof: &SealProof,
    device: Uuid,
    revealed: &BTreeMap<u64, Hash>,
) -> Result<Skeleton, ProofError> {
    let seal = &proof.seal;
    if seal.device() != device {
        return Err(ProofError::WrongSigner {
            signer: seal.device(),
            device,
        });
    }
    if seal.is_empty() || seal.len() > MAX_SEAL_CHANGES || seal.first == 0 {
        return Err(ProofError::TooLarge(seal.len()));
    }
    let mut learned = Skeleton::default();
    let mut hashes = proof.hashes.iter();
    let root =
        rebuild(0, seal.len(), revealed, &mut hashes, &mut learned).ok_or(ProofError::Mismatch)?;
    if hashes.next().is_some() || root != seal.root {
        return Err(ProofError::Mismatch);
    }
    if !seal.signed() {
        return Err(ProofError::BadSignature);
    }
    Ok(learned)
}

fn rebuild<'a>(
    start: u64,
    len: u64,
    revealed: &BTreeMap<u64, Hash>,
    hashes: &mut impl Iterator<Item = &'a Hash>,
    learned: &mut Skeleton,
) -> Option<Hash> {
    if revealed.range(start..start + len).next().is_none() {
        let h = *hashes.next()?;
        learned.nodes.insert((start, len), h);
        return Some(h);
    }
    if len == 1 {
        let h = *revealed.get(&start)?;
        learned.nodes.insert((start, 1), h);
        return Some(h);
    }
    let k = split(len);
    let left = rebuild(start, k, revealed, hashes, learned)?;
    let right = rebuild(start + k, len - k, revealed, hashes, learned)?;
    Some(node(&left, &right))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
            .collect()
    }

    proptest! {
        /// Any subset of a sealed commit proves against its seal, from the
        /// full tree or from what a relay learned of it; a changed leaf or
        /// a dropped hash does not.
        #[test]
        fn any_subset_proves_and_nothing_else_does(
            n in 1usize..70,
            picks in proptest::collection::vec(any::<bool>(), 70),
            relay_picks in proptest::collection::vec(any::<bool>(), 70),
        ) {
            let key = DeviceKey::from_seed([5; 32]).unwrap();
            let all = leaves(n);
            let seal = Seal::sign(&key, Uuid::from_u128(9), 10, &all).unwrap();
            // What a relay received: a subset with its proof.
            let relay_set: BTreeSet<u64> =
                (0..n as u64).filter(|i| relay_picks[*i as usize]).collect();
            let full = Skeleton::of_leaves(&all);
            let hashes = full.prove(n as u64, &relay_set).unwrap();
            let revealed: BTreeMap<u64, Hash> =
                relay_set.iter().map(|i| (*i, all[*i as usize])).collect();
            let proof = SealProof { seal: seal.clone(), husks: vec![], hashes };
            let learned = verify(&proof, key.device(), &revealed).unwrap();
            let learned = Skeleton::decode(&learned.encode(n as u64)).unwrap();
            // The relay proves any subset of what it holds.
            let subset: BTreeSet<u64> =
                relay_set.iter().copied().filter(|i| picks[*i as usize]).collect();
            let hashes = learned.prove(n as u64, &subset).unwrap();
            let revealed: BTreeMap<u64, Hash> =
                subset.iter().map(|i| (*i, all[*i as usize])).collect();
            let proof = SealProof { seal: seal.clone(), husks: vec![], hashes: hashes.clone() };
            prop_assert!(verify(&proof, key.device(), &revealed).is_ok());
            // Tampering fails.
            if let Some(first) = subset.iter().next() {
                let mut bad = revealed.clone();
                bad.insert(*first, [0; 32]);
                prop_assert!(verify(&proof, key.device(), &bad).is_err());
            }
            if !hashes.is_empty() {
                let mut short = proof.clone();
                short.hashes.pop();
                prop_assert!(verify(&short, key.device(), &revealed).is_err());
            }
            let mut forged = proof.clone();
            forged.seal.last += 1;
            prop_assert!(verify(&forged, key.device(), &revealed).is_err());
            let other = DeviceKey::from_seed([6; 32]).unwrap();
            prop_assert!(verify(&proof, other.device(), &revealed).is_err());
        }
    }
}
