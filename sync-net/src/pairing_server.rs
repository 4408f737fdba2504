//! The inviting side of pairing: a connection with the pairing protocol
//! presents a one-time token from a code this device printed, and a device
//! id this library has never seen.
//!
//! What the server guards against: a flood of pairing connections (at most
//! [`MAX_PAIRING`] are served at once, the rest are closed at once), a
//! client that never finishes its request (each step has a deadline, [`crate::NodeConfig::pairing_deadline`]), a
//! guessed token (compared in constant time, and a code is spent by its
//! first valid use), and a code used to take over a device that is already
//! paired (a code admits only a new device id: the holder of a code cannot
//! re-pin an existing id to its own key and lock the real device out).

use std::sync::atomic::Ordering;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::error::NetError;
use crate::node::{Node, lock};
use crate::pairing::{PairReply, PairRequest, PeerRecord, read_pair, write_pair};
use crate::tls::{self, close_code};

/// Pairing connections served at once; more are refused.
pub(crate) const MAX_PAIRING: usize = 4;

/// Why a pairing request is refused, as the client is told.
fn refusal(reason: &str) -> PairReply {
    PairReply::Refused {
        reason: reason.to_owned(),
    }
}

impl Node {
    /// Serves one pairing connection from end to end.
    pub(crate) async fn serve_pairing(&self, connection: quinn::Connection) {
        let busy = self.inner.pairing.fetch_add(1, Ordering::AcqRel);
        let _slot = PairingSlot(self);
        if busy >= MAX_PAIRING {
            metrics::counter!("syncable_pairing_refused_total", "why" => "busy").increment(1);
            crate::node::Counters::bump(&self.inner.counters.pairing_refused);
            tracing::warn!(addr = %connection.remote_address(), "too many pairing attempts at once");
            connection.close(close_code::BUSY.into(), b"too many pairing attempts");
            return;
        }
        if let Err(e) = self.pair_with(&connection).await {
            metrics::counter!("syncable_pairing_refused_total", "why" => "failed").increment(1);
            crate::node::Counters::bump(&self.inner.counters.pairing_refused);
            tracing::warn!(addr = %connection.remote_address(), error = %e, "pairing failed");
            connection.close(close_code::PROTOCOL.into(), b"pairing failed");
        }
    }

    async fn pair_with(&self, connection: &quinn::Connection) -> Result<(), NetError> {
        let fingerprint = tls::peer_fingerprint(connection)
            .ok_or_else(|| NetError::PairingRefused("no client certificate".into()))?;
        let deadline = self.inner.config.pairing_deadline;
        let step = |what: &'static str| {
            move |_| NetError::PairingRefused(format!("the other device took too long to {what}"))
        };
        let (mut send, mut recv) = tokio::time::timeout(deadline, connection.accept_bi())
            .await
            .map_err(step("open its stream"))??;
        let request: PairRequest = tokio::time::timeout(deadline, read_pair(&mut recv))
            .await
            .map_err(step("send its request"))??;
        let reply = self.admit(&request, fingerprint, connection).await?;
        if let PairReply::Refused { reason } = &reply {
            metrics::counter!("syncable_pairing_refused_total", "why" => "refused").increment(1);
            crate::node::Counters::bump(&self.inner.counters.pairing_refused);
            tracing::warn!(device = %request.device, %reason, "pairing refused");
        }
        tokio::time::timeout(deadline, write_pair(&mut send, &reply))
            .await
            .map_err(step("read the answer"))??;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        Ok(())
    }

    /// Checks a request and, if it is good, spends its code and pins the
    /// new device.
    async fn admit(
        &self,
        request: &PairRequest,
        fingerprint: crate::identity::Fingerprint,
        connection: &quinn::Connection,
    ) -> Result<PairReply, NetError> {
        if request.library != self.inner.config.library {
            return Ok(refusal("another library"));
        }
        if tls::peer_device(connection) != Some(request.device) {
            return Ok(refusal(
                "the device id is not the one the certificate's key names",
            ));
        }
        if request.device == self.device() {
            return Ok(refusal("that device id cannot be paired"));
        }
        if self.inner.engine.is_removed(request.device) {
            return Ok(refusal("that device was removed from the library"));
        }
        let known = {
            let peers = lock(&self.inner.peers);
            peers.all().iter().any(|p| p.device == request.device)
                || peers.by_fingerprint(fingerprint).is_some()
        };
        // Checked before the token is spent, so that a refused device does
        // not burn the code of the one it was meant for.
        if known {
            return Ok(refusal(
                "that device or key is already known to this library; a code admits a new device only",
            ));
        }
        if !self.spend_token(&request.token) {
            return Ok(refusal("unknown or expired pairing code"));
        }
        self.remember(PeerRecord {
            device: request.device,
            fingerprint,
            addr: request.addr.or(Some(connection.remote_address())),
        })
        .await?;
        tracing::info!(peer = %request.device, "paired");
        Ok(PairReply::Accepted {
            device: self.device(),
        })
    }

    /// Spends the invitation whose token this is, if one is valid. Every
    /// live token is compared, in constant time, whatever matches.
    fn spend_token(&self, token: &[u8; 16]) -> bool {
        let ttl = self.inner.config.invite_ttl;
        let mut invites = lock(&self.inner.invites);
        invites.retain(|(_, at)| at.elapsed() < ttl);
        let mut found = None;
        for (i, (t, _)) in invites.iter().enumerate() {
            if bool::from(t.ct_eq(token)) {
                found = Some(i);
            }
        }
        match found {
            Some(i) => {
                invites.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Frees a pairing slot when the connection is done, however it ends.
struct PairingSlot<'a>(&'a Node);

impl Drop for PairingSlot<'_> {
    fn drop(&mut self) {
        self.0.inner.pairing.fetch_sub(1, Ordering::AcqRel);
    }
}
