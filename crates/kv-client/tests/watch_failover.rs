//! A watch through kv-client against a real cluster: when the node serving it is killed, the
//! watch resumes from its cursor on another node, and every acknowledged write arrives once.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use kv_client::api::WatchEventKind;
use support::{client, start_cluster};

const KEYS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_watch_resumes_on_another_node_when_its_node_dies() {
    let mut c = start_cluster(&[]).await;
    let kv = client(&c);
    let mut watch = kv.watch("cw/", None);
    // The stream opens with its start cursor.
    let start = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(start.event.is_none() && !start.cursor.is_empty());

    let mut acked = BTreeSet::new();
    let mut seen = Vec::new();
    for i in 0..KEYS {
        let key = format!("cw/{i:02}");
        acked.insert((key.clone(), kv.put(&key, "before").await.unwrap()));
    }
    while seen.len() < KEYS {
        seen.push(next_event(&mut watch).await);
    }
    // The client's first endpoint serves its watch; it dies, and writes go on.
    c.kill(1).unwrap();
    for i in 0..KEYS {
        let key = format!("cw/{i:02}");
        acked.insert((key.clone(), kv.put(&key, "after").await.unwrap()));
    }
    while seen.len() < 2 * KEYS {
        seen.push(next_event(&mut watch).await);
    }
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "an event came twice: {seen:?}");
    assert_eq!(distinct, acked);
    // Nothing more than what was written.
    let more = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match watch.next().await {
                Some(Ok(item)) if item.event.is_none() => continue,
                other => return other.map(|r| r.map(|i| i.event)),
            }
        }
    })
    .await;
    assert!(more.is_err(), "an extra event: {more:?}");
}

/// The next change the watch yields (cursor-only items skipped), as (key, version).
async fn next_event(watch: &mut kv_client::Watch) -> (String, u64) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .unwrap();
        if let Some(event) = item.event {
            assert_eq!(event.kind, WatchEventKind::Put);
            return (event.key, event.version);
        }
    }
}
