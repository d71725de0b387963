//! Nobody gets in who does not belong: TLS for clients, node certificates between peers (or
//! at least a cluster secret), and client tokens with roles and key prefixes. Real processes,
//! real TLS on loopback, certificates made in the test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kv_node::auth::hash_token;
use kv_node::testing::{
    raw_request, tls_request, wait_until, CertFiles, ClusterOptions, RawResponse, TestCa,
    TestCluster, TlsClient,
};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(opts: ClusterOptions) -> TestCluster {
    TestCluster::start_with(Path::new(env!("CARGO_BIN_EXE_kv-node")), opts)
        .await
        .unwrap()
}

fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
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
    bytes
}

/// Every group's term, as each node sees it.
async fn terms(c: &TestCluster) -> BTreeMap<(u64, Option<u32>), u64> {
    let mut out = BTreeMap::new();
    for id in c.ids() {
        let r = c
            .http()
            .get(format!("{}/v1/cluster?scope=local", c.url(id)))
            .send()
            .await
            .unwrap();
        let s: kv_client::api::ClusterStatus = r.json().await.unwrap();
        for g in s.groups {
            out.insert((id, g.partition), g.term);
        }
    }
    out
}

fn append_entries(term: u64) -> Vec<u8> {
    let req: openraft::raft::AppendEntriesRequest<kv_raft::TypeConfig> =
        openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term, kv_raft::NodeId(1)),
            prev_log_id: None,
            entries: vec![openraft::Entry {
                log_id: openraft::LogId::new(
                    openraft::CommittedLeaderId::new(term, kv_raft::NodeId(1)),
                    0,
                ),
                payload: openraft::EntryPayload::Blank,
            }],
            leader_commit: None,
        };
    postcard::to_stdvec(&req).unwrap()
}

fn vote(term: u64) -> Vec<u8> {
    postcard::to_stdvec(&openraft::raft::VoteRequest::<kv_raft::NodeId> {
        vote: openraft::Vote::new(term, kv_raft::NodeId(9)),
        last_log_id: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_https_and_refuses_plain_http() {
    let c = start(ClusterOptions {
        partitions: 4,
        tls: true,
        ..ClusterOptions::default()
    })
    .await;
    // Writes through one node, reads through every other: forwarding runs over mTLS.
    for i in 0..20 {
        let r = c
            .put(1 + i % 3, &format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for id in c.ids() {
        for i in 0..20 {
            let r = c.get(id, &format!("k{i}")).await.unwrap();
            assert_eq!(r.text().await.unwrap(), format!("v{i}"), "node {id}");
        }
    }
    let scan: kv_client::api::ScanResult = c
        .http()
        .get(format!("{}/v1/kv?prefix=k", c.url(2)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(scan.items.len(), 20);
    // curl with the CA, as an operator would.
    let ca = c.ca().unwrap().cert_file.clone();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .arg(format!("{}/v1/kv/k3", c.url(3)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"v3");
    // Plain HTTP to the TLS port gets no answer.
    let plain = raw_request(
        &c.node(1).addr,
        &request("GET", "/v1/kv/k3", &[], b""),
        TIMEOUT,
    )
    .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}

/// A peer RPC sent by an outsider, over TLS with `identity` (or none): its status.
async fn outsider(
    c: &TestCluster,
    ca: &Path,
    identity: Option<&CertFiles>,
    req: &[u8],
) -> Option<RawResponse> {
    let client = TlsClient { ca, identity };
    tls_request(&c.node(2).addr, &client, req, TIMEOUT)
        .await
        .ok()
        .map(|(r, _)| r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_cannot_forge_peer_messages() {
    let c = start(ClusterOptions {
        partitions: 2,
        tls: true,
        ..ClusterOptions::default()
    })
    .await;
    assert_eq!(
        c.put(1, "kept", "v".to_string()).await.unwrap().status(),
        200
    );
    let before = terms(&c).await;
    let ca = c.ca().unwrap();
    let certs = ca.cert_file.parent().unwrap().to_path_buf();
    let other_ca = TestCa::new(&certs.join("other"), "other-ca").unwrap();
    let stranger_ca = other_ca.node(1, &["127.0.0.1"], "forged-node-1").unwrap();
    let client = ca.client("app", "client-app").unwrap();
    let not_member = ca.node(9, &["127.0.0.1"], "node-9").unwrap();
    let term = before.values().max().copied().unwrap_or(1);
    let forged: [(&str, Vec<u8>); 4] = [
        ("/raft/1/append", append_entries(term)),
        ("/raft/1/vote", vote(term + 1000)),
        ("/raft/1/timeout-now", postcard::to_stdvec(&term).unwrap()),
        ("/internal/v1/kv", vec![1, 0, 3, b'k', b'e', b'y', 0, 0]),
    ];
    for (target, body) in &forged {
        let req = request("POST", target, &[], body);
        // No certificate: 401.
        let r = outsider(&c, &ca.cert_file, None, &req).await.unwrap();
        assert_eq!(
            (r.status, r.json().unwrap()["error"].clone()),
            (401, "unauthorized".into()),
            "{target}"
        );
        // A client certificate of the right CA is not a node certificate: 401.
        let r = outsider(&c, &ca.cert_file, Some(&client), &req)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{target} with a client certificate: {r:?}");
        // A node certificate of a node that is not a member: 403.
        let r = outsider(&c, &ca.cert_file, Some(&not_member), &req)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.json().unwrap()["error"].clone()),
            (403, "forbidden".into()),
            "{target}"
        );
        // A certificate of another CA: the handshake fails.
        assert!(
            outsider(&c, &ca.cert_file, Some(&stranger_ca), &req)
                .await
                .is_none(),
            "{target}"
        );
    }
    // The cluster's own view needs peer credentials too.
    let r = outsider(
        &c,
        &ca.cert_file,
        Some(&client),
        &request("GET", "/internal/v1/view", &[], b""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(terms(&c).await, before, "no term moved");
    for id in c.ids() {
        let r = c.get(id, "kept").await.unwrap();
        assert_eq!(r.text().await.unwrap(), "v", "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_a_cluster_secret_guards_the_peer_routes() {
    let c = start(ClusterOptions {
        partitions: 2,
        peer_token: true,
        ..ClusterOptions::default()
    })
    .await;
    assert_eq!(
        c.put(1, "kept", "v".to_string()).await.unwrap().status(),
        200
    );
    let before = terms(&c).await;
    let term = before.values().max().copied().unwrap_or(1);
    for (target, body) in [
        ("/raft/1/append", append_entries(term)),
        ("/raft/1/vote", vote(term + 1000)),
        ("/raft/1/timeout-now", postcard::to_stdvec(&term).unwrap()),
    ] {
        for headers in [vec![], vec![("x-kv-peer-token", "wrong-wrong-wrong-wrong")]] {
            let r = raw_request(
                &c.node(2).addr,
                &request("POST", target, &headers, &body),
                TIMEOUT,
            )
            .await
            .unwrap();
            assert_eq!(r.status, 401, "{target} {headers:?}: {r:?}");
            assert_eq!(r.json().unwrap()["error"], "unauthorized");
        }
    }
    assert_eq!(terms(&c).await, before, "no term moved");
    // The members themselves, holding the secret, replicate and forward as usual.
    for id in c.ids() {
        assert_eq!(
            c.put(id, &format!("via{id}"), "x".to_string())
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(c.get(id, "kept").await.unwrap().text().await.unwrap(), "v");
    }
}

fn auth_file() -> String {
    format!(
        r#"
[[token]]
name = "admin"
hash = "{}"
role = "admin"

[[token]]
name = "reader"
hash = "{}"
role = "readonly"

[[token]]
name = "app"
hash = "{}"
role = "readwrite"
prefixes = ["app/"]
"#,
        hash_token("admin-secret"),
        hash_token("reader-secret"),
        hash_token("app-secret")
    )
}

async fn call(
    c: &TestCluster,
    id: u64,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", c.url(id)))
        .body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_limited_to_their_role_and_prefixes_on_every_node() {
    use reqwest::Method;
    let c = start(ClusterOptions {
        partitions: 4,
        peer_token: true,
        auth_file: Some(auth_file()),
        token: Some("admin-secret".into()),
        ..ClusterOptions::default()
    })
    .await;
    assert_eq!(
        c.put(1, "other/x", "theirs".to_string())
            .await
            .unwrap()
            .status(),
        200
    );
    for id in c.ids() {
        // No token, or an unknown one: 401 JSON.
        for token in [None, Some("guess")] {
            let (status, body) = call(&c, id, Method::GET, "/v1/kv/other/x", token, "").await;
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("unauthorized")),
                "{body}"
            );
        }
        let (status, _) = call(&c, id, Method::PUT, "/v1/kv/app/anon", None, "v").await;
        assert_eq!(status, 401);
        // Read-only: reads, not writes.
        let (status, _) = call(
            &c,
            id,
            Method::GET,
            "/v1/kv/other/x",
            Some("reader-secret"),
            "",
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = call(
            &c,
            id,
            Method::PUT,
            "/v1/kv/other/x",
            Some("reader-secret"),
            "v",
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
        // Limited to app/: its own keys, not others'.
        let key = format!("/v1/kv/app/{id}");
        let (status, _) = call(&c, id, Method::PUT, &key, Some("app-secret"), "mine").await;
        assert_eq!(status, 200, "node {id}");
        for (method, path) in [
            (Method::GET, "/v1/kv/other/x"),
            (Method::PUT, "/v1/kv/other/x"),
            (Method::DELETE, "/v1/kv/other/x"),
            (Method::GET, "/v1/kv?prefix=other/"),
        ] {
            let (status, body) = call(&c, id, method.clone(), path, Some("app-secret"), "no").await;
            assert_eq!(status, 403, "{method} {path} on node {id}: {body}");
        }
        // A scan of everything shows it only its own keys.
        let (status, body) = call(
            &c,
            id,
            Method::GET,
            "/v1/kv?prefix=",
            Some("app-secret"),
            "",
        )
        .await;
        assert_eq!(status, 200);
        let keys: Vec<&str> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        assert!(
            !keys.is_empty() && keys.iter().all(|k| k.starts_with("app/")),
            "{keys:?}"
        );
        // Only admins change membership.
        for token in ["reader-secret", "app-secret"] {
            let (status, _) = call(
                &c,
                id,
                Method::DELETE,
                "/v1/cluster/nodes/3?wait=0",
                Some(token),
                "",
            )
            .await;
            assert_eq!(status, 403);
            let (status, _) = call(
                &c,
                id,
                Method::POST,
                "/v1/cluster/nodes",
                Some(token),
                r#"{"id":9,"addr":"127.0.0.1:1"}"#,
            )
            .await;
            assert!(
                status == 403 || status == 400,
                "join with {token}: {status}"
            );
        }
        // Health is open; readiness and status need a token.
        assert_eq!(call(&c, id, Method::GET, "/health", None, "").await.0, 200);
        assert_eq!(call(&c, id, Method::GET, "/ready", None, "").await.0, 401);
        assert_eq!(
            call(&c, id, Method::GET, "/ready", Some("reader-secret"), "")
                .await
                .0,
            200
        );
        assert_eq!(
            call(&c, id, Method::GET, "/v1/cluster", None, "").await.0,
            401
        );
    }
    // Nothing the refused requests tried changed anything.
    let r = c.get(2, "other/x").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "theirs");
    assert_eq!(c.status(1).await.unwrap().members.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_without_a_restart() {
    let c = start(ClusterOptions {
        partitions: 2,
        tls: true,
        ..ClusterOptions::default()
    })
    .await;
    let ca = c.ca().unwrap();
    let client = TlsClient {
        ca: &ca.cert_file,
        identity: None,
    };
    let health = request("GET", "/health", &[], b"");
    let (_, before) = tls_request(&c.node(1).addr, &client, &health, TIMEOUT)
        .await
        .unwrap();
    // New key and certificate in the same files, then SIGHUP.
    ca.node(1, &["127.0.0.1", "localhost"], "node-1").unwrap();
    c.hup(1).unwrap();
    wait_until(TIMEOUT, "the new certificate is served", || async {
        let (_, now) = tls_request(&c.node(1).addr, &client, &health, TIMEOUT).await?;
        Ok((now != before).then_some(()))
    })
    .await
    .unwrap();
    // Peers still accept it (it presents the new one to them too) and the cluster serves.
    for i in 0..10 {
        let r = c
            .put(1 + i % 3, &format!("after/{i}"), "x".to_string())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for id in c.ids() {
        assert_eq!(
            c.get(id, "after/0").await.unwrap().status(),
            200,
            "node {id}"
        );
    }
}

/// Wait until the members `/v1/cluster` lists are every node, at its client address.
async fn wait_client_addresses_listed(c: &TestCluster) {
    let want: BTreeMap<u64, String> = c
        .ids()
        .into_iter()
        .map(|id| (id, c.node(id).addr.clone()))
        .collect();
    wait_until(TIMEOUT, "the map lists every client address", || async {
        let listed: BTreeMap<u64, String> = c
            .status(1)
            .await?
            .members
            .into_iter()
            .map(|m| (m.id, m.addr))
            .collect();
        Ok((listed == want).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_can_listen_on_an_address_of_their_own() {
    let mut c = start(ClusterOptions {
        partitions: 4,
        tls: true,
        peer_listener: true,
        ..ClusterOptions::default()
    })
    .await;
    let ca = c.ca().unwrap();
    let ca_file = ca.cert_file.clone();
    let member = ca.node(1, &["127.0.0.1"], "node-1-again").unwrap();

    // Every member publishes where clients reach it; the map lists those addresses.
    wait_client_addresses_listed(&c).await;

    // Keys of every partition, written and read through every node's client listener: the
    // nodes forward to each other over their peer listeners.
    for id in c.ids() {
        for k in 0..8 {
            let key = format!("apart-{id}-{k}");
            assert_eq!(c.put(id, &key, key.clone()).await.unwrap().status(), 200);
        }
    }
    for id in c.ids() {
        for k in 0..8 {
            let key = format!("apart-{}-{k}", 1 + (id % 3));
            assert_eq!(c.get(id, &key).await.unwrap().text().await.unwrap(), key);
        }
    }
    // kv-client routes by the published addresses.
    let client = kv_client::Client::builder()
        .endpoints(vec![c.url(2)])
        .ca_cert_pem(std::fs::read(&ca_file).unwrap())
        .build()
        .unwrap();
    for k in 0..8 {
        let key = format!("via-client-{k}");
        client.put(&key, "yes").await.unwrap();
        let got = client.get(&key).await.unwrap().unwrap();
        assert_eq!(got.data.as_ref(), b"yes");
    }

    let tls = |identity| TlsClient {
        ca: &ca_file,
        identity,
    };
    let append = request("POST", "/raft/1/append", &[], &append_entries(1));
    let health = request("GET", "/health", &[], b"");
    let get = request("GET", "/v1/kv/apart-1-0", &[], b"");
    // The client listener has no peer routes, even for a member's node certificate.
    let (r, _) = tls_request(&c.node(2).addr, &tls(Some(&member)), &append, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["error"].clone()),
        (404, "no_route".into())
    );
    // The peer listener takes no connection without a node certificate, and has no client
    // routes.
    let peer_addr = c.node(2).peer_addr.clone().unwrap();
    assert!(tls_request(&peer_addr, &tls(None), &health, TIMEOUT)
        .await
        .is_err());
    let (r, _) = tls_request(&peer_addr, &tls(Some(&member)), &get, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    let (r, _) = tls_request(&peer_addr, &tls(Some(&member)), &health, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // A node that joins with a listener of its own for peers: it is reached at both.
    let id = c.add_node(1).await.unwrap();
    wait_client_addresses_listed(&c).await;
    assert_eq!(
        c.get(id, "apart-1-0").await.unwrap().text().await.unwrap(),
        "apart-1-0"
    );
}
