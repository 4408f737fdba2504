//! The node's HTTP endpoint (feature `http`): a status page a person reads
//! at a glance, `/status` as JSON, `/metrics` in Prometheus text format.
//! Off unless [`Node::serve_http`] is called; bind it to loopback unless the
//! machine's network is trusted: it has no authentication.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::error::NetError;
use crate::node::{LinkStats, Node, NodeCounters};

/// The latest conflicts the page and `/status` show.
const LATEST_CONFLICTS: i64 = 20;

/// What `/status` returns.
#[derive(Debug, Serialize)]
pub struct HttpStatus {
    /// The engine's status: device, phase, peers, log, parked, conflicts.
    pub status: sync_core::Status,
    /// Per peer: pushes and bytes sent, messages received, last error.
    pub links: Vec<(uuid::Uuid, LinkStats)>,
    /// What the node refused since it started.
    pub counters: NodeCounters,
    /// The latest entries of the conflict log, oldest first.
    pub conflicts: Vec<sync_core::Conflict>,
    /// Offline by the application's choice (see [`Node::pause`]).
    pub paused: bool,
}

/// The process's Prometheus recorder, if this crate could install it (an
/// application that installed its own keeps it, and `/metrics` then shows
/// the node's status figures only).
fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::info!(error = %e, "another metrics recorder is installed; /metrics shows the node's status figures only");
                None
            }
        })
        .as_ref()
}

impl Node {
    /// Serves the status page (`/`), `/status` and `/metrics` on `addr`
    /// until the node shuts down; returns the address bound (port 0 picks
    /// one). Installs a Prometheus recorder for the process's `metrics`
    /// unless one is installed already.
    pub async fn serve_http(&self, addr: SocketAddr) -> Result<SocketAddr, NetError> {
        let _ = recorder();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NetError::Endpoint(format!("HTTP endpoint on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| NetError::Endpoint(format!("HTTP endpoint on {addr}: {e}")))?;
        let app = Router::new()
            .route("/", get(page))
            .route("/status", get(status))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        let mut shutdown = self.shutdown_signal();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the HTTP endpoint stopped");
            }
        });
        self.keep_task(server);
        tracing::info!(%bound, "status page at http://{bound}/");
        Ok(bound)
    }

    /// The status `/status` serves.
    pub async fn http_status(&self) -> Result<HttpStatus, NetError> {
        let status = self.status().await?;
        let after = (status.conflicts as i64 - LATEST_CONFLICTS).max(0);
        let conflicts = self
            .engine()
            .conflicts_since(after, LATEST_CONFLICTS as u64)
            .await?;
        let mut links: Vec<_> = self.link_stats().into_iter().collect();
        links.sort_by_key(|(peer, _)| *peer);
        Ok(HttpStatus {
            status,
            links,
            counters: self.counters(),
            conflicts,
            paused: self.is_paused(),
        })
    }
}

fn failure(e: NetError) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

async fn status(State(node): State<Node>) -> Response {
    match node.http_status().await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => failure(e),
    }
}

async fn metrics(State(node): State<Node>) -> Response {
    let s = match node.http_status().await {
        Ok(s) => s,
        Err(e) => return failure(e),
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, rows: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let st = &s.status;
    gauge(
        "syncable_node_log_entries",
        "Changes in this device's log.",
        &[(String::new(), st.log_len as f64)],
    );
    gauge(
        "syncable_node_parked",
        "Records waiting for another record.",
        &[(String::new(), st.parked as f64)],
    );
    gauge(
        "syncable_node_conflicts",
        "Entries in the conflict log.",
        &[(String::new(), st.conflicts as f64)],
    );
    let phase = match st.phase {
        sync_core::Phase::Backfilling { .. } => 0.0,
        sync_core::Phase::CatchingUp => 1.0,
        sync_core::Phase::Ready => 2.0,
    };
    gauge(
        "syncable_node_paused",
        "1 while the node is offline by the application's choice.",
        &[(String::new(), f64::from(u8::from(s.paused)))],
    );
    gauge(
        "syncable_node_phase",
        "0 backfilling, 1 catching up, 2 ready.",
        &[(String::new(), phase)],
    );
    let per_peer = |f: &dyn Fn(&sync_core::PeerStatus) -> f64| -> Vec<(String, f64)> {
        st.peers
            .iter()
            .map(|p| (format!("{{peer=\"{}\"}}", p.peer), f(p)))
            .collect()
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    gauge(
        "syncable_peer_connected",
        "1 while a session with the peer is open.",
        &per_peer(&|p| f64::from(u8::from(p.connected))),
    );
    gauge(
        "syncable_peer_behind_changes",
        "Changes this device holds that the peer has not acknowledged.",
        &per_peer(&|p| p.behind as f64),
    );
    gauge(
        "syncable_peer_lag_seconds",
        "Age, here, of the oldest change the peer has not acknowledged (0 when it holds everything).",
        &per_peer(&|p| p.lag_ms as f64 / 1e3),
    );
    gauge(
        "syncable_peer_latency_seconds",
        "Commit (on the peer) to applied (here) of the peer's newest write received.",
        &per_peer(&|p| p.latency_ms.map_or(f64::NAN, |l| l as f64 / 1e3)),
    );
    gauge(
        "syncable_peer_ahead_changes",
        "Changes the peer holds that this device lacks.",
        &per_peer(&|p| p.ahead as f64),
    );
    gauge(
        "syncable_peer_silent_seconds",
        "Seconds since the peer was last heard from.",
        &per_peer(&|p| {
            p.last_seen_ms
                .map_or(f64::NAN, |t| now_ms.saturating_sub(t) as f64 / 1e3)
        }),
    );
    gauge(
        "syncable_peer_expired",
        "1 if the peer was away beyond the retention horizon.",
        &per_peer(&|p| f64::from(u8::from(p.expired))),
    );
    let links = |f: &dyn Fn(&LinkStats) -> f64| -> Vec<(String, f64)> {
        s.links
            .iter()
            .map(|(peer, l)| (format!("{{peer=\"{peer}\"}}"), f(l)))
            .collect()
    };
    gauge(
        "syncable_link_pushes_sent",
        "Pushes written to the peer since the node started.",
        &links(&|l| l.pushes_sent as f64),
    );
    gauge(
        "syncable_link_bytes_sent",
        "Bytes written to the peer since the node started.",
        &links(&|l| l.bytes_sent as f64),
    );
    gauge(
        "syncable_link_pushes_dropped",
        "Pushes not queued because the peer's queue was full.",
        &links(&|l| l.pushes_dropped as f64),
    );
    gauge(
        "syncable_node_connections_refused",
        "Sync connections refused at the handshake.",
        &[(String::new(), s.counters.connections_refused as f64)],
    );
    gauge(
        "syncable_node_pairing_refused",
        "Pairing attempts refused.",
        &[(String::new(), s.counters.pairing_refused as f64)],
    );
    if let Some(handle) = recorder() {
        out.push_str(&handle.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The status page: one file, no external assets, polling `/status` every
/// second.
const PAGE: &str = include_str!("status.html");
