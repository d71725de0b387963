//! Watches (`GET /v1/watch?prefix=`, `GET /v1/watch/{key}`), through real processes and redb:
//! the events a watcher gets equal the committed history, across a kill of the node serving
//! the watch (resumed from its cursor on another node) and the leader changes that causes; a
//! cursor the log no longer reaches gets `410`; `since` replays exactly what followed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kv_node::testing::{wait_until, ClusterOptions, TestCluster};
use serde_json::Value;

/// One Server-Sent Events message.
#[derive(Debug, Clone, Default)]
struct Message {
    id: Option<String>,
    data: Option<Value>,
}

/// A watch's stream, read message by message.
struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// The last `id:` seen: where a reconnect resumes.
    cursor: Option<String>,
}

/// A client without the harness's whole-request timeout: streams stay open.
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn open(http: &reqwest::Client, url: String) -> reqwest::Result<reqwest::Response> {
    http.get(url).send().await
}

impl Watch {
    async fn start(http: &reqwest::Client, url: String) -> Watch {
        let resp = open(http, url.clone()).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Watch {
            resp,
            buf: Vec::new(),
            cursor: None,
        }
    }

    /// The next message with an id or data (comments skipped), `None` when the stream ends
    /// or fails, or nothing comes within `within`.
    async fn next(&mut self, within: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut message = Message::default();
                for line in text.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        message.id = Some(id.to_string());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        message.data = Some(serde_json::from_str(data).unwrap());
                    }
                }
                if let Some(id) = &message.id {
                    self.cursor = Some(id.clone());
                }
                if message.id.is_some() || message.data.is_some() {
                    return Some(message);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The cursor the stream opens with (its first message).
    async fn opening_cursor(&mut self, within: Duration) -> String {
        let first = self.next(within).await.expect("the stream opens");
        first.id.expect("the first message is the start cursor")
    }

    /// The next change event (cursor-only messages skipped).
    async fn event(&mut self, within: Duration) -> Option<Value> {
        loop {
            let message = self.next(within).await?;
            if let Some(data) = message.data {
                return Some(data);
            }
        }
    }
}

/// A change as the watch shows it: (key, version, type).
type Seen = (String, u64, String);

fn seen(event: &Value) -> Seen {
    (
        event["key"].as_str().unwrap().to_string(),
        event["version"].as_u64().unwrap(),
        event["type"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_the_committed_history_across_a_kill_of_its_node_and_leader_changes() {
    let mut c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 3,
            partitions: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for p in 0..4 {
        c.wait_leader(p).await.unwrap();
    }
    let http = streaming_client();
    let mut watch = Watch::start(&http, format!("{}/v1/watch?prefix=w/", c.url(1))).await;
    // The start position comes first.
    let first = watch.next(Duration::from_secs(5)).await.unwrap();
    assert!(first.id.is_some() && first.data.is_none(), "{first:?}");

    // Three writers on 50 keys (puts and deletes) through node 3, which stays up; keys
    // outside the prefix too.
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let http = c.http().clone();
            let url = c.url(3);
            tokio::spawn(async move {
                // (key, version, type) of every acknowledged change; keys with a write whose
                // outcome is unknown.
                let mut acked: Vec<Seen> = Vec::new();
                let mut unsure: BTreeSet<String> = BTreeSet::new();
                for i in 0..60u64 {
                    let key = format!("w/{}", (w * 17 + i * 7) % 50);
                    let delete = i % 9 == 4;
                    let req = match delete {
                        true => http.delete(format!("{url}/v1/kv/{key}")),
                        false => http
                            .put(format!("{url}/v1/kv/{key}"))
                            .body(format!("{w}.{i}")),
                    };
                    let _ = http
                        .put(format!("{url}/v1/kv/x/{i}"))
                        .body("outside")
                        .send()
                        .await;
                    match req.send().await {
                        Ok(r) if r.status() == 200 => {
                            let body: Value = r.json().await.unwrap();
                            let kind = if delete { "delete" } else { "put" };
                            acked.push((key, body["version"].as_u64().unwrap(), kind.into()));
                        }
                        // Deleting an absent key changes nothing.
                        Ok(r) if r.status() == 404 => {}
                        _ => {
                            unsure.insert(key);
                        }
                    }
                }
                (acked, unsure)
            })
        })
        .collect();

    let mut events: Vec<Seen> = Vec::new();
    // Some events from node 1, then it is killed: the watch resumes on node 2 from its cursor.
    while events.len() < 30 {
        let event = watch.event(Duration::from_secs(10)).await.unwrap();
        events.push(seen(&event));
    }
    c.kill(1).unwrap();
    // Whatever node 1 sent before it died counts (its cursor is past it).
    while let Some(event) = watch.event(Duration::from_secs(5)).await {
        events.push(seen(&event));
    }
    let cursor = watch.cursor.clone().unwrap();
    let before_kill = events.len();
    let mut resumed = Watch::start(
        &http,
        format!("{}/v1/watch?prefix=w/&since={cursor}", c.url(2)),
    )
    .await;
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.push(w.await.unwrap());
    }
    let acked: Vec<Seen> = outcomes.iter().flat_map(|(a, _)| a.clone()).collect();
    let unsure: BTreeSet<String> = outcomes.iter().flat_map(|(_, u)| u.clone()).collect();
    // Read until every acknowledged change has been seen.
    let wanted: BTreeSet<Seen> = acked.iter().cloned().collect();
    loop {
        let have: BTreeSet<Seen> = events.iter().cloned().collect();
        if wanted.is_subset(&have) {
            break;
        }
        let missing: Vec<_> = wanted.difference(&have).take(3).collect();
        let event = resumed
            .event(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("no more events; still missing {missing:?}"));
        events.push(seen(&event));
    }

    // Exactly once, in order per key (a put raises the version; a delete names the version
    // it removed); only prefix keys; nothing that was not written (an unacknowledged write
    // may have been committed: only for its keys).
    let mut per_key: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (key, version, kind) in &events {
        assert!(key.starts_with("w/"), "{key}");
        per_key
            .entry(key.clone())
            .or_default()
            .push((*version, kind.clone()));
    }
    for (key, changes) in &per_key {
        let in_order = changes.windows(2).all(|w| match w[1].1.as_str() {
            "put" => w[1].0 > w[0].0,
            _ => w[0].1 == "put" && w[1].0 == w[0].0,
        });
        assert!(
            in_order,
            "{key}: changes out of order or repeated: {changes:?}"
        );
    }
    let acked_set: BTreeSet<Seen> = acked.iter().cloned().collect();
    for event in &events {
        assert!(
            acked_set.contains(event) || unsure.contains(&event.0),
            "an event no acknowledged write explains: {event:?}"
        );
    }
    // The last event of each key is the key's state.
    for (key, changes) in &per_key {
        let r = c.get(2, key).await.unwrap();
        let last = events.iter().rev().find(|(k, _, _)| k == key).unwrap();
        match last.2.as_str() {
            "delete" => assert_eq!(r.status(), 404, "{key}"),
            _ => {
                assert_eq!(r.status(), 200, "{key}");
                let etag = r.headers()["etag"]
                    .to_str()
                    .unwrap()
                    .trim_matches('"')
                    .to_string();
                assert_eq!(etag, changes.last().unwrap().0.to_string(), "{key}");
            }
        }
    }

    // Node 1 comes back and catches up; a watch on it from the same cursor sees the same.
    c.restart(1).await.unwrap();
    let mut again = Watch::start(
        &http,
        format!("{}/v1/watch?prefix=w/&since={cursor}", c.url(1)),
    )
    .await;
    let after_kill: BTreeSet<Seen> = events.iter().skip(before_kill).cloned().collect();
    let mut replayed = BTreeSet::new();
    while !after_kill.is_subset(&replayed) {
        let event = again.event(Duration::from_secs(20)).await.unwrap();
        replayed.insert(seen(&event));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_what_followed_and_a_compacted_cursor_gets_410() {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 3,
            partitions: 2,
            snapshot_logs: 40,
            logs_kept: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = streaming_client();
    let mut watch = Watch::start(&http, format!("{}/v1/watch?prefix=s/", c.url(1))).await;
    let start = watch.opening_cursor(Duration::from_secs(5)).await;
    let mut key_watch = Watch::start(&http, format!("{}/v1/watch/s/2", c.url(3))).await;
    key_watch.next(Duration::from_secs(5)).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..5 {
        assert_eq!(
            c.put(2, &format!("s/{i}"), format!("v{i}"))
                .await
                .unwrap()
                .status(),
            200
        );
        let message = loop {
            let m = watch.next(Duration::from_secs(10)).await.unwrap();
            if m.data.is_some() {
                break m;
            }
        };
        let data = message.data.unwrap();
        assert_eq!(data["type"], "put");
        assert_eq!(data["key"], format!("s/{i}"));
        assert_eq!(data["value"], format!("v{i}"));
        ids.push(message.id.unwrap());
    }
    // The key watch sees its key only.
    let only = key_watch.event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (only["key"].as_str(), only["value"].as_str()),
        (Some("s/2"), Some("v2"))
    );

    // From the cursor of the third event, on another node: exactly the fourth and fifth.
    let mut replay = Watch::start(
        &http,
        format!("{}/v1/watch?prefix=s/&since={}", c.url(3), ids[2]),
    )
    .await;
    let mut keys = BTreeSet::new();
    while keys.len() < 2 {
        let event = replay.event(Duration::from_secs(10)).await.unwrap();
        keys.insert(event["key"].as_str().unwrap().to_string());
    }
    // (Partitions interleave as they like: the order is per key.)
    assert_eq!(keys, BTreeSet::from(["s/3".to_string(), "s/4".to_string()]));
    assert!(replay.event(Duration::from_millis(500)).await.is_none());
    // Last-Event-ID (an EventSource reconnecting) wins over since.
    let resp = http
        .get(format!("{}/v1/watch?prefix=s/&since={start}", c.url(2)))
        .header("last-event-id", &ids[3])
        .send()
        .await
        .unwrap();
    let mut by_header = Watch {
        resp,
        buf: Vec::new(),
        cursor: None,
    };
    let event = by_header.event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event["key"], "s/4");

    // Deletes and expiries are events too.
    let r = c
        .http()
        .delete(format!("{}/v1/kv/s/0", c.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted = watch.event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (deleted["type"].as_str(), deleted["key"].as_str()),
        (Some("delete"), Some("s/0"))
    );
    let r = c
        .http()
        .put(format!("{}/v1/kv/s/ttl?ttl=1s", c.url(1)))
        .body("brief")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        watch.event(Duration::from_secs(10)).await.unwrap()["type"],
        "put"
    );
    let expired = watch.event(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        (expired["type"].as_str(), expired["key"].as_str()),
        (Some("expire"), Some("s/ttl"))
    );

    // Enough writes that every replica snapshots and purges its log: the start cursor is
    // older than any history left.
    for i in 0..200 {
        assert_eq!(
            c.put(1 + i % 3, &format!("fill/{i}"), "x")
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let gone = wait_until(
        Duration::from_secs(30),
        "the start cursor compacted",
        || async {
            let r = http
                .get(format!("{}/v1/watch?prefix=s/&since={start}", c.url(2)))
                .send()
                .await?;
            match r.status().as_u16() {
                410 => Ok(Some(r.json::<Value>().await?)),
                _ => Ok(None),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(gone["error"], "compacted", "{gone}");
    let current = gone["current"].as_str().unwrap().to_string();
    // Resuming from `current` works and sees what comes next.
    let mut resumed = Watch::start(
        &http,
        format!("{}/v1/watch?prefix=s/&since={current}", c.url(2)),
    )
    .await;
    assert_eq!(c.put(3, "s/next", "n").await.unwrap().status(), 200);
    let next = resumed.event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(next["key"], "s/next");

    // Cursors that are not cursors, or not of this watch.
    for bad in ["nonsense", "0:1", "0:1,0:2,1:3", "9:1,0:1,1:1"] {
        let r = http
            .get(format!("{}/v1/watch?prefix=s/&since={bad}", c.url(1)))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if bad == "9:1,0:1,1:1" {
            // Partitions the watch does not span are ignored.
            assert_eq!(status, 410, "{bad}: {body}");
        } else {
            assert_eq!(status, 400, "{bad}: {body}");
            assert_eq!(body["error"], "invalid_cursor", "{bad}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_and_the_node_serves_on() {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 3,
            partitions: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A watcher with a small receive window that reads its answer head and then nothing.
    let addr: std::net::SocketAddr = c.url(1).trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stalled
        .write_all(b"GET /v1/watch?prefix=big/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    // More than socket buffers hold, while it reads nothing; then the node cuts it off.
    let value = "v".repeat(256 << 10);
    let mut written = 0usize;
    for i in 0..64 {
        let r = c
            .put(2, &format!("big/{}", i % 7), value.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        written += value.len();
    }
    wait_until(
        Duration::from_secs(60),
        "the stalled watch cut off",
        || async { Ok((c.metric(1, "kv_watches_cut_off_total", &[]).await? >= 1.0).then_some(())) },
    )
    .await
    .unwrap();
    // Written after the cut: never sent to it.
    for i in 0..8 {
        let r = c.put(2, &format!("big/{i}"), value.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        written += value.len();
    }
    // Reading now gets what was buffered, then the reason, and the answer ends.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
            if received.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled watch was never cut off");
    assert!(
        received.len() < written,
        "received {} of {written} bytes",
        received.len()
    );
    let tail =
        String::from_utf8_lossy(&received[received.len().saturating_sub(400)..]).into_owned();
    assert!(tail.contains("\"error\":\"slow_consumer\""), "{tail}");
    // Meanwhile the node serves as before, watches included.
    assert_eq!(c.get(1, "big/0").await.unwrap().status(), 200);
    let http = streaming_client();
    let mut fresh = Watch::start(&http, format!("{}/v1/watch?prefix=big/", c.url(1))).await;
    assert!(fresh.next(Duration::from_secs(5)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hosts_no_replica_relays_a_watch_from_one_that_does() {
    // Four nodes, three replicas of the one partition: one node hosts none.
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 4,
            partitions: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (replicas, outsider) = c.replicas_and_outsider(0).await.unwrap();
    let http = streaming_client();
    let mut watch = Watch::start(&http, format!("{}/v1/watch?prefix=r/", c.url(outsider))).await;
    let start = watch.opening_cursor(Duration::from_secs(10)).await;
    let mut written = Vec::new();
    for i in 0..20 {
        let r = c
            .put(replicas[i % 3], &format!("r/{i}"), format!("v{i}"))
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        written.push((
            format!("r/{i}"),
            body["version"].as_u64().unwrap(),
            "put".to_string(),
        ));
    }
    let mut seen_events = Vec::new();
    while seen_events.len() < written.len() {
        seen_events.push(seen(&watch.event(Duration::from_secs(40)).await.unwrap()));
    }
    // One partition: the order is the log's.
    assert_eq!(seen_events, written);
    // And from the start cursor again, through the outsider: the same.
    let mut again = Watch::start(
        &http,
        format!("{}/v1/watch?prefix=r/&since={start}", c.url(outsider)),
    )
    .await;
    for expected in &written {
        assert_eq!(
            &seen(&again.event(Duration::from_secs(40)).await.unwrap()),
            expected
        );
    }
}

/// Put `m/{i}` through node `1 + i % 3`; returns what a watch shows of it.
async fn put_numbered(c: &TestCluster, i: usize) -> Seen {
    let key = format!("m/{i}");
    let r = c
        .put(1 + i as u64 % 3, &key, format!("v{i}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    (key, body["version"].as_u64().unwrap(), "put".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_partitions_that_move_away_from_its_node() {
    let mut c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 3,
            partitions: 8,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = streaming_client();
    let mut watch = Watch::start(&http, format!("{}/v1/watch?prefix=m/", c.url(1))).await;
    let start = watch.opening_cursor(Duration::from_secs(10)).await;
    let mut written = BTreeSet::new();
    for i in 0..16 {
        written.insert(put_numbered(&c, i).await);
    }
    // Two nodes join: partitions move to them, some away from node 1, and the new replicas
    // start from snapshots taken (and the log purged) just before they were added.
    let hosted_before = c.hosted(1).await.unwrap();
    let (four, five) = (c.add_node(2).await.unwrap(), c.add_node(3).await.unwrap());
    c.wait_settled(1, Duration::from_secs(60)).await.unwrap();
    let hosted_after = c.hosted(1).await.unwrap();
    assert!(
        hosted_after.len() < hosted_before.len(),
        "node 1 gave partitions away: {hosted_before:?} -> {hosted_after:?}"
    );
    for i in 16..48 {
        written.insert(put_numbered(&c, i).await);
    }
    let mut events = BTreeSet::new();
    while events.len() < written.len() {
        let event = watch.event(Duration::from_secs(40)).await.unwrap();
        assert_ne!(event["type"], "error", "{event}");
        assert!(events.insert(seen(&event)), "delivered twice: {event}");
    }
    assert_eq!(events, written);
    // The joined nodes hold the history from before they joined: a watch there from the
    // first cursor replays everything.
    for node in [four, five] {
        let mut again = Watch::start(
            &http,
            format!("{}/v1/watch?prefix=m/&since={start}", c.url(node)),
        )
        .await;
        let mut replayed = BTreeSet::new();
        while replayed.len() < written.len() {
            let event = again.event(Duration::from_secs(40)).await.unwrap();
            assert_ne!(event["type"], "error", "node {node}: {event}");
            replayed.insert(seen(&event));
        }
        assert_eq!(replayed, written, "node {node}");
    }
}
