//! Where a node's listeners come from: port 0 and the address file that reports what it got,
//! and the sockets the harness binds and hands over (socket activation) so that no other test
//! takes a port between picking and serving.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use kv_node::testing::{kv_node_bin, wait_until, ClusterOptions, TestCluster};

/// A `kv-node` process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_node_on_port_0_serves_on_the_addresses_it_reports() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = dir.path().join("addrs.json");
    // A stale report from an earlier run must not be taken for this one's.
    std::fs::write(&report, r#"{"listen":"127.0.0.1:1","listen_peer":null}"#)?;
    let log = std::fs::File::create(dir.path().join("node.log"))?;
    let _node = Process(
        Command::new(kv_node_bin())
            .args(["--listen", "127.0.0.1:0", "--listen-peer", "127.0.0.1:0"])
            .arg("--listen-addr-file")
            .arg(&report)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--storage", "memory", "--partitions", "2"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let addrs: serde_json::Value =
        wait_until(Duration::from_secs(30), "the address file", || async {
            let Ok(text) = std::fs::read_to_string(&report) else {
                return Ok(None);
            };
            let addrs: serde_json::Value = serde_json::from_str(&text).context("whole JSON")?;
            Ok((addrs["listen"] != "127.0.0.1:1").then_some(addrs))
        })
        .await?;
    let listen = addrs["listen"].as_str().context("listen")?.to_string();
    let peers = addrs["listen_peer"]
        .as_str()
        .context("listen_peer")?
        .to_string();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "{addrs}"
    );
    assert!(
        peers.starts_with("127.0.0.1:") && peers != listen,
        "{addrs}"
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    wait_until(
        Duration::from_secs(30),
        "ready on the reported address",
        || async {
            let r = http.get(format!("http://{listen}/ready")).send().await?;
            Ok((r.status() == 200).then_some(()))
        },
    )
    .await?;
    let put = http
        .put(format!("http://{listen}/v1/kv/k"))
        .body("v")
        .send()
        .await?;
    assert_eq!(put.status(), 200);
    // The map names the addresses it got, not port 0: clients see the client address once the
    // node has published it next to its peer address.
    wait_until(
        Duration::from_secs(30),
        "the client address in the map",
        || async {
            let status: kv_client::api::ClusterStatus = http
                .get(format!("http://{listen}/v1/cluster"))
                .send()
                .await?
                .json()
                .await?;
            let addrs: Vec<&str> = status.members.iter().map(|m| m.addr.as_str()).collect();
            anyhow::ensure!(
                addrs == [listen.as_str()] || addrs == [peers.as_str()],
                "{addrs:?}"
            );
            Ok((addrs == [listen.as_str()]).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn cluster_nodes_serve_on_the_sockets_the_harness_bound() -> anyhow::Result<()> {
    let mut c = TestCluster::start(ClusterOptions {
        nodes: 1,
        replication_factor: 1,
        peer_listener: true,
        ..ClusterOptions::default()
    })
    .await?;
    assert!(
        c.log(1).contains("inherited=clients,peers"),
        "{}",
        c.log_tail(1, 20)
    );
    let addr = c.node(1).addr.clone();
    c.kill(1)?;
    // The harness kept no copy of the listener: a dead node refuses at once.
    let refused = tokio::net::TcpStream::connect(&addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // A restart binds the same address itself.
    c.restart(1).await?;
    assert!(c.log(1).contains("inherited=none"), "{}", c.log_tail(1, 20));
    Ok(())
}
