//! Partitioning end to end: keys live on exactly their partition's replicas, a lost quorum
//! fails only the partitions that lost it, and a scan merges every partition in key order.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use kv_client::api::{
    ErrorBody, ScanResult, WriteResult, HEADER_CONSISTENCY, HEADER_NODE, HEADER_PARTITION,
};
use kv_node::testing::{wait_until, ClusterOptions, TestCluster};
use kv_ring::partition_of;
use rand::Rng;
use serde::de::DeserializeOwned;

/// Requests in flight at once when a test sends many.
const IN_FLIGHT: usize = 16;
/// How long a partition may take to elect a new leader after a node dies.
const ELECTION: Duration = Duration::from_secs(10);
/// How long a follower may take to apply what its leader committed.
const CATCH_UP: Duration = Duration::from_secs(10);

async fn start(nodes: usize, partitions: u32, replication_factor: u32) -> Result<TestCluster> {
    TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes,
            partitions,
            replication_factor,
            ..Default::default()
        },
    )
    .await
}

/// An HTTP answer, read in full, with the headers these tests look at.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `x-kv-node`: the node that served the request after any forwarding.
    node: Option<u64>,
    /// `x-kv-partition`: the partition that served it.
    partition: Option<u32>,
    consistency: Option<String>,
    etag: Option<String>,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    async fn of(resp: reqwest::Response) -> Result<Answer> {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let node = header(HEADER_NODE).map(|v| v.parse()).transpose()?;
        let partition = header(HEADER_PARTITION).map(|v| v.parse()).transpose()?;
        let consistency = header(HEADER_CONSISTENCY);
        let etag = header("etag");
        let retry_after = header("retry-after");
        let status = resp.status().as_u16();
        let body = resp.bytes().await?.to_vec();
        Ok(Answer {
            status,
            node,
            partition,
            consistency,
            etag,
            retry_after,
            body,
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "answer {} is not the expected JSON: {}",
                self.status,
                self.text()
            )
        })
    }

    /// One line describing the answer, for failure messages.
    fn describe(&self) -> String {
        format!(
            "{} from node {:?} (partition {:?}, retry-after {:?}): {}",
            self.status,
            self.node,
            self.partition,
            self.retry_after,
            self.text()
        )
    }
}

async fn put(c: &TestCluster, via: u64, key: &str, value: &str) -> Result<Answer> {
    Answer::of(c.put(via, key, value.to_string()).await?).await
}

async fn get(c: &TestCluster, via: u64, key: &str) -> Result<Answer> {
    Answer::of(c.get(via, key).await?).await
}

async fn get_stale(c: &TestCluster, via: u64, key: &str) -> Result<Answer> {
    Answer::of(c.get_stale(via, key).await?).await
}

/// `GET /v1/kv?<query>` on node `via`; a 503 is retried (see [`until_not_503`]).
async fn scan(c: &TestCluster, via: u64, query: &[(&str, &str)]) -> Result<Answer> {
    let mut qs = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        qs.append_pair(k, v);
    }
    let url = &format!("{}/v1/kv?{}", c.url(via), qs.finish());
    until_not_503(&format!("GET {url}"), || async move {
        Answer::of(c.http().get(url).send().await?).await
    })
    .await
}

/// Send a request until it is answered with something other than 503. On a healthy cluster a
/// partition can still change leader (a starved 2-core machine running several clusters misses
/// heartbeats), and the contract for that is 503 with `Retry-After`: the caller retries. Each
/// 503 is still checked for that shape and logged, so the run shows how often it happened.
async fn until_not_503<F, Fut>(what: &str, mut send: F) -> Result<Answer>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Answer>>,
{
    wait_until(
        ELECTION,
        &format!("{what} to answer other than 503"),
        || {
            let sent = send();
            async move {
                let a = sent.await?;
                if a.status != 503 {
                    return Ok(Some(a));
                }
                check_unavailable(&a, what)?;
                eprintln!("retrying after 503: {what}: {}", a.describe());
                bail!("last answer {}", a.describe())
            }
        },
    )
    .await
}

/// `PUT` that must succeed now; returns the version written.
async fn put_ok(c: &TestCluster, via: u64, key: &str, value: &str) -> Result<u64> {
    let what = format!("PUT {key} via node {via}");
    let a = until_not_503(&what, || put(c, via, key, value)).await?;
    ensure!(
        a.status == 200,
        "PUT {key} via node {via}: {}",
        a.describe()
    );
    let w: WriteResult = a.json()?;
    ensure!(w.key == key, "PUT {key} answered for key {:?}", w.key);
    Ok(w.version)
}

/// Every partition's replicas as `/v1/cluster` lists them (preferred leader first), checked to
/// be the same on every running node.
async fn replica_sets(c: &TestCluster) -> Result<BTreeMap<u32, Vec<u64>>> {
    let mut agreed: Option<(u64, BTreeMap<u32, Vec<u64>>)> = None;
    for id in c.running() {
        let status = c.status(id).await?;
        let mut sets = BTreeMap::new();
        for g in &status.groups {
            if let Some(p) = g.partition {
                sets.insert(p, g.replicas.clone());
            }
        }
        ensure!(
            sets.len() == status.partitions as usize,
            "node {id} lists {} partitions of {}",
            sets.len(),
            status.partitions
        );
        match &agreed {
            None => agreed = Some((id, sets)),
            Some((first, theirs)) => ensure!(
                *theirs == sets,
                "nodes {first} and {id} disagree on replica sets:\n{theirs:?}\n{sets:?}"
            ),
        }
    }
    agreed
        .map(|(_, sets)| sets)
        .ok_or_else(|| anyhow!("no node is running"))
}

/// Run every check at once and fail with the list of those that failed, so one run shows the
/// whole pattern (which partitions, which nodes) instead of only the first failure.
async fn all_hold<F>(what: &str, checks: Vec<F>) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    let total = checks.len();
    let failures: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("  - {e:#}")))
        .collect();
    ensure!(
        failures.is_empty(),
        "{what}: {} of {total} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Wait until `PUT key=value` via `via` answers 200 (an election may be running).
async fn put_eventually(c: &TestCluster, via: u64, key: &str, value: &str) -> Result<()> {
    wait_until(
        ELECTION,
        &format!("PUT {key} via node {via} to answer 200"),
        || async move {
            let a = put(c, via, key, value).await?;
            if a.status == 200 {
                Ok(Some(()))
            } else {
                bail!("last answer {}", a.describe())
            }
        },
    )
    .await
}

/// Wait until a linearizable read of `key` via `via` answers 200 with `value`.
async fn read_eventually(c: &TestCluster, via: u64, key: &str, value: &str) -> Result<()> {
    wait_until(
        ELECTION,
        &format!("GET {key} via node {via} to answer {value:?}"),
        || async move {
            let a = get(c, via, key).await?;
            if a.status == 200 && a.body == value.as_bytes() {
                Ok(Some(()))
            } else {
                bail!("last answer {}", a.describe())
            }
        },
    )
    .await
}

/// The answer must be the 503 a client can act on: `Retry-After` and a JSON `unavailable` body.
fn check_unavailable(a: &Answer, what: &str) -> Result<()> {
    ensure!(
        a.status == 503,
        "{what}: expected 503, got {}",
        a.describe()
    );
    ensure!(
        a.retry_after.is_some(),
        "{what}: 503 without Retry-After: {}",
        a.describe()
    );
    let body: ErrorBody = a
        .json()
        .with_context(|| format!("{what}: 503 body is not a JSON error"))?;
    ensure!(
        body.error == "unavailable",
        "{what}: error code {:?}, expected \"unavailable\": {}",
        body.error,
        a.describe()
    );
    Ok(())
}

/// For each of `partitions` and each running node, write a fresh value to that pair's key
/// through that node (waiting out elections) and read it back through the same node.
/// Returns the acknowledged writes.
async fn writes_work(
    c: &TestCluster,
    key_of: &BTreeMap<(u32, u64), String>,
    sets: &BTreeMap<u32, Vec<u64>>,
    partitions: &[u32],
    stage: &str,
) -> Result<Vec<(String, String)>> {
    let mut checks = Vec::new();
    let mut written = Vec::new();
    for p in partitions.iter().copied() {
        for n in c.running() {
            let key = &key_of[&(p, n)];
            let value = format!("{stage}: p{p} n{n}");
            written.push((key.clone(), value.clone()));
            let what = format!("partition {p} (replicas {:?}) via node {n}", sets[&p]);
            checks.push(labelled(what, async move {
                put_eventually(c, n, key, &value).await?;
                read_eventually(c, n, key, &value).await
            }));
        }
    }
    all_hold(
        &format!("{stage}, writes and reads of partitions {partitions:?} succeed"),
        checks,
    )
    .await?;
    Ok(written)
}

/// `n` keys named `{prefix}-{i}` that hash to partition `p`.
fn keys_in_partition(prefix: &str, p: u32, partitions: u32, n: usize) -> Vec<String> {
    (0u64..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| partition_of(k.as_bytes(), partitions).0 == p)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_on_exactly_their_partitions_replicas() {
    let started = Instant::now();
    let c = start(5, 16, 3).await.unwrap();
    must(check_keys_live_on_their_replicas(&c, 16).await);
    eprintln!(
        "keys_live_on_exactly_their_partitions_replicas took {:?}",
        started.elapsed()
    );
}

async fn check_keys_live_on_their_replicas(c: &TestCluster, partitions: u32) -> Result<()> {
    let started = Instant::now();
    let sets = &replica_sets(c).await?;
    for (p, replicas) in sets {
        let distinct: BTreeSet<u64> = replicas.iter().copied().collect();
        ensure!(
            replicas.len() == 3 && distinct.len() == 3,
            "partition {p} has replicas {replicas:?}"
        );
    }
    // A node runs a group for exactly the partitions it replicates.
    for id in c.ids() {
        for g in &c.status(id).await?.groups {
            let Some(p) = g.partition else { continue };
            let hosted = g.role != "none";
            ensure!(
                hosted == sets[&p].contains(&id),
                "node {id} hosted={hosted} (role {:?}) for partition {p} with replicas {:?}",
                g.role,
                sets[&p]
            );
        }
    }

    let keys: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("user/{i:04}"), format!("value of key {i}")))
        .collect();
    let vias: Vec<u64> = {
        let mut rng = rand::rng();
        keys.iter().map(|_| rng.random_range(1..=5u64)).collect()
    };
    let covered: BTreeSet<u32> = keys
        .iter()
        .map(|(k, _)| partition_of(k.as_bytes(), partitions).0)
        .collect();
    ensure!(
        covered.len() == partitions as usize,
        "keys cover only {covered:?}"
    );

    let versions: BTreeMap<&str, u64> = stream::iter(keys.iter().zip(&vias))
        .map(|((key, value), via)| async move {
            let what = format!("PUT {key} via node {via}");
            let a = until_not_503(&what, || put(c, *via, key, value)).await?;
            ensure!(
                a.status == 200,
                "PUT {key} via node {via}: {}",
                a.describe()
            );
            let p = partition_of(key.as_bytes(), partitions).0;
            ensure!(
                a.partition == Some(p),
                "PUT {key} was served by partition {:?}, the ring says {p}",
                a.partition
            );
            ensure!(
                a.node.is_some_and(|n| sets[&p].contains(&n)),
                "PUT {key} was served by node {:?}, not a replica of partition {p} {:?}",
                a.node,
                sets[&p]
            );
            let w: WriteResult = a.json()?;
            Ok((key.as_str(), w.version))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    eprintln!("wrote {} keys in {:?}", keys.len(), started.elapsed());

    // Each replica serves the key from its own copy once it has applied it; a non-replica
    // never serves it itself (it relays the read to a replica).
    let checks = keys.iter().flat_map(|(key, value)| {
        let p = partition_of(key.as_bytes(), partitions).0;
        let replicas = &sets[&p];
        c.ids().into_iter().map(move |n| {
            let what =
                format!("stale read of {key} (partition {p}, replicas {replicas:?}) on node {n}");
            async move {
                wait_until(CATCH_UP, &what, || async move {
                    let a = get_stale(c, n, key).await?;
                    if replicas.contains(&n) {
                        ensure!(
                            a.node == Some(n),
                            "replica {n} did not serve the stale read itself: {}",
                            a.describe()
                        );
                    } else {
                        ensure!(
                            a.node.is_some_and(|s| s != n && replicas.contains(&s)),
                            "non-replica {n}: stale read not relayed to a replica: {}",
                            a.describe()
                        );
                    }
                    match a.status {
                        404 => Ok(None), // not applied there yet
                        200 if a.body == value.as_bytes() => {
                            ensure!(
                                a.consistency.as_deref() == Some("stale"),
                                "consistency header {:?}",
                                a.consistency
                            );
                            Ok(Some(()))
                        }
                        _ => bail!("unexpected answer {}", a.describe()),
                    }
                })
                .await
            }
        })
    });
    stream::iter(checks)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!("stale reads checked at {:?}", started.elapsed());

    // Every node answers every key linearizably with the acknowledged value and version.
    let checks = keys.iter().flat_map(|(key, value)| {
        let version = versions[key.as_str()];
        c.ids().into_iter().map(move |n| async move {
            let what = format!("GET {key} via node {n}");
            let a = until_not_503(&what, || get(c, n, key)).await?;
            ensure!(
                a.status == 200 && a.body == value.as_bytes(),
                "GET {key} via node {n}: {}",
                a.describe()
            );
            let etag = format!("\"{version}\"");
            ensure!(
                a.etag.as_deref() == Some(etag.as_str()),
                "GET {key} via node {n}: ETag {:?}, the PUT acknowledged version {version}",
                a.etag
            );
            ensure!(
                a.consistency.as_deref() == Some("linearizable"),
                "GET {key} via node {n}: consistency header {:?}",
                a.consistency
            );
            Ok(())
        })
    });
    stream::iter(checks)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_quorum_fails_only_the_affected_partitions() {
    let started = Instant::now();
    let mut c = start(5, 16, 3).await.unwrap();
    must(check_quorum_loss(&mut c, 16).await);
    eprintln!(
        "losing_a_quorum_fails_only_the_affected_partitions took {:?}",
        started.elapsed()
    );
}

async fn check_quorum_loss(cluster: &mut TestCluster, partitions: u32) -> Result<()> {
    let started = Instant::now();
    let sets = replica_sets(cluster).await?;
    let ids = cluster.ids();

    // One key per (partition, node): writes through different nodes never race on a key, so
    // the last acknowledged value of each key is known exactly.
    let key_of: BTreeMap<(u32, u64), String> = (0..partitions)
        .flat_map(|p| {
            keys_in_partition(&format!("sample{p}"), p, partitions, ids.len())
                .into_iter()
                .zip(ids.clone())
                .map(move |(k, n)| ((p, n), k))
        })
        .collect();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    {
        let c = &*cluster;
        let writes = key_of.iter().map(|((p, n), key)| async move {
            let value = format!("initial p{p} n{n}");
            put_ok(c, *n, key, &value).await?;
            Ok::<_, anyhow::Error>((key.clone(), value))
        });
        for (k, v) in futures::future::try_join_all(writes).await? {
            acked.insert(k, v);
        }
    }

    // The pair to kill: they share some partitions (which lose their quorum) but not all.
    let first = ids[0];
    let second = ids[1..]
        .iter()
        .copied()
        .max_by_key(|n| {
            sets.values()
                .filter(|r| r.contains(&first) && r.contains(n))
                .count()
        })
        .context("need at least two nodes")?;
    let affected: BTreeSet<u32> = sets
        .iter()
        .filter(|(_, r)| r.contains(&first) && r.contains(&second))
        .map(|(p, _)| *p)
        .collect();
    ensure!(
        !affected.is_empty() && affected.len() < partitions as usize,
        "nodes {first} and {second} share partitions {affected:?}; the test needs some, not all"
    );
    eprintln!("replica sets {sets:?}; killing {first}, then {second}; affected {affected:?}");

    // One node down: every partition keeps a quorum, so every key stays writable and readable
    // through every live node once the partitions it led have elected new leaders. That
    // includes nodes outside a partition's replica set, which must relay to a live replica.
    cluster.kill(first)?;
    let all: Vec<u32> = (0..partitions).collect();
    let stage = format!("with node {first} down");
    acked.extend(writes_work(cluster, &key_of, &sets, &all, &stage).await?);
    eprintln!("one node down checked at {:?}", started.elapsed());

    // Two nodes down: partitions replicated on both lost their quorum and answer 503; every
    // other partition still has two of its three replicas and keeps working.
    cluster.kill(second)?;
    let healthy: Vec<u32> = all
        .iter()
        .copied()
        .filter(|p| !affected.contains(p))
        .collect();
    let stage = format!("with nodes {first} and {second} down");
    acked.extend(writes_work(cluster, &key_of, &sets, &healthy, &stage).await?);
    {
        let c = &*cluster;
        let live = c.running();
        let mut checks = Vec::new();
        for p in affected.iter().copied() {
            let probes = keys_in_partition(&format!("probe{p}"), p, partitions, live.len());
            for (n, probe) in live.iter().copied().zip(probes) {
                let existing = &key_of[&(p, n)];
                let what = format!(
                    "partition {p} without quorum (replicas {:?}) via node {n}",
                    sets[&p]
                );
                checks.push(labelled(what, async move {
                    // Never acknowledged, so never counted as written.
                    let a = put(c, n, &probe, "must not be acknowledged").await?;
                    check_unavailable(&a, &format!("PUT {probe}"))?;
                    let a = get(c, n, existing).await?;
                    check_unavailable(&a, &format!("linearizable GET {existing}"))
                }));
            }
        }
        all_hold(
            &format!("{stage}, partitions without a quorum answer 503"),
            checks,
        )
        .await?;
    }
    eprintln!("two nodes down checked at {:?}", started.elapsed());

    // Both back: every partition regains its quorum; nothing acknowledged was lost, and every
    // partition accepts writes through every node.
    cluster.restart(first).await?;
    cluster.restart(second).await?;
    {
        let c = &*cluster;
        let checks = acked
            .iter()
            .flat_map(|(key, value)| {
                c.ids().into_iter().map(move |n| {
                    labelled(
                        format!("acknowledged {key} via node {n} after the restart"),
                        read_eventually(c, n, key, value),
                    )
                })
            })
            .collect();
        all_hold("acknowledged writes survive", checks).await?;
    }
    writes_work(cluster, &key_of, &sets, &all, "after the restart").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_matching_keys_sorted_across_partitions() {
    let started = Instant::now();
    let c = start(3, 8, 3).await.unwrap();
    must(check_scans(&c, 8).await);
    eprintln!(
        "scan_returns_matching_keys_sorted_across_partitions took {:?}",
        started.elapsed()
    );
}

async fn check_scans(c: &TestCluster, partitions: u32) -> Result<()> {
    let mut keys: Vec<String> = (0..40).map(|i| format!("a/{i:03}")).collect();
    keys.extend((0..10).map(|i| format!("b/{i}")));
    keys.extend(
        [
            "a", "ab", "ab/1", "abc", "a0", "a.x", "a/Z", "a/z/deep", "b", "ba", "A/1", "c/a/1",
        ]
        .map(String::from),
    );
    let written: BTreeMap<String, (String, u64)> = stream::iter(keys.iter().enumerate())
        .map(|(i, key)| async move {
            let value = format!("v{i} of {key}");
            let version = put_ok(c, (i % 3) as u64 + 1, key, &value).await?;
            Ok::<_, anyhow::Error>((key.clone(), (value, version)))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    ensure!(written.len() == keys.len(), "duplicate keys in the test");

    let expected = |prefix: &str| -> Vec<(String, String, u64)> {
        // BTreeMap iterates in byte order, the order a scan promises.
        written
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, ver))| (k.clone(), v.clone(), *ver))
            .collect()
    };
    let a_keys = &expected("a/");
    let spread: BTreeSet<u32> = a_keys
        .iter()
        .map(|(k, _, _)| partition_of(k.as_bytes(), partitions).0)
        .collect();
    ensure!(
        spread.len() == partitions as usize,
        "the a/ keys should span every partition, span {spread:?}"
    );

    let check = |a: &Answer, want: &[(String, String, u64)], truncated: bool, what: &str| {
        ensure!(a.status == 200, "{what}: {}", a.describe());
        let got: ScanResult = a.json()?;
        let got_items: Vec<(String, String, u64)> = got
            .items
            .iter()
            .map(|i| {
                (
                    i.key.clone(),
                    i.value.clone().unwrap_or_default(),
                    i.version,
                )
            })
            .collect();
        ensure!(
            got_items == want,
            "{what}: got keys {:?}, want {:?}",
            got.items.iter().map(|i| &i.key).collect::<Vec<_>>(),
            want.iter().map(|i| &i.0).collect::<Vec<_>>()
        );
        ensure!(
            got.truncated == truncated,
            "{what}: truncated={}, want {truncated}",
            got.truncated
        );
        Ok(())
    };

    for n in c.ids() {
        for prefix in ["a/", "a", "ab", "b/", "b", "", "c/", "zzz", "A/"] {
            let want = expected(prefix);
            let a = scan(c, n, &[("prefix", prefix)]).await?;
            check(
                &a,
                &want,
                false,
                &format!("scan prefix={prefix:?} via node {n}"),
            )?;
        }
        let total = a_keys.len();
        for limit in [1, 2, 7, total - 1, total, total + 1, 10_000] {
            let want = &a_keys[..limit.min(total)];
            let a = scan(c, n, &[("prefix", "a/"), ("limit", &limit.to_string())]).await?;
            check(
                &a,
                want,
                limit < total,
                &format!("scan prefix=a/ limit={limit} via node {n}"),
            )?;
        }
        for bad in ["0", "abc", "-1", "10001", ""] {
            let a = scan(c, n, &[("prefix", "a/"), ("limit", bad)]).await?;
            ensure!(
                a.status == 400,
                "limit={bad:?} via node {n}: {}",
                a.describe()
            );
            let body: ErrorBody = a.json()?;
            ensure!(
                body.error == "invalid_limit",
                "limit={bad:?} via node {n}: error code {:?}",
                body.error
            );
        }
        let a = scan(c, n, &[("prefix", "a/"), ("consistency", "sometimes")]).await?;
        ensure!(
            a.status == 400,
            "consistency=sometimes via node {n}: {}",
            a.describe()
        );
        a.json::<ErrorBody>()?;

        // A stale scan reads each partition's local replica, so wait for followers to apply.
        wait_until(
            CATCH_UP,
            &format!("stale scan via node {n}"),
            || async move {
                let a = scan(c, n, &[("prefix", "a/"), ("consistency", "stale")]).await?;
                check(&a, a_keys, false, &format!("stale scan via node {n}"))?;
                let a = scan(
                    c,
                    n,
                    &[("prefix", "a/"), ("consistency", "stale"), ("limit", "5")],
                )
                .await?;
                check(
                    &a,
                    &a_keys[..5],
                    true,
                    &format!("stale scan limit=5 via node {n}"),
                )?;
                Ok(Some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Fail the test with the whole error chain. Called while the cluster is still alive, so its
/// drop prints each node's log tail.
fn must(outcome: Result<()>) {
    if let Err(e) = outcome {
        panic!("{e:#}");
    }
}

/// Name a failing check, so a list of failures says which partition and node each is.
async fn labelled(what: String, check: impl Future<Output = Result<()>>) -> Result<()> {
    check.await.with_context(|| what)
}

/// A node that is not a replica of a key's partition sends the request to the partition's
/// target leader first (where the balancer puts leadership), so once leaders are balanced the
/// request takes one hop: no replica forwards it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_replica_forwards_to_the_target_leader_in_one_hop() {
    let c = start(3, 8, 2).await.unwrap();
    c.wait_settled(1, Duration::from_secs(60)).await.unwrap();
    c.wait_leaders_balanced(1, Duration::from_secs(60))
        .await
        .unwrap();
    let sets = replica_sets(&c).await.unwrap();
    let forwarded = |n| c.metric(n, "kv_forwarded_requests_total", &[]);
    for (p, replicas) in &sets {
        let via = c
            .ids()
            .into_iter()
            .find(|id| !replicas.contains(id))
            .unwrap();
        let key = (0u32..)
            .map(|i| format!("hop/{i}"))
            .find(|k| partition_of(k.as_bytes(), 8).0 == *p)
            .unwrap();
        let mut before = Vec::new();
        for r in replicas {
            before.push(forwarded(*r).await.unwrap());
        }
        let answer = put(&c, via, &key, "v").await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(
            answer.node.is_some_and(|n| replicas.contains(&n)),
            "{answer:?}"
        );
        for (r, was) in replicas.iter().zip(before) {
            assert_eq!(
                forwarded(*r).await.unwrap(),
                was,
                "partition {p}: replica {r} forwarded the request on"
            );
        }
    }
}
