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

    // Connected first, so that a's writes reach b as changes (the
    // commit-to-applied histogram below), not in b's first snapshot.
    eventually("connected, b past its backfill", || async {
        a.connected().len() == 1
            && b.connected().len() == 1
            && b.status()
                .await
                .is_ok_and(|s| s.phase == sync_core::Phase::Ready)
    })
    .await;
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

    // The two nodes dial each other at once; the connection that loses the
    // race closes, and for that moment b may read as offline.
    eventually("/metrics shows b connected", || async {
        let (code, metrics) = get(http_a, "/metrics").await;
        code == 200 && metrics.contains(&format!("syncable_peer_connected{{peer=\"{b_id}\"}} 1"))
    })
    .await;
    let (code, metrics) = get(http_a, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("# TYPE syncable_node_log_entries gauge"));
    // From the process's recorder: b applied a's writes in this process.
    assert!(
        metrics.contains(&format!(
            "syncable_commit_to_applied_seconds{{device=\"{}\"",
            a.device()
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "syncable_peer_behind_changes{{peer=\"{b_id}\"}} 0"
    )));
    assert!(
        metrics.contains(&format!("syncable_peer_lag_seconds{{peer=\"{b_id}\"}} 0")),
        "b holds everything: no lag in seconds either: {metrics}"
    );

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

/// A headless Chromium, if this machine has one.
fn chromium() -> Option<std::path::PathBuf> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| std::path::Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

/// The page as the browser rendered it after its scripts ran.
fn rendered(browser: &std::path::Path, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let mut command = std::process::Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1100,760",
        "--virtual-time-budget=4000",
    ]);
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command.arg(url).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_both_devices_the_lag_fall_to_zero_and_a_conflict() {
    let Some(browser) = chromium() else {
        eprintln!(
            "skipped: no headless Chromium on this machine (apt-get install chromium; \
             .ci/run installs it where it can)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    let http = a.serve_http("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{http}/");
    let (a_id, b_id) = (a.device().to_string(), b.device().to_string());

    let ids = write_tags(&a, 50, "t").await;
    eventually("b acknowledged a's writes", || async {
        a.status()
            .await
            .unwrap()
            .peers
            .iter()
            .all(|p| p.behind == 0)
    })
    .await;
    let page = {
        let (browser, url) = (browser.clone(), url.clone());
        tokio::task::spawn_blocking(move || rendered(&browser, &url, None))
            .await
            .unwrap()
    };
    assert!(page.contains(&a_id), "this device is named: {page}");
    let row = page
        .split("<tr")
        .find(|r| r.contains(&b_id))
        .unwrap_or_else(|| panic!("the paired device is listed: {page}"));
    assert!(row.contains(">connected<"), "{row}");
    assert!(
        row.contains("class=\"lag-behind\">0<"),
        "the lag fell to zero: {row}"
    );
    assert!(page.contains(">ready<"), "{page}");

    // A concurrent edit on both devices: the loser shows among the conflicts
    // of one of them; make it a's by letting a's rename lose (b's clock is
    // moved on by writing after a).
    for _ in 0..20 {
        tokio::join!(rename(&a, ids[0], "from a"), rename(&b, ids[0], "from b"));
        if a.status().await.unwrap().conflicts > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eventually("a logged a conflict", || async {
        a.status().await.unwrap().conflicts > 0
    })
    .await;
    let page = {
        let (browser, url) = (browser.clone(), url.clone());
        tokio::task::spawn_blocking(move || rendered(&browser, &url, None))
            .await
            .unwrap()
    };
    assert!(
        page.contains("class=\"conflict\""),
        "a conflict row is shown: {page}"
    );
    assert!(page.contains("tags."), "{page}");
    let row = page
        .split("<tr")
        .find(|r| r.contains(&b_id))
        .unwrap_or_else(|| panic!("the paired device is listed: {page}"));
    assert!(
        row.contains("class=\"latency\">") && !row.contains("class=\"latency\">-<"),
        "b's writes reached a: their commit-to-applied latency is shown: {row}"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    {
        let (browser, url, shot) = (browser.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || rendered(&browser, &url, Some(&shot)))
            .await
            .unwrap();
    }
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
    a.shutdown().await;
    b.shutdown().await;
}
