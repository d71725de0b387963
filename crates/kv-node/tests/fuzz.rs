//! Bounded fuzzing through the real HTTP stack of a 3-node cluster: valid requests of every
//! route, mutated (paths, queries, methods, headers, bodies, sizes), sent byte for byte. Every
//! answer must be a success, or a JSON error with a 4xx or 503 status; none may hang past the
//! client and request timeouts; no node may log a panic; and 100 keys written before must be
//! unchanged (values and versions) after. Half the requests come from a fixed seed, half from
//! a random one, printed so that a failure can be replayed (`KV_FUZZ_SEED=...`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kv_node::testing::{raw_request, ClusterOptions, TestCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REQUESTS: usize = 5000;
const WORKERS: usize = 16;
const FIXED_SEED: u64 = 0x6b76_2d66_757a_7a31;
/// Client timeout of the nodes: a body that never arrives is answered 408 after it.
const CLIENT_TIMEOUT_MS: u64 = 1000;
/// Longest a request may take: the client timeout, a request timeout, forwarding slack.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);

/// A request before mutation.
#[derive(Clone)]
struct Template {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn templates(rng: &mut StdRng) -> Vec<Template> {
    let key = format!("fz/{}", rng.random_range(0..50));
    let t =
        |method: &'static str, target: String, headers: &[(&str, &str)], body: &[u8]| Template {
            method,
            target,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        };
    let version = rng.random_range(0..500u32).to_string();
    let quoted = format!("\"{version}\"");
    let forwarded = forwarded_op(rng, &key);
    vec![
        t("PUT", format!("/v1/kv/{key}"), &[], b"value"),
        t(
            "PUT",
            format!("/v1/kv/{key}"),
            &[("if-none-match", "*")],
            b"created",
        ),
        t(
            "PUT",
            format!("/v1/kv/{key}"),
            &[("if-match", &quoted)],
            b"swapped",
        ),
        t(
            "PUT",
            format!("/v1/kv/{key}"),
            &[("x-kv-client-id", "77"), ("x-kv-request-seq", &version)],
            b"once",
        ),
        t("GET", format!("/v1/kv/{key}"), &[], b""),
        t("GET", format!("/v1/kv/{key}?consistency=stale"), &[], b""),
        t(
            "DELETE",
            format!("/v1/kv/{key}"),
            &[("if-match", &quoted)],
            b"",
        ),
        t(
            "GET",
            "/v1/kv?prefix=fz/&limit=10&start_after=fz/1".into(),
            &[],
            b"",
        ),
        t(
            "GET",
            "/v1/kv?prefix=fz/&keys_only=true&consistency=stale".into(),
            &[],
            b"",
        ),
        t("GET", "/v1/cluster".into(), &[], b""),
        t("GET", "/v1/cluster?scope=local".into(), &[], b""),
        t("GET", "/v1/cluster/map".into(), &[], b""),
        t(
            "POST",
            "/v1/cluster/nodes".into(),
            &[("content-type", "application/json")],
            br#"{"id":7,"addr":"127.0.0.1:9"}"#,
        ),
        // Refused on 3 nodes with 3 replicas (too few members), whatever the mutation.
        t("DELETE", "/v1/cluster/nodes/2?wait=0".into(), &[], b""),
        t("GET", "/health".into(), &[], b""),
        t("GET", "/ready".into(), &[], b""),
        t("GET", "/metrics".into(), &[], b""),
        t(
            "POST",
            format!("/raft/{}/append", rng.random_range(0..6)),
            &[],
            &garbage(rng),
        ),
        t(
            "POST",
            format!("/raft/{}/vote", rng.random_range(0..6)),
            &[],
            &garbage(rng),
        ),
        t("POST", "/raft/1/snapshot".into(), &[], &garbage(rng)),
        t("POST", "/raft/1/timeout-now".into(), &[], &garbage(rng)),
        t("POST", "/internal/v1/kv".into(), &[], &forwarded),
        t("POST", "/internal/v1/kv".into(), &[], &garbage(rng)),
        t(
            "POST",
            "/internal/v1/kv/batch".into(),
            &[],
            &batch_of(&forwarded),
        ),
        t("POST", "/internal/v1/kv/batch".into(), &[], &garbage(rng)),
    ]
}

fn garbage(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(0..64);
    (0..len).map(|_| rng.random()).collect()
}

/// A valid forwarded operation on `key` (mutated later like everything else).
fn forwarded_op(rng: &mut StdRng, key: &str) -> Vec<u8> {
    use kv_node::wire::{Forwarded, KeyOp, Precondition};
    let op = match rng.random_range(0..3) {
        0 => KeyOp::Get {
            key: key.as_bytes().to_vec(),
            stale: rng.random(),
        },
        1 => KeyOp::Put {
            key: key.as_bytes().to_vec(),
            value: b"forwarded".to_vec(),
            cond: Precondition::None,
            session: None,
        },
        _ => KeyOp::Delete {
            key: key.as_bytes().to_vec(),
            cond: Precondition::None,
            session: None,
        },
    };
    postcard::to_stdvec(&Forwarded {
        hops: 1,
        op,
        caller: None,
        epoch: None,
    })
    .unwrap()
}

/// A batch of forwarded operations holding `op` (and a copy of it).
fn batch_of(op: &[u8]) -> Vec<u8> {
    use kv_node::wire::OpBatch;
    postcard::to_stdvec(&OpBatch {
        ops: vec![op.to_vec().into(), op.to_vec().into()],
    })
    .unwrap()
}

/// Bytes that make trouble in paths, queries and headers.
const NASTY: &[&str] = &[
    "%",
    "%zz",
    "%FF",
    "%00",
    "#",
    "..",
    "/../",
    "\\",
    "?",
    "&",
    "=",
    "&limit=2",
    "&limit=0",
    "&consistency=x",
    "%2F",
    "%2e%2e",
    "'",
    "\"",
    "<",
    "\u{e9}",
    "\u{1F600}",
    " ",
    "\t",
    "*",
];

fn mutate(rng: &mut StdRng, mut t: Template) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..10) {
            0 => {
                let at = rng.random_range(0..=t.target.len());
                let at = (0..=at)
                    .rev()
                    .find(|i| t.target.is_char_boundary(*i))
                    .unwrap_or(0);
                t.target
                    .insert_str(at, NASTY[rng.random_range(0..NASTY.len())]);
            }
            1 => {
                // Keep at least the first character, and cut only between characters.
                let cut = rng.random_range(1..=t.target.len().max(1));
                let first = t.target.chars().next().map_or(0, char::len_utf8);
                let cut = (first..=cut.max(first))
                    .rev()
                    .find(|i| t.target.is_char_boundary(*i))
                    .unwrap_or(first);
                t.target.truncate(cut);
            }
            2 => {
                let len = [10, 1024, 1100, 20_000, 70_000][rng.random_range(0..5)];
                t.target.push_str(&"k".repeat(len));
            }
            3 => {
                t.method = ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "BREW"]
                    [rng.random_range(0..7)];
            }
            4 => {
                let value = match rng.random_range(0..6) {
                    0 => "\"+5\"".to_string(),
                    1 => "W/\"1\"".to_string(),
                    2 => "*".to_string(),
                    3 => format!("\"{}\"", rng.random::<u64>()),
                    4 => "\"1\", \"2\"".to_string(),
                    _ => String::from_utf8_lossy(&garbage(rng)).replace(['\r', '\n'], ""),
                };
                let name = [
                    "if-match",
                    "if-none-match",
                    "x-kv-client-id",
                    "x-kv-request-seq",
                ][rng.random_range(0..4)];
                t.headers.push((name.to_string(), value));
            }
            5 => t.body = garbage(rng),
            6 => t
                .body
                .extend(std::iter::repeat_n(b'x', rng.random_range(0..4096))),
            7 if !t.body.is_empty() => {
                let i = rng.random_range(0..t.body.len());
                t.body[i] = rng.random();
            }
            8 => t
                .headers
                .push(("content-type".into(), "application/json".into())),
            _ => t.headers.clear(),
        }
    }
    let mut req = format!(
        "{} {} HTTP/1.1\r\nhost: kv\r\nconnection: close\r\n",
        t.method, t.target
    );
    for (name, value) in &t.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    // Sometimes the declared length is not the body's.
    let declared = match rng.random_range(0..20) {
        0 => t.body.len() + 5,
        1 => t.body.len().saturating_sub(1),
        _ => t.body.len(),
    };
    req.push_str(&format!("content-length: {declared}\r\n\r\n"));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&t.body);
    bytes
}

async fn fuzz(c: Arc<TestCluster>, seed: u64, requests: usize) {
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let c = c.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            for n in 0..requests / WORKERS {
                let all = templates(&mut rng);
                let template = all[rng.random_range(0..all.len())].clone();
                let request = mutate(&mut rng, template);
                let id = rng.random_range(1..=3);
                let shown =
                    String::from_utf8_lossy(&request[..request.len().min(300)]).into_owned();
                let answer = raw_request(&c.node(id).addr, &request, ANSWER_WITHIN)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("seed {seed} worker {w} request {n} to node {id}: {e:#}\n{shown}")
                    });
                let ok = (200..300).contains(&answer.status);
                let refused = (400..500).contains(&answer.status) || answer.status == 503;
                assert!(
                    ok || refused,
                    "seed {seed}: status {} for\n{shown}\n{answer:?}",
                    answer.status
                );
                if refused {
                    let json = answer
                        .header("content-type")
                        .is_some_and(|t| t.starts_with("application/json"));
                    let body = answer.json();
                    assert!(
                        json && body.as_ref().is_some_and(|b| b["error"].is_string()),
                        "seed {seed}: not a JSON error for\n{shown}\n{answer:?}"
                    );
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_of_every_route_get_json_answers_and_change_no_kept_key() {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            partitions: 4,
            extra_args: vec!["--client-timeout-ms".into(), CLIENT_TIMEOUT_MS.to_string()],
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    let mut kept = Vec::new();
    for i in 0..100 {
        let key = format!("keep/{i}");
        let r = c.put(1 + i % 3, &key, format!("kept-{i}")).await.unwrap();
        assert_eq!(r.status(), 200);
        let version = r.json::<serde_json::Value>().await.unwrap()["version"]
            .as_u64()
            .unwrap();
        kept.push((key, format!("kept-{i}"), version));
    }
    let random: u64 = std::env::var("KV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "fuzz seeds: fixed {FIXED_SEED}, random {random} (replay with KV_FUZZ_SEED={random})"
    );
    let c = Arc::new(c);
    fuzz(c.clone(), FIXED_SEED, REQUESTS / 2).await;
    fuzz(c.clone(), random, REQUESTS / 2).await;

    for id in c.ids() {
        let log = c.log(id);
        assert!(
            !log.contains("panicked"),
            "node {id} logged a panic:\n{}",
            c.log_tail(id, 40)
        );
    }
    for id in c.ids() {
        for (key, value, version) in &kept {
            let r = c.get(id, key).await.unwrap();
            assert_eq!(r.status(), 200, "node {id} {key}");
            let etag = r.headers()["etag"].to_str().unwrap().to_string();
            assert_eq!(etag, format!("\"{version}\""), "node {id} {key}");
            assert_eq!(&r.text().await.unwrap(), value);
        }
        c.wait_ready(id).await.unwrap();
    }
}
