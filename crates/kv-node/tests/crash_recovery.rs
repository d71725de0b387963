//! Linearizable reads right after a crash: applies and the commit index are not fsynced, so a
//! node killed with -9 comes back with its state machine behind its (durable) log. A restarted
//! leader must not serve a read from that state: no read may return a version older than the
//! last acknowledged write of the key, and no deleted key may come back. Real processes, real
//! redb files, kill -9.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

const KEYS: usize = 32;
const TRIALS: usize = 3;

async fn cluster() -> TestCluster {
    TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions::default(),
    )
    .await
    .unwrap()
}

/// The last acknowledged state of a key: its version, or deleted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Acked {
    Put(u64),
    Deleted,
}

/// Write and delete `KEYS` keys through node `via` for about a second; returns each key's last
/// acknowledged state.
async fn write_for_a_second(c: &TestCluster, via: u64, trial: usize) -> BTreeMap<String, Acked> {
    let mut acked = BTreeMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut round = 0usize;
    while tokio::time::Instant::now() < until {
        for k in 0..KEYS {
            let key = format!("t{trial}/k{k}");
            // Every fifth round deletes a third of the keys; the rest rewrite them.
            let delete = round % 5 == 4 && k % 3 == 0;
            let url = format!("{}/v1/kv/{key}", c.url(via));
            let answer = if delete {
                c.http().delete(&url).send().await
            } else {
                c.http().put(&url).body(format!("r{round}")).send().await
            };
            let Ok(r) = answer else { continue };
            match r.status().as_u16() {
                200 if delete => {
                    acked.insert(key, Acked::Deleted);
                }
                200 => {
                    let body: serde_json::Value = r.json().await.unwrap();
                    acked.insert(key, Acked::Put(body["version"].as_u64().unwrap()));
                }
                // Deleting an absent key changes nothing.
                404 if delete => {}
                other => panic!("write to a healthy cluster answered {other}"),
            }
        }
        round += 1;
    }
    acked
}

/// Read every key linearizably from every node in a tight loop, from the moment the nodes
/// answer, until each node has given a definitive answer for every key; fail on any answer
/// older than the last acknowledged write.
async fn read_everywhere_until_settled(c: &TestCluster, acked: &BTreeMap<String, Acked>) {
    let mut pending: Vec<(u64, String)> = c
        .ids()
        .into_iter()
        .flat_map(|id| acked.keys().map(move |k| (id, k.clone())))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} reads never answered, e.g. {:?}",
            pending.len(),
            pending[0]
        );
        let answers = futures::future::join_all(
            pending
                .iter()
                .map(|(id, key)| check_read(c, *id, key, acked[key])),
        )
        .await;
        let mut unanswered = Vec::new();
        for ((id, key), answer) in pending.into_iter().zip(answers) {
            match answer {
                Ok(true) => {}
                Ok(false) => unanswered.push((id, key)),
                Err(e) => panic!("{e:#}"),
            }
        }
        pending = unanswered;
    }
}

/// One linearizable read of `key` on node `id`: `Ok(true)` if it answered and the answer is
/// not older than `want`, `Ok(false)` if it could not answer yet (down, no leader), `Err` if
/// it answered with stale data.
async fn check_read(c: &TestCluster, id: u64, key: &str, want: Acked) -> Result<bool> {
    let Ok(r) = c.get(id, key).await else {
        return Ok(false);
    };
    match (r.status().as_u16(), want) {
        (200, Acked::Put(v)) => {
            let version: u64 = r.headers()["etag"].to_str()?.trim_matches('"').parse()?;
            if version < v {
                bail!("node {id} read {key} at version {version}, older than the acknowledged {v}");
            }
            Ok(true)
        }
        (200, Acked::Deleted) => bail!("node {id} read {key}, which was deleted"),
        (404, Acked::Deleted) => Ok(true),
        (404, Acked::Put(v)) => bail!("node {id} has no {key}, acknowledged at version {v}"),
        (503, _) => Ok(false),
        (other, _) => bail!("node {id} answered {other} for {key}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_kill_9_of_every_node() {
    let mut c = cluster().await;
    for trial in 0..TRIALS {
        let leader = c.wait_leader(0).await.unwrap();
        let acked = write_for_a_second(&c, leader, trial).await;
        assert!(acked.len() == KEYS, "every key was written");
        // The scenario, not a wait: an idle partition, so nothing fsyncs the last applies by
        // chance before the crash.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in c.ids() {
            c.kill(id).unwrap();
        }
        for id in c.ids() {
            c.restart_no_wait(id).unwrap();
        }
        read_everywhere_until_settled(&c, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_a_fast_restart_of_the_leader() {
    let mut c = cluster().await;
    for trial in 0..TRIALS {
        let leader = c.wait_leader(0).await.unwrap();
        let acked = write_for_a_second(&c, leader, trial).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // idle, as above
                                                              // A supervisor's restart: back within milliseconds, still leader by its stored vote,
                                                              // while the followers are stalled for a moment (SIGSTOP), so that the restarted
                                                              // leader's first heartbeat round, which confirms a read, and its first replication
                                                              // round, which commits its log again, complete together.
        let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
        c.kill(leader).unwrap();
        for id in &followers {
            c.pause(*id).unwrap();
        }
        c.restart_no_wait(leader).unwrap();
        let url = format!("{}/health", c.url(leader));
        wait_until(Duration::from_secs(10), "the leader is back", || async {
            Ok(c.http().get(&url).send().await.is_ok().then_some(()))
        })
        .await
        .unwrap();
        let reads = read_everywhere_until_settled(&c, &acked);
        let resume = async {
            for id in &followers {
                c.resume(*id).unwrap();
            }
        };
        tokio::join!(reads, resume);
    }
}
