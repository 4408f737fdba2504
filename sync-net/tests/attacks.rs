//! One test per attack a paired-but-hostile device, a holder of a pairing
//! code, or a removed device could try, over real QUIC on 127.0.0.1. Each
//! shows the refusal, the counter that moved, and that the honest devices
//! kept syncing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::time::Duration;

use common::*;
use sea_orm::ActiveValue::Set;
use sync_core::{
    Batch, Change, FieldChange, Hello, Message, Op, Push, Seal, SealProof, SyncModel, WireValue,
};
use sync_net::{Identity, Node, PeerRecord};
use uuid::Uuid;

/// A paired device that speaks raw frames: pinned by `target`, connected,
/// and past the hello exchange (in `name`'s name).
struct Hostile {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

async fn hostile(dir: &std::path::Path, target: &Node) -> Identity {
    let identity = Identity::load_or_create(dir).unwrap();
    target
        .pin(PeerRecord {
            device: identity.device(),
            fingerprint: identity.fingerprint(),
            addr: None,
        })
        .await
        .unwrap();
    identity
}

fn hello(device: Uuid) -> Message {
    Message::Hello(Hello {
        device,
        library: LIBRARY,
        min_version: sync_core::MIN_PROTOCOL_VERSION,
        max_version: sync_core::PROTOCOL_VERSION,
        vector: Default::default(),
        needs_backfill: false,
        members: [0; 32],
    })
}

async fn connect(identity: Identity, target: &Node, speak_as: Uuid) -> Hostile {
    let conn = sync_net::dial(&identity, target.fingerprint(), target.addr().unwrap())
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    sync_net::write_message(&mut send, &hello(speak_as))
        .await
        .unwrap();
    drop(identity);
    Hostile { conn, send, recv }
}

/// Reads messages until one matches, or fails after a few seconds.
async fn expect(recv: &mut quinn::RecvStream, what: &str, want: impl Fn(&Message) -> bool) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sync_net::read_message(recv).await {
                Ok(m) if want(&m) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(found, Ok(true), "expected {what}");
}

async fn tags(node: &Node) -> usize {
    use sea_orm::{EntityTrait, PaginatorTrait};
    tag::Entity::find()
        .count(node.engine().database())
        .await
        .unwrap() as usize
}

async fn volume_name(node: &Node, id: Uuid) -> Option<String> {
    volume::Model::find_by_id(node.engine().database(), id)
        .await
        .unwrap()
        .map(|v| v.name)
}

async fn new_volume(node: &Node, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    let mut tx = node.engine().begin().await.unwrap();
    tx.insert(volume::ActiveModel {
        gid: Set(id),
        device: Set(node.device()),
        name: Set(name.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn rename_volume(node: &Node, id: Uuid, name: &str) {
    let mut tx = node.engine().begin().await.unwrap();
    let mut v = volume::Model::find_by_id(tx.connection(), id)
        .await
        .unwrap()
        .unwrap();
    v.name = name.into();
    tx.update(v).await.unwrap();
    tx.commit().await.unwrap();
}

/// B says hello to A in C's name: refused, counted; A and C keep syncing,
/// and nothing B could say afterwards counts as C's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impersonating_paired_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let c = start(&dir.path().join("c")).await;
    pair(&a, &c).await;
    eventually("a and c connected", || async { a.connected().len() == 1 }).await;
    let b = hostile(&dir.path().join("b"), &a).await;

    let mut h = connect(b, &a, c.device()).await;
    expect(&mut h.recv, "a refusal", |m| {
        matches!(m, Message::Error(e) if e.code == sync_core::ErrorCode::NotPaired
            && e.message.contains("cannot speak as"))
    })
    .await;
    assert_eq!(a.engine().stats().impersonations, 1);
    // c's own link is untouched by the refused session, now and after it
    // ends (the flag is the session's, so it can lag the link under load).
    let c_connected = || async {
        let status = a.engine().status();
        status
            .peers
            .iter()
            .any(|p| p.peer == c.device() && p.connected)
    };
    eventually("a shows c connected", c_connected).await;
    drop(h.conn);

    write_tags(&c, 2, "from c").await;
    eventually("c's writes reach a", || async { tags(&a).await == 2 }).await;
    eventually("a still shows c connected", c_connected).await;
    a.shutdown().await;
    c.shutdown().await;
}

/// A paired device pushes a change in A's name (A's origin, the number
/// after those B holds): its seal is not A's, so B refuses it and counts
/// it; A's real rename (the same number) still reaches B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_origin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    let volume = new_volume(&a, "disk").await;
    eventually("the volume reaches b", || async {
        volume_name(&b, volume).await.is_some()
    })
    .await;
    let h = hostile(&dir.path().join("h"), &b).await;
    let key = h.signing_key().clone();
    let id = h.device();
    let mut h = connect(h, &b, id).await;

    let origin = a.engine().origin();
    // The number after those b holds: a push beyond a gap would not even be
    // looked at (it waits for the numbers before it).
    let next = b.engine().vector().get(origin) + 1;
    let forged = Change {
        device: a.device(),
        origin,
        seq: next,
        hlc: sync_core::clock::Timestamp::new(
            a.engine().clock_time(),
            sync_core::clock::clock_id(origin).unwrap(),
        ),
        model: volume::Model::NAME.into(),
        id: volume,
        op: Op::Upsert(vec![FieldChange {
            name: "name".into(),
            value: WireValue::String(Some("hijacked".into())),
            base: None,
        }]),
        replaces: None,
    };
    // Signed by the hostile key, or carrying no seal at all.
    let seal = Seal {
        key: key.public(),
        origin,
        nonce: Uuid::new_v4(),
        first: next,
        last: next,
        root: [7; 32],
        signature: key.sign(b"not a seal"),
    };
    for seals in [
        vec![SealProof {
            seal,
            husks: vec![],
            hashes: vec![],
        }],
        vec![],
    ] {
        let push = Message::Push(Push {
            batches: vec![Batch {
                origin,
                device: a.device(),
                after: next - 1,
                upto: next,
                changes: vec![forged.encode().unwrap()],
                seals,
            }],
        });
        sync_net::write_message(&mut h.send, &push).await.unwrap();
    }
    eventually("both forgeries counted", || async {
        b.engine().stats().unverified >= 2
    })
    .await;
    assert_eq!(volume_name(&b, volume).await.as_deref(), Some("disk"));
    assert!(b.engine().vector().get(origin) < next);

    rename_volume(&a, volume, "renamed").await;
    eventually("a's real rename reaches b", || async {
        volume_name(&b, volume).await.as_deref() == Some("renamed")
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A paired device claims, for C's origin, "everything up to 2^62" with
/// no change and no seal: A's vector does not follow, the claim is
/// counted, and C's later writes reach A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_claim_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let c = start(&dir.path().join("c")).await;
    pair(&a, &c).await;
    write_tags(&c, 1, "before").await;
    eventually("c's first write reaches a", || async {
        tags(&a).await == 1
    })
    .await;
    let h = hostile(&dir.path().join("h"), &a).await;
    let id = h.device();
    let mut h = connect(h, &a, id).await;
    let origin = c.engine().origin();
    let before = a.engine().vector().get(origin);
    let claim = Message::Push(Push {
        batches: vec![Batch {
            origin,
            device: c.device(),
            after: before,
            upto: 1 << 62,
            changes: vec![],
            seals: vec![],
        }],
    });
    sync_net::write_message(&mut h.send, &claim).await.unwrap();
    // An acknowledgement is the sender's own: it cannot speak for C.
    let ack = Message::Ack(sync_core::Ack {
        vector: [(origin, 1u64 << 62)].into_iter().collect(),
        held_back: vec![],
    });
    sync_net::write_message(&mut h.send, &ack).await.unwrap();
    eventually("the claim counted", || async {
        a.engine().stats().claims_refused >= 1
    })
    .await;
    assert_eq!(a.engine().vector().get(origin), before);

    write_tags(&c, 3, "after").await;
    eventually("c's later writes reach a", || async { tags(&a).await == 4 }).await;
    assert_eq!(
        a.engine().vector().get(origin),
        c.engine().vector().get(origin)
    );
    drop(h.conn);
    a.shutdown().await;
    c.shutdown().await;
}

/// A holder of A's pairing code asks to pair as B (already paired), with
/// its own key: refused before the code is spent, counted; B's pin is
/// unchanged and B keeps syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_pin_attempt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    let thief = Identity::load_or_create(&dir.path().join("thief")).unwrap();
    let code = a.invite().unwrap();
    let refused = sync_net::request_as(&thief, &code, b.device())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("certificate's key"),
        "{refused}"
    );
    assert!(a.counters().pairing_refused >= 1);
    let pinned = a
        .peers()
        .into_iter()
        .find(|p| p.device == b.device())
        .unwrap();
    assert_eq!(pinned.fingerprint, b.fingerprint());
    // The thief's own id is a new device: the code admits that (a stolen
    // code admits one new device; see docs/security.md), never a takeover.
    write_tags(&b, 2, "still b").await;
    eventually("b keeps syncing", || async { tags(&a).await == 2 }).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Many pairing connections at once that never speak: at most a few are
/// served, each only until its step deadline; the rest are closed at once
/// and counted. Once the flood has passed, pairing works, and paired
/// devices synced throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_flood_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let tune = |mut c: sync_net::NodeConfig| {
        c.pairing_deadline = Duration::from_millis(800);
        c
    };
    let a = start_with(&dir.path().join("a"), tune).await;
    let b = start(&dir.path().join("b")).await;
    let c = start(&dir.path().join("c")).await;
    pair(&a, &c).await;
    let mut flood = Vec::new();
    for i in 0..12 {
        let id = Identity::load_or_create(&dir.path().join(format!("flood{i}"))).unwrap();
        if let Ok(conn) =
            sync_net::dial_with(&id, a.fingerprint(), a.addr().unwrap(), sync_net::ALPN_PAIR).await
        {
            flood.push(conn);
        }
    }
    eventually("the excess refused", || async {
        a.counters().pairing_refused >= 8
    })
    .await;
    write_tags(&c, 2, "during").await;
    eventually("c syncs during the flood", || async { tags(&a).await == 2 }).await;
    // The served ones time out; then a real pairing goes through.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    pair(&a, &b).await;
    write_tags(&b, 1, "paired after").await;
    eventually("b syncs", || async { tags(&a).await == 3 }).await;
    drop(flood);
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// A paired device starts a frame and never finishes it: the stream is
/// answered with an error once the frame deadline passes, and the node
/// keeps serving its other peers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_frame_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let tune = |mut c: sync_net::NodeConfig| {
        c.frame_deadline = Duration::from_millis(500);
        c
    };
    let a = start_with(&dir.path().join("a"), tune).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    let h = hostile(&dir.path().join("h"), &a).await;
    let id = h.device();
    let h = connect(h, &a, id).await;
    let (mut send, mut recv) = h.conn.open_bi().await.unwrap();
    let version = sync_core::PROTOCOL_VERSION.to_be_bytes();
    let header = [
        &version[..],
        &[1, 0],
        &100_000u32.to_be_bytes()[..],
        &[0; 10],
    ]
    .concat();
    send.write_all(&header).await.unwrap();
    write_tags(&b, 2, "meanwhile").await;
    eventually("b syncs meanwhile", || async { tags(&a).await == 2 }).await;
    expect(
        &mut recv,
        "an error for the stalled frame",
        |m| matches!(m, Message::Error(e) if e.message.contains("did not finish")),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A paired device opens as many streams as it can and sends on each only
/// a header promising a frame of the largest size: the node holds at most
/// a few streams, and allocates only what arrives (resident memory is
/// printed; before the fix, 100 streams pinned about 800 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_only_flood_pins_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    let h = hostile(&dir.path().join("h"), &a).await;
    let id = h.device();
    let h = connect(h, &a, id).await;
    let before = rss_kib();
    let version = sync_core::PROTOCOL_VERSION.to_be_bytes();
    let max = sync_net::MAX_FRAME_BYTES as u32;
    let header = [&version[..], &[2, 0], &max.to_be_bytes()[..], &[0; 64]].concat();
    let mut opened = 0;
    let mut streams = Vec::new();
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_millis(200), h.conn.open_bi()).await {
            Ok(Ok((mut send, recv))) => {
                send.write_all(&header).await.unwrap();
                streams.push((send, recv));
                opened += 1;
            }
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "header-only flood: {opened} streams opened (limit {} per connection, one is the \
         session's); resident memory {} KiB -> {} KiB",
        sync_net::MAX_STREAMS,
        before,
        after
    );
    assert!(opened < sync_net::MAX_STREAMS as usize, "{opened} streams");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "{} KiB more",
        after - before
    );
    write_tags(&b, 2, "still").await;
    eventually("b keeps syncing", || async { tags(&a).await == 2 }).await;
    drop(streams);
    a.shutdown().await;
    b.shutdown().await;
}

/// A removes C: C's links close, its key is refused at the handshake (by A
/// and, once the removal reached it, by B), its later writes reach no one,
/// and its earlier ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    let c = start(&dir.path().join("c")).await;
    pair(&a, &b).await;
    pair(&a, &c).await;
    pair(&b, &c).await;
    write_tags(&c, 2, "before removal").await;
    eventually("c's writes everywhere", || async {
        tags(&a).await == 2 && tags(&b).await == 2
    })
    .await;

    a.remove(c.device()).await.unwrap();
    assert!(a.engine().is_removed(c.device()));
    eventually("b learns of the removal", || async {
        b.engine().is_removed(c.device())
    })
    .await;
    eventually("c disconnected everywhere", || async {
        !a.connected().contains(&c.device()) && !b.connected().contains(&c.device())
    })
    .await;
    write_tags(&c, 3, "after removal").await;
    eventually("c's redials refused", || async {
        a.counters().connections_refused + b.counters().connections_refused >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tags(&a).await, 2, "nothing after the removal reached a");
    assert_eq!(tags(&b).await, 2, "nor b");
    // A and B keep syncing with each other.
    write_tags(&b, 1, "b").await;
    eventually("a and b sync", || async { tags(&a).await == 3 }).await;
    assert!(!a.peers().iter().any(|p| p.device == c.device()));
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
