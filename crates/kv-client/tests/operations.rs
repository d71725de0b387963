//! Every client operation against a real 3-node cluster, and every kind of error.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kv_client::{Client, Consistency, Error, ScanOptions};
use support::{client, closed_port, forwarded_requests, start_cluster, SilentServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trips_and_key_requests_go_straight_to_the_leader() {
    let c = start_cluster(&[]).await;
    let kv = client(&c);

    // put / get / stale get
    let v1 = kv.put("fruit/apple", "red").await.unwrap();
    let value = kv.get("fruit/apple").await.unwrap().unwrap();
    assert_eq!((&value.data[..], value.version), (&b"red"[..], v1));
    let stale = kv
        .get_with("fruit/apple", Consistency::Stale)
        .await
        .unwrap()
        .unwrap();
    assert!(stale.version <= v1);
    assert_eq!(kv.get("fruit/none").await.unwrap(), None);

    // Keys with any characters (slashes, dot segments, spaces, UTF-8) stay one key.
    for key in [
        "a/../b",
        "with space?&=#",
        "ü/ñ",
        "/leading",
        "trailing/",
        "a//b",
    ] {
        let version = kv.put(key, key.to_owned()).await.unwrap();
        let read = kv.get(key).await.unwrap().unwrap();
        assert_eq!(
            (&read.data[..], read.version),
            (key.as_bytes(), version),
            "{key}"
        );
    }
    assert_eq!(
        kv.get("b").await.unwrap(),
        None,
        "a/../b was not normalized"
    );

    // Binary values round-trip.
    let binary = vec![0u8, 255, 10, 13];
    kv.put("bin", binary.clone()).await.unwrap();
    assert_eq!(kv.get("bin").await.unwrap().unwrap().data, binary);

    // create, compare_and_set, compare_and_delete, delete
    let created = kv.create("fruit/pear", "green").await.unwrap();
    let v2 = kv
        .compare_and_set("fruit/pear", created, "yellow")
        .await
        .unwrap();
    assert!(v2 > created);
    assert_eq!(kv.get("fruit/pear").await.unwrap().unwrap().data, "yellow");
    assert_eq!(kv.compare_and_delete("fruit/pear", v2).await.unwrap(), v2);
    assert_eq!(kv.get("fruit/pear").await.unwrap(), None);
    assert_eq!(kv.delete("fruit/apple").await.unwrap(), Some(v1));
    assert_eq!(kv.delete("fruit/apple").await.unwrap(), None);

    // scan, with paging
    for i in 0..5 {
        kv.put(&format!("scan/{i}"), format!("v{i}")).await.unwrap();
    }
    let page = kv.scan("scan/", 3).await.unwrap();
    let keys: Vec<&str> = page.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["scan/0", "scan/1", "scan/2"]);
    assert!(page.truncated);
    assert_eq!(page.next.as_deref(), Some("scan/2"));
    assert_eq!(page.items[0].value_bytes().unwrap(), b"v0");
    let rest = kv
        .scan_with(
            "scan/",
            &ScanOptions {
                limit: Some(10),
                after: page.next.clone(),
                consistency: Consistency::Stale,
                keys_only: true,
            },
        )
        .await
        .unwrap();
    let keys: Vec<&str> = rest.items.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.iter().all(|k| *k > "scan/2"), "{keys:?}");
    assert!(!rest.truncated);
    assert!(rest
        .items
        .iter()
        .all(|i| i.value.is_none() && i.value_b64.is_none()));

    // cluster status
    let status = kv.cluster_status().await.unwrap();
    assert_eq!(status.members.len(), 3);
    assert_eq!(status.partitions, support::PARTITIONS);
    assert!(status.groups.iter().all(|g| g.leader.is_some()));

    // With the map learned, writes and linearizable reads go to the leader: next to none is
    // forwarded (a handful at most, should leadership move meanwhile).
    let before = forwarded_requests(&c).await;
    for i in 0..40 {
        let key = format!("routed/{i}");
        kv.put(&key, "x").await.unwrap();
        kv.get(&key).await.unwrap().unwrap();
    }
    let forwarded = forwarded_requests(&c).await - before;
    assert!(forwarded < 10, "{forwarded} of 80 requests were forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_cannot_change_are_returned_at_once_with_their_kind() {
    let c = start_cluster(&["--max-value-bytes", "1024"]).await;
    let kv = client(&c);

    let version = kv.put("k", "v").await.unwrap();
    assert_eq!(
        kv.compare_and_set("k", version + 100, "x").await,
        Err(Error::PreconditionFailed {
            current: Some(version)
        })
    );
    assert_eq!(
        kv.create("k", "x").await,
        Err(Error::PreconditionFailed {
            current: Some(version)
        })
    );
    assert_eq!(
        kv.compare_and_set("absent", 1, "x").await,
        Err(Error::PreconditionFailed { current: None })
    );
    assert_eq!(
        kv.compare_and_delete("absent", 1).await,
        Err(Error::PreconditionFailed { current: None })
    );
    assert_eq!(kv.get("k").await.unwrap().unwrap().version, version);

    let started = Instant::now();
    for result in [
        kv.put("big", vec![b'x'; 2048]).await,
        kv.put(&"k".repeat(2000), "x").await,
        kv.put("", "x").await,
        kv.put("..", "x").await,
    ] {
        assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    }
    let scan = kv.scan("", 0).await;
    assert!(matches!(scan, Err(Error::InvalidInput(_))), "{scan:?}");

    // Membership changes: a join of an address where no node answers is invalid input; removing
    // a node that is not a member is a 404.
    let join = kv.join(4, "127.0.0.1:1").await;
    assert!(matches!(join, Err(Error::InvalidInput(_))), "{join:?}");
    let leave = kv.leave(99, false).await;
    assert!(matches!(leave, Err(Error::NotFound(_))), "{leave:?}");

    // None of these were retried until the deadline.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_nodes_fail_with_transport_error_and_timeout() {
    let refused = Client::builder()
        .endpoints([format!("127.0.0.1:{}", closed_port())])
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let result = refused.put("k", "v").await;
    assert!(
        matches!(&result, Err(Error::Transport(m)) if m.contains("127.0.0.1")),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_unavailable());

    let silent = SilentServer::start().await;
    let hung = Client::builder()
        .endpoints([silent.url.clone()])
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(hung.get("k").await, Err(Error::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
}
