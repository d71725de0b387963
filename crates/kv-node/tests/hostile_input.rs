//! Hostile and careless requests through the real HTTP stack of a 3-node cluster, one test per
//! kind: each gets the documented status and JSON error, and no stored key, version, member or
//! Raft term changes where it must not. Requests are sent byte for byte over TCP where a client
//! library would normalize them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kv_node::testing::{raw_request, wait_until, ClusterOptions, RawResponse, TestCluster};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn cluster(extra: &[&str]) -> TestCluster {
    TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            partitions: 4,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap()
}

/// `METHOD target` with `headers` and `body`, sent raw to node `id`.
async fn raw(
    c: &TestCluster,
    id: u64,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nhost: kv\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(&c.node(id).addr, &bytes, TIMEOUT)
        .await
        .unwrap()
}

/// The answer is the documented JSON error.
fn expect_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "errors are JSON: {r:?}"
    );
    let body = r.json().unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// What must not change: every node's view of members, and of each group's term.
async fn terms_and_members(c: &TestCluster) -> BTreeMap<u64, (Vec<u64>, Vec<(Option<u32>, u64)>)> {
    let mut out = BTreeMap::new();
    for id in c.ids() {
        let r = c
            .http()
            .get(format!("{}/v1/cluster?scope=local", c.url(id)))
            .send()
            .await
            .unwrap();
        let s: kv_client::api::ClusterStatus = r.json().await.unwrap();
        out.insert(
            id,
            (
                s.members.iter().map(|m| m.id).collect(),
                s.groups.iter().map(|g| (g.partition, g.term)).collect(),
            ),
        );
    }
    out
}

async fn value(c: &TestCluster, id: u64, key: &str) -> Option<(String, String)> {
    let r = c.get(id, key).await.unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    Some((r.text().await.unwrap(), etag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_the_same_bytes_whichever_node_serves_it() {
    let c = cluster(&[]).await;
    let before = terms_and_members(&c).await;
    // Dot segments, an encoded slash and a backslash are part of the key, on every node: the
    // node that forwards must not resolve them into another key.
    for id in c.ids() {
        let body = format!("evil-{id}");
        let r = raw(&c, id, "PUT", "/v1/kv/fw/a/../victim", &[], body.as_bytes()).await;
        assert_eq!(r.status, 200, "node {id}: {r:?}");
        assert_eq!(r.json().unwrap()["key"], "fw/a/../victim");
        let r = raw(
            &c,
            id,
            "PUT",
            "/v1/kv/fw/%2e%2e/x%5Cy",
            &[],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.json().unwrap()["key"], "fw/../x\\y", "node {id}: {r:?}");
    }
    for id in c.ids() {
        assert_eq!(value(&c, id, "fw/victim").await, None, "node {id}");
        let r = raw(&c, id, "GET", "/v1/kv/fw/a/../victim", &[], b"").await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"evil-3"[..]));
    }
    // A key request never reaches another route, through any node.
    for id in c.ids() {
        let r = raw(
            &c,
            id,
            "DELETE",
            "/v1/kv/zz/../../cluster/nodes/3?wait=0",
            &[],
            b"",
        )
        .await;
        expect_error(&r, 400, "invalid_query");
        let r = raw(
            &c,
            id,
            "DELETE",
            "/v1/kv/zz/../../cluster/nodes/3",
            &[],
            b"",
        )
        .await;
        expect_error(&r, 404, "key_not_found");
        let r = raw(&c, id, "GET", "/v1/kv/zz/../../cluster/map", &[], b"").await;
        expect_error(&r, 404, "key_not_found");
    }
    // A '#' in the raw target is refused, not cut.
    for id in c.ids() {
        let r = raw(&c, id, "PUT", "/v1/kv/cut#tail", &[], b"x").await;
        expect_error(&r, 400, "bad_request");
        assert!(r.json().unwrap()["message"].as_str().unwrap().contains('#'));
    }
    assert_eq!(value(&c, 1, "cut").await, None);
    assert_eq!(terms_and_members(&c).await, before);
}

/// A postcard AppendEntries with `term`, as a peer would send it.
fn append_entries(term: u64) -> Vec<u8> {
    let req: openraft::raft::AppendEntriesRequest<kv_raft::TypeConfig> =
        openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term, kv_raft::NodeId(1)),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
    postcard::to_stdvec(&req).unwrap()
}

fn vote(term: u64) -> Vec<u8> {
    let req = openraft::raft::VoteRequest::<kv_raft::NodeId> {
        vote: openraft::Vote::new(term, kv_raft::NodeId(2)),
        last_log_id: None,
    };
    postcard::to_stdvec(&req).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_messages_near_term_overflow_are_refused_and_change_nothing() {
    let c = cluster(&[]).await;
    let r = c.put(1, "before", "v".to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    let before = terms_and_members(&c).await;
    for id in c.ids() {
        for group in 0..=4 {
            for (rpc, body) in [
                ("append", append_entries(u64::MAX - 1)),
                ("vote", vote(u64::MAX - 1)),
                ("timeout-now", postcard::to_stdvec(&u64::MAX).unwrap()),
                ("snapshot", vec![0xff; 64]),
            ] {
                let target = format!("/raft/{group}/{rpc}");
                let r = raw(&c, id, "POST", &target, &[], &body).await;
                expect_error(&r, 400, "bad_request");
            }
        }
    }
    assert_eq!(terms_and_members(&c).await, before, "no term moved");
    for id in c.ids() {
        let r = c.get(id, "before").await.unwrap();
        assert_eq!(r.status(), 200, "node {id} still serves");
        c.wait_ready(id).await.unwrap();
    }
    assert_eq!(
        c.put(2, "after", "v".to_string()).await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_must_be_the_node_it_claims_to_be() {
    let c = cluster(&[]).await;
    let before = terms_and_members(&c).await;
    let node2 = c.node(2).addr.clone();
    let port2 = node2.rsplit_once(':').unwrap().1;
    let join = |id: u64, addr: String| {
        let url = format!("{}/v1/cluster/nodes", c.url(1));
        let http = c.http().clone();
        async move {
            let r = http
                .post(url)
                .json(&serde_json::json!({"id": id, "addr": addr}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // A member's address, under another id.
    let (status, body) = join(9, node2.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("address_in_use")),
        "{body}"
    );
    // The same node under another name: it answers as node 2.
    let (status, body) = join(9, format!("localhost:{port2}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("identity_mismatch")),
        "{body}"
    );
    // Nobody there.
    let (status, body) = join(9, format!("127.0.0.1:{}", kv_node::testing::closed_port())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_member")),
        "{body}"
    );
    assert_eq!(terms_and_members(&c).await, before, "membership unchanged");
    // Health names the node and its cluster.
    let health: kv_client::api::Health = c
        .http()
        .get(format!("{}/health", c.url(2)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health.node, 2);
    assert_eq!(health.cluster_id.as_deref().map(str::len), Some(16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_scans_changes_no_term_and_is_answered_or_shed_as_json() {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            partitions: 16,
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    for i in 0..100 {
        let r = c
            .put(1, &format!("known/{i:03}"), format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Leadership balancing moves leaders (new terms) for a while after start: let it finish,
    // so a term that changes below is the burst's doing.
    c.wait_leaders_balanced(1, Duration::from_secs(60))
        .await
        .unwrap();
    let before = terms_and_members(&c).await;
    let url = format!("{}/v1/kv?prefix=known/&limit=100", c.url(1));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let scans: Vec<_> = (0..1000)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().contains_key("retry-after");
                let body: serde_json::Value = r.json().await.unwrap();
                (status, retry, body)
            })
        })
        .collect();
    let mut answered = BTreeMap::new();
    for scan in scans {
        let (status, retry, body) = scan.await.unwrap();
        match status {
            200 => assert_eq!(body["items"].as_array().unwrap().len(), 100),
            429 | 503 => {
                assert!(retry, "a refusal says when to retry");
                assert!(body["error"].is_string(), "{body}");
            }
            other => panic!("scan answered {other}: {body}"),
        }
        *answered.entry(status).or_insert(0) += 1;
    }
    eprintln!("1000 concurrent scans: {answered:?}");
    assert!(answered.get(&200).is_some_and(|n| *n > 0));
    assert_eq!(terms_and_members(&c).await, before, "no group changed term");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_paged_within_a_byte_budget() {
    let c = cluster(&["--max-scan-bytes", "1048576"]).await;
    // 30 binary values of 100 KiB: 3 MiB in all, over three times the budget.
    let mut written = BTreeMap::new();
    for i in 0..30u8 {
        let value: Vec<u8> = (0..100 * 1024).map(|j| (j as u8) ^ i ^ 0x80).collect();
        let key = format!("big/{i:02}");
        assert_eq!(c.put(2, &key, value.clone()).await.unwrap().status(), 200);
        written.insert(key, value);
    }
    let mut seen = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/v1/kv?prefix=big/&limit=1000", c.url(1));
        if let Some(after) = &cursor {
            url.push_str(&format!("&start_after={after}"));
        }
        let r = c.http().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        // Base64 makes values 4/3 larger; the budget counts raw bytes, plus one row's overshoot.
        assert!(bytes.len() < 1_700_000, "page of {} bytes", bytes.len());
        let page: kv_client::api::ScanResult = serde_json::from_slice(&bytes).unwrap();
        pages += 1;
        for item in &page.items {
            assert!(item.value.is_none(), "binary values are base64");
            assert!(seen
                .insert(item.key.clone(), item.value_bytes().unwrap())
                .is_none());
        }
        if !page.truncated {
            assert_eq!(page.next, None);
            break;
        }
        cursor = page.next.clone();
        assert_eq!(cursor.as_deref(), page.items.last().map(|i| i.key.as_str()));
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen, written, "every key once, in order, with its value");
    let r = c
        .http()
        .get(format!("{}/v1/kv?prefix=big/&keys_only=true", c.url(3)))
        .send()
        .await
        .unwrap();
    let page: kv_client::api::ScanResult = r.json().await.unwrap();
    assert_eq!(page.items.len(), 30);
    assert!(page
        .items
        .iter()
        .all(|i| i.value.is_none() && i.value_b64.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_bodies_are_bounded_in_size_and_time() {
    let c = cluster(&["--client-timeout-ms", "1000"]).await;
    let addr = c.node(1).addr.clone();
    // A declared 100 MB value is refused before anything is read.
    let r = raw_request(
        &addr,
        b"PUT /v1/kv/huge HTTP/1.1\r\nhost: kv\r\nconnection: close\r\ncontent-length: 104857600\r\n\r\n",
        TIMEOUT,
    )
    .await
    .unwrap();
    expect_error(&r, 413, "too_large");
    // A body that never arrives in full: 408 once the client timeout passes.
    let r = raw_request(
        &addr,
        b"PUT /v1/kv/slow HTTP/1.1\r\nhost: kv\r\nconnection: close\r\ncontent-length: 10\r\n\r\n12345",
        TIMEOUT,
    )
    .await
    .unwrap();
    expect_error(&r, 408, "request_timeout");
    assert_eq!(value(&c, 1, "slow").await, None);
    // A head that never ends, and an idle connection: closed by the server.
    for opening in [&b"GET /v1/kv/x HTTP/1.1\r\nhost: kv\r\n"[..], &b""[..]] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the server closed the connection");
    }
    // A peer message declaring 2 GiB, or for a group this node does not host: refused before
    // the body is read.
    let r = raw_request(
        &addr,
        b"POST /raft/1/append HTTP/1.1\r\nhost: kv\r\nconnection: close\r\ncontent-length: 2147483648\r\n\r\n",
        TIMEOUT,
    )
    .await
    .unwrap();
    expect_error(&r, 413, "too_large");
    let r = raw_request(
        &addr,
        b"POST /raft/999/append HTTP/1.1\r\nhost: kv\r\nconnection: close\r\ncontent-length: 268435456\r\n\r\nxxxx",
        TIMEOUT,
    )
    .await
    .unwrap();
    expect_error(&r, 404, "unknown_group");
    assert_eq!(
        c.put(1, "alive", "yes".to_string()).await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_json() {
    let c = cluster(&[]).await;
    let r = raw(&c, 1, "GET", "/v1/kv/t/%FF%FE", &[], b"").await;
    expect_error(&r, 400, "invalid_key");
    let r = raw(&c, 1, "GET", "/v1/kv?prefix=a&limit=1&limit=2", &[], b"").await;
    expect_error(&r, 400, "invalid_query");
    let r = raw(
        &c,
        1,
        "GET",
        "/v1/kv/a?consistency=stale&consistency=stale",
        &[],
        b"",
    )
    .await;
    expect_error(&r, 400, "invalid_query");
    let r = raw(&c, 1, "GET", "/v1/partitions/0/scan?prefix=", &[], b"").await;
    expect_error(&r, 404, "no_route");
    let r = raw(&c, 1, "GET", "/v1/partitions/zz/scan", &[], b"").await;
    expect_error(&r, 404, "no_route");
    // Keys over the limit are the same 413, however long.
    for len in [1025, 16 * 1024, 64 * 1024] {
        let target = format!("/v1/kv/{}", "k".repeat(len));
        let r = raw(&c, 1, "PUT", &target, &[], b"v").await;
        expect_error(&r, 413, "too_large");
    }
    let long = format!("/v2/{}", "x".repeat(70_000));
    expect_error(
        &raw(&c, 1, "GET", &long, &[], b"").await,
        414,
        "uri_too_long",
    );
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    expect_error(
        &raw(&c, 1, "GET", "/health", &many, b"").await,
        431,
        "headers_too_large",
    );
    let r = raw(&c, 1, "BREW", "/v1/kv/a", &[], b"").await;
    expect_error(&r, 405, "method_not_allowed");
    let r = raw(&c, 1, "POST", "/internal/v1/kv", &[], b"\x00\x00\x00").await;
    expect_error(&r, 400, "invalid_forward");
    forwarded_batches_are_checked_op_by_op(&c).await;
}

/// A batch of forwarded operations that does not decode, or holds too many, is refused whole;
/// inside a batch, a bad operation gets its own error and the good ones are served.
async fn forwarded_batches_are_checked_op_by_op(c: &TestCluster) {
    use kv_node::wire::{Forwarded, KeyOp, Precondition};
    use kv_node::wire::{OpAnswer, OpBatch, MAX_BATCH_OPS};
    const PATH: &str = "/internal/v1/kv/batch";
    let r = raw(c, 1, "POST", PATH, &[], b"\x05\x01").await;
    expect_error(&r, 400, "invalid_forward");
    let put = postcard::to_stdvec(&Forwarded {
        hops: 1,
        op: KeyOp::Put {
            key: b"batched".to_vec(),
            value: b"yes".to_vec(),
            cond: Precondition::None,
            session: None,
        },
        caller: None,
        epoch: None,
    })
    .unwrap();
    let too_many = OpBatch {
        ops: vec![put.clone().into(); MAX_BATCH_OPS + 1],
    };
    let r = raw(
        c,
        1,
        "POST",
        PATH,
        &[],
        &postcard::to_stdvec(&too_many).unwrap(),
    )
    .await;
    expect_error(&r, 400, "invalid_forward");
    assert_eq!(
        value(c, 1, "batched").await,
        None,
        "a refused batch wrote nothing"
    );

    let mixed = OpBatch {
        ops: vec![b"\x00\x00\x00".to_vec().into(), put.into()],
    };
    let r = c
        .http()
        .post(format!("{}{PATH}", c.url(1)))
        .body(postcard::to_stdvec(&mixed).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    // The body is frames: a little-endian u32 length, then a postcard answer.
    let mut answers = Vec::new();
    let mut rest = &body[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let answer: OpAnswer = postcard::from_bytes(&rest[4..4 + len]).unwrap();
        answers.push(answer);
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty());
    answers.sort_by_key(|a| a.index);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].status, 400);
    let error: serde_json::Value = serde_json::from_slice(&answers[0].body).unwrap();
    assert_eq!(error["error"], "invalid_forward");
    assert_eq!(
        answers[1].status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answers[1].body)
    );
    assert_eq!(value(c, 1, "batched").await.unwrap().0, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_is_parsed_strictly() {
    let c = cluster(&[]).await;
    let r = c.put(1, "cas", "orig".to_string()).await.unwrap();
    let version: u64 = r.json::<serde_json::Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    let quoted = format!("\"{version}\"");
    let plus = format!("\"+{version}\"");
    let triple = format!("\"\"\"{version}");
    let weak = format!("W/\"{version}\"");
    for bad in [
        plus.as_str(),
        triple.as_str(),
        weak.as_str(),
        "\"1\", \"2\"",
    ] {
        let r = raw(&c, 2, "PUT", "/v1/kv/cas", &[("if-match", bad)], b"changed").await;
        expect_error(&r, 400, "invalid_precondition");
    }
    assert_eq!(value(&c, 1, "cas").await.unwrap().0, "orig");
    let r = raw(
        &c,
        2,
        "PUT",
        "/v1/kv/cas",
        &[("if-match", quoted.as_str())],
        b"new",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    wait_until(TIMEOUT, "the write is readable", || async {
        Ok((value(&c, 3, "cas").await.map(|v| v.0).as_deref() == Some("new")).then_some(()))
    })
    .await
    .unwrap();
}
