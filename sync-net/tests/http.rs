//! The node's HTTP endpoint, read the way a person or Prometheus reads it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One GET over HTTP/1.1: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

async fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_status_and_metrics_show_peers_lag_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    let http_a = a.serve_http("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http_b = b.serve_http("127.0.0.1:0".parse().unwrap()).await.unwrap();

    let (code, page) = get(http_a, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>Syncable node</title>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );

    let ids = write_tags(&a, 20, "t").await;
    let b_id = b.device().to_string();
    eventually("a's status shows b connected, lacking nothing", || async {
        let s = status(http_a).await;
        s["status"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer"] == b_id.as_str() && p["connected"] == true && p["behind"] == 0)
            && s["status"]["phase"] == "ready"
    })
    .await;

    let (code, metrics) = get(http_a, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!("syncable_peer_connected{{peer=\"{b_id}\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE syncable_node_log_entries gauge"));
    assert!(metrics.contains(&format!(
        "syncable_peer_behind_changes{{peer=\"{b_id}\"}} 0"
    )));

    // A concurrent edit of one tag on both devices: one write loses, and a
    // conflict log entry shows on a status page.
    tokio::join!(rename(&a, ids[0], "from a"), rename(&b, ids[0], "from b"));
    eventually("a conflict appears on a status page", || async {
        let (sa, sb) = (status(http_a).await, status(http_b).await);
        [sa, sb].iter().any(|s| {
            s["status"]["conflicts"].as_u64().unwrap() > 0
                && s["conflicts"].as_array().is_some_and(|c| !c.is_empty())
        })
    })
    .await;

    let (code, _) = get(http_a, "/nothing-here").await;
    assert_eq!(code, 404);
    a.shutdown().await;
    b.shutdown().await;
}
