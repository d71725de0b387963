//! Failures the client hides: a node killed under a stream of writes, a node that refuses
//! connections, and a write whose answer was lost.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_client::{Client, Error};
use kv_node::testing::wait_until;
use support::{client, closed_port, partition_of, start_cluster, LosingProxy};

const KEYS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_mid_stream_fails_and_loses_no_write() {
    let mut c = start_cluster(&[]).await;
    // A dead endpoint in the list changes nothing either.
    let mut endpoints = vec![format!("http://127.0.0.1:{}", closed_port())];
    endpoints.extend(c.ids().into_iter().map(|id| c.url(id)));
    let kv = Client::builder()
        .endpoints(endpoints)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let victim = c.wait_leader(0).await.unwrap();

    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let kv = kv.clone();
        let written = Arc::clone(&written);
        tokio::spawn(async move {
            let mut versions = Vec::with_capacity(KEYS);
            for i in 0..KEYS {
                let version = kv
                    .put(&format!("stream/{i:03}"), format!("value {i}"))
                    .await
                    .unwrap_or_else(|e| panic!("put {i} failed: {e}"));
                versions.push(version);
                written.fetch_add(1, Ordering::SeqCst);
            }
            versions
        })
    };

    wait_until(Duration::from_secs(60), "half of the writes", || {
        let done = written.load(Ordering::SeqCst);
        async move { Ok((done >= KEYS / 2).then_some(())) }
    })
    .await
    .unwrap();
    c.kill(victim).unwrap();

    let versions = writer.await.unwrap();
    for (i, version) in versions.iter().enumerate() {
        let value = kv.get(&format!("stream/{i:03}")).await.unwrap().unwrap();
        assert_eq!(value.data, format!("value {i}"), "key {i}");
        assert_eq!(
            value.version, *version,
            "key {i} was written again after its put"
        );
    }
    let scan = kv.scan("stream/", 1000).await.unwrap();
    assert_eq!(scan.items.len(), KEYS);
    assert!(!scan.truncated);
}

/// Exactly-once: the first attempt of a compare-and-set is applied but its answer is lost, and
/// the retry (same client id and sequence number) must get the first outcome, not a `412`
/// caused by the first attempt itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_compare_and_set_whose_answer_was_lost_applies_once() {
    let c = start_cluster(&[]).await;
    let key = "once/cas";
    let setup = client(&c);
    let old = setup.put(key, "old").await.unwrap();
    let leader = c.wait_leader(partition_of(key)).await.unwrap();

    // Through the proxy first; the leader, then the other nodes, when it fails.
    let proxy = LosingProxy::start(c.url(leader)).await;
    let mut endpoints = vec![proxy.url.clone(), c.url(leader)];
    endpoints.extend(
        c.ids()
            .into_iter()
            .filter(|id| *id != leader)
            .map(|id| c.url(id)),
    );
    let kv = Client::builder()
        .endpoints(endpoints)
        .discovery(false)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();

    let result = kv.compare_and_set(key, old, "new").await;
    assert_eq!(proxy.lost(), 1, "the proxy lost the first answer");
    let new = match result {
        Ok(version) => version,
        Err(Error::PreconditionFailed { current }) => panic!(
            "the retry was applied as a new write and failed its own precondition \
             (current version {current:?}): the server does not deduplicate retries"
        ),
        Err(other) => panic!("compare_and_set failed: {other}"),
    };
    assert!(new > old);

    // Exactly one write happened: the key is at the version the CAS returned.
    let read = setup.get(key).await.unwrap().unwrap();
    assert_eq!((read.version, &read.data[..]), (new, &b"new"[..]));
    let independent = c.get(leader, key).await.unwrap();
    assert_eq!(independent.status(), 200);
    assert_eq!(
        independent.headers()["etag"].to_str().unwrap(),
        format!("\"{new}\"")
    );
    assert_eq!(independent.text().await.unwrap(), "new");
}
