//! The cluster harness for integration tests (feature `test-util`): real `kv-node` processes on
//! free loopback ports, each with its own data directory, so tests can kill -9, restart and
//! wipe nodes. Waiting is always on a condition ([`wait_until`]), never a fixed sleep.
//!
//! The harness binds each node's listeners itself and hands them to the node's first start by
//! socket activation, so no other test can take a port between picking and serving; it keeps
//! no copy (a killed node's port refuses connections), and a restarted node binds its port
//! again itself.
#![allow(clippy::unwrap_used)]

mod certs;
mod netlab;

pub use certs::{CertFiles, TestCa};
pub use netlab::NetLab;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use command_fds::{CommandFdExt, FdMapping};
use kv_client::api::ClusterStatus;

/// How a test cluster is configured.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub partitions: u32,
    pub replication_factor: u32,
    /// `redb` or `memory`.
    pub storage: &'static str,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_logs: u64,
    pub logs_kept: u64,
    pub request_timeout_ms: u64,
    /// Extra flags passed to every node.
    pub extra_args: Vec<String>,
    /// Run every node in a network namespace of its own (see [`NetLab`]), so a test can cut
    /// nodes off with [`TestCluster::isolate`]. Needs root.
    pub network_namespaces: bool,
    /// TLS for clients and peers: a CA made for the test signs every node's certificate (for
    /// 127.0.0.1 and localhost), which serves clients and proves the node to its peers.
    pub tls: bool,
    /// Without TLS: a cluster secret (`--peer-token-file`) guards the peer routes.
    pub peer_token: bool,
    /// The text of an `--auth-file`.
    pub auth_file: Option<String>,
    /// A token the harness sends with its own requests (status, readiness, reads, writes).
    pub token: Option<String>,
    /// Every node listens for peers on an address of its own (`--listen-peer`); `addr` then
    /// serves clients only.
    pub peer_listener: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            partitions: 1,
            replication_factor: 3,
            storage: "redb",
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_logs: 10_000,
            logs_kept: 100,
            request_timeout_ms: 2_000,
            extra_args: Vec::new(),
            network_namespaces: false,
            tls: false,
            peer_token: false,
            auth_file: None,
            token: None,
            peer_listener: false,
        }
    }
}

/// One node of a [`TestCluster`].
pub struct TestNode {
    pub id: u64,
    /// Where clients reach it.
    pub addr: String,
    /// Its peer listener, with [`ClusterOptions::peer_listener`].
    pub peer_addr: Option<String>,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// For nodes added after the start: the member they join through.
    join: Option<String>,
    /// The listeners bound for it, until its first start takes them.
    sockets: Option<Sockets>,
}

/// Listening sockets the harness bound for a node, at its `addr` and `peer_addr`.
struct Sockets {
    clients: TcpListener,
    peers: Option<TcpListener>,
}

impl Sockets {
    /// Bind a client listener, and one for peers with `peer_listener`.
    fn bind(peer_listener: bool) -> Sockets {
        Sockets {
            clients: free_listener(),
            peers: peer_listener.then(free_listener),
        }
    }

    fn addr(&self) -> String {
        self.clients.local_addr().unwrap().to_string()
    }

    fn peer_addr(&self) -> Option<String> {
        let peers = self.peers.as_ref()?;
        Some(peers.local_addr().unwrap().to_string())
    }

    /// Hand the sockets to `command` as the systemd protocol passes them: fds 3 and 4, named.
    /// The command owns them now; dropping it after the spawn closes this process's copies.
    fn pass_to(self, command: &mut Command) -> Result<()> {
        let mut names = vec!["clients"];
        let mut fds: Vec<OwnedFd> = vec![self.clients.into()];
        if let Some(peers) = self.peers {
            names.push("peers");
            fds.push(peers.into());
        }
        let mappings = fds
            .into_iter()
            .zip(3..)
            .map(|(parent_fd, child_fd)| FdMapping {
                parent_fd,
                child_fd,
            })
            .collect();
        command.fd_mappings(mappings)?;
        // No LISTEN_PID: the child's pid is not known before it runs, and kv-node (listenfd)
        // takes the sockets without one.
        command
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("LISTEN_PID");
        Ok(())
    }
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Where its peers reach it: its member address.
    pub fn member_addr(&self) -> &str {
        self.peer_addr.as_deref().unwrap_or(&self.addr)
    }
}

/// A cluster of real node processes. Dropping it kills them all.
pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    opts: ClusterOptions,
    nodes: BTreeMap<u64, TestNode>,
    http: reqwest::Client,
    /// The CA of a TLS cluster, to make more certificates with.
    ca: Option<TestCa>,
    /// The security flags every node gets.
    security_args: Vec<String>,
    /// Declared last: dropped after the node processes are killed.
    lab: Option<NetLab>,
}

/// The certificates and secret files a cluster's options ask for, and the flags naming them.
fn security(
    dir: &Path,
    opts: &ClusterOptions,
    nodes: &BTreeMap<u64, TestNode>,
) -> Result<(Option<TestCa>, Vec<String>)> {
    let mut args = Vec::new();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let ca = if opts.tls {
        let ca = TestCa::new(&dir.join("certs"), "ca")?;
        args.extend(["--trusted-ca-file".into(), path(&ca.cert_file)]);
        args.extend(["--peer-trusted-ca-file".into(), path(&ca.cert_file)]);
        for id in nodes.keys() {
            ca.node(*id, &["127.0.0.1", "localhost"], &format!("node-{id}"))?;
        }
        Some(ca)
    } else {
        None
    };
    if opts.peer_token {
        let file = dir.join("peer-token");
        std::fs::write(&file, format!("{:032x}\n", rand::random::<u128>()))?;
        args.extend(["--peer-token-file".into(), path(&file)]);
    }
    if let Some(text) = &opts.auth_file {
        let file = dir.join("auth.toml");
        std::fs::write(&file, text)?;
        args.extend(["--auth-file".into(), path(&file)]);
    }
    Ok((ca, args))
}

/// The `kv-node` binary: `$KV_NODE_BIN`, or the one built next to the running test.
pub fn kv_node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KV_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/kv-node
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    profile_dir.join(format!("kv-node{}", std::env::consts::EXE_SUFFIX))
}

/// A loopback listener on a free port, held: no other test can take the port while it is open.
///
/// Taken below Linux's ephemeral range (32768-60999): a port the kernel hands out for `bind(0)`
/// is also what it gives the local end of outgoing connections, so once the listener is closed
/// and its node restarted, one of the suite's many client connections could hold the port and
/// the node would fail to bind it again. Ports here are only ever taken by listeners that ask
/// for them.
pub fn free_listener() -> TcpListener {
    use rand::Rng;
    const RANGE: std::ops::Range<u16> = 20_000..32_000;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", rng.random_range(RANGE))) {
            return listener;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A loopback port nothing listens on (bound, then released): for tests of a peer or endpoint
/// that refuses connections.
pub fn closed_port() -> u16 {
    free_listener().local_addr().unwrap().port()
}

/// Poll `check` until it returns `Ok(Some(v))`, failing after `timeout` with the last error.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition never held");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl TestCluster {
    /// Start `opts.nodes` nodes forming one cluster and wait until every node is ready.
    pub async fn start(opts: ClusterOptions) -> Result<TestCluster> {
        Self::start_with(&kv_node_bin(), opts).await
    }

    pub async fn start_with(bin: &Path, opts: ClusterOptions) -> Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let mut nodes = BTreeMap::new();
        let ids: Vec<u64> = (1..=opts.nodes as u64).collect();
        let lab = match opts.network_namespaces {
            true => Some(NetLab::new(&ids)?),
            false => None,
        };
        for i in 1..=opts.nodes as u64 {
            let (addr, peer_addr, sockets) = match &lab {
                // Each namespace has its own address, so every node there binds the same ports.
                Some(lab) => (
                    format!("{}:7001", lab.ip(i)),
                    opts.peer_listener.then(|| format!("{}:7002", lab.ip(i))),
                    None,
                ),
                None => {
                    let sockets = Sockets::bind(opts.peer_listener);
                    (sockets.addr(), sockets.peer_addr(), Some(sockets))
                }
            };
            nodes.insert(
                i,
                TestNode {
                    id: i,
                    addr,
                    peer_addr,
                    data_dir: dir.path().join(format!("n{i}")),
                    log: dir.path().join(format!("n{i}.log")),
                    child: None,
                    join: None,
                    sockets,
                },
            );
        }
        let (ca, security_args) = security(dir.path(), &opts, &nodes)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &opts.token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .default_headers(headers);
        if let Some(ca) = &ca {
            let pem = std::fs::read(&ca.cert_file)?;
            http = http.tls_certs_only([reqwest::Certificate::from_pem(&pem)?]);
        }
        let http = http.build()?;
        let mut cluster = TestCluster {
            dir,
            bin: bin.to_path_buf(),
            opts,
            nodes,
            http,
            ca,
            security_args,
            lab,
        };
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in &ids {
            cluster.spawn(*id)?;
        }
        for id in &ids {
            cluster.wait_ready(*id).await?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .values()
            .filter(|n| n.join.is_none())
            .map(|n| format!("{}={}", n.id, n.member_addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let initial = self.initial_cluster();
        let o = self.opts.clone();
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let (membership_flag, membership) = match &node.join {
            Some(via) => ("--join", via.clone()),
            None => ("--initial-cluster", initial),
        };
        let node_certs: Vec<String> = match self.ca.as_ref().and_then(|ca| ca.cert_file.parent()) {
            Some(certs) => {
                let cert = certs
                    .join(format!("node-{id}.crt"))
                    .to_string_lossy()
                    .into_owned();
                let key = certs
                    .join(format!("node-{id}.key"))
                    .to_string_lossy()
                    .into_owned();
                vec![
                    "--cert-file".into(),
                    cert.clone(),
                    "--key-file".into(),
                    key.clone(),
                    "--peer-cert-file".into(),
                    cert,
                    "--peer-key-file".into(),
                    key,
                ]
            }
            None => Vec::new(),
        };
        let peer_listener: Vec<String> = match &node.peer_addr {
            Some(peer) => vec!["--listen-peer".into(), peer.clone()],
            None => Vec::new(),
        };
        let mut command = match &self.lab {
            Some(lab) => lab.command(id, &self.bin),
            None => Command::new(&self.bin),
        };
        match node.sockets.take() {
            Some(sockets) => sockets.pass_to(&mut command)?,
            // A restart binds `--listen` again itself.
            None => {
                command
                    .env_remove("LISTEN_FDS")
                    .env_remove("LISTEN_FDNAMES")
                    .env_remove("LISTEN_PID");
            }
        }
        let child = command
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&node.addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg(membership_flag)
            .arg(membership)
            .arg("--storage")
            .arg(o.storage)
            .arg("--partitions")
            .arg(o.partitions.to_string())
            .arg("--replication-factor")
            .arg(o.replication_factor.to_string())
            .arg("--heartbeat-ms")
            .arg(o.heartbeat_ms.to_string())
            .arg("--election-timeout-ms")
            .arg(o.election_timeout_ms.to_string())
            .arg("--snapshot-logs")
            .arg(o.snapshot_logs.to_string())
            .arg("--logs-kept")
            .arg(o.logs_kept.to_string())
            .arg("--request-timeout-ms")
            .arg(o.request_timeout_ms.to_string())
            .args(&self.security_args)
            .args(node_certs)
            .args(peer_listener)
            .args(&o.extra_args)
            .env(
                "KV_LOG",
                std::env::var("KV_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        // The node has the listeners now: this process's copies would accept connections for a
        // killed node, so they close here.
        drop(command);
        node.child = Some(child);
        Ok(())
    }

    /// Start a new node that joins the running cluster through node `via`; returns its id once
    /// it is ready (it has the cluster map and a leader for every partition it hosts).
    pub async fn add_node(&mut self, via: u64) -> Result<u64> {
        let id = self.add_node_no_wait(via)?;
        self.wait_ready(id).await?;
        Ok(id)
    }

    /// Start a new node that joins through node `via`, without waiting for it.
    pub fn add_node_no_wait(&mut self, via: u64) -> Result<u64> {
        if self.lab.is_some() {
            bail!("nodes cannot join a cluster in network namespaces");
        }
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        if let Some(ca) = &self.ca {
            ca.node(id, &["127.0.0.1", "localhost"], &format!("node-{id}"))?;
        }
        let via_addr = self.nodes[&via].member_addr().to_string();
        let sockets = Sockets::bind(self.opts.peer_listener);
        self.nodes.insert(
            id,
            TestNode {
                id,
                addr: sockets.addr(),
                peer_addr: sockets.peer_addr(),
                data_dir: self.dir.path().join(format!("n{id}")),
                log: self.dir.path().join(format!("n{id}.log")),
                child: None,
                join: Some(via_addr),
                sockets: Some(sockets),
            },
        );
        self.spawn(id)?;
        Ok(id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes currently running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[&id]
    }

    /// `http://host:port` of node `id`.
    pub fn url(&self, id: u64) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.nodes[&id].addr)
    }

    /// The CA of a TLS cluster (see [`ClusterOptions::tls`]).
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Wait until node `id` answers `/ready` with 200.
    pub async fn wait_ready(&self, id: u64) -> Result<()> {
        let url = format!("{}/ready", self.url(id));
        let http = self.http.clone();
        wait_until(Duration::from_secs(30), &format!("node {id} ready"), || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.get(&url).send().await?;
                Ok((r.status() == 200).then_some(()))
            }
        })
        .await
        .with_context(|| format!("log of node {id}:\n{}", self.log_tail(id, 40)))
    }

    /// SIGKILL node `id` (no shutdown, no flush) and reap it.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Drop every packet between node `id` and its peers (it needs `network_namespaces`); the
    /// test still reaches it.
    pub fn isolate(&self, id: u64) -> Result<()> {
        match &self.lab {
            Some(lab) => lab.isolate(id),
            None => bail!("isolate needs ClusterOptions::network_namespaces"),
        }
    }

    /// Undo every [`Self::isolate`].
    pub fn heal(&self) -> Result<()> {
        match &self.lab {
            Some(lab) => lab.heal(),
            None => Ok(()),
        }
    }

    /// SIGSTOP node `id`: it keeps its sockets but answers nothing until [`Self::resume`].
    pub fn pause(&self, id: u64) -> Result<()> {
        self.signal(id, "-STOP")
    }

    /// SIGHUP node `id`: it reloads its certificates and auth files.
    pub fn hup(&self, id: u64) -> Result<()> {
        self.signal(id, "-HUP")
    }

    /// SIGCONT node `id` after [`Self::pause`].
    pub fn resume(&self, id: u64) -> Result<()> {
        self.signal(id, "-CONT")
    }

    fn signal(&self, id: u64, signal: &str) -> Result<()> {
        let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill {signal} of node {id} failed: {status}");
        }
        Ok(())
    }

    /// Start a killed node again on the same address and data directory.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.spawn(id)?;
        self.wait_ready(id).await
    }

    /// Start a killed node again without waiting for it to be ready.
    pub fn restart_no_wait(&mut self, id: u64) -> Result<()> {
        self.spawn(id)
    }

    /// Kill node `id` and delete its data directory.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        self.kill(id)?;
        let dir = self.nodes[&id].data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Node `id`'s whole log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `PUT /v1/kv/{key}` on node `id`.
    pub async fn put(
        &self,
        id: u64,
        key: &str,
        value: impl Into<reqwest::Body>,
    ) -> Result<reqwest::Response> {
        Ok(self
            .http
            .put(format!("{}/v1/kv/{key}", self.url(id)))
            .body(value)
            .send()
            .await?)
    }

    /// `GET /v1/kv/{key}` on node `id` (linearizable).
    pub async fn get(&self, id: u64, key: &str) -> Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{}/v1/kv/{key}", self.url(id)))
            .send()
            .await?)
    }

    /// `GET /v1/kv/{key}?consistency=stale` on node `id`: what that replica has applied.
    pub async fn get_stale(&self, id: u64, key: &str) -> Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{}/v1/kv/{key}?consistency=stale", self.url(id)))
            .send()
            .await?)
    }

    /// `GET /v1/cluster` on node `id`.
    pub async fn status(&self, id: u64) -> Result<ClusterStatus> {
        let r = self
            .http
            .get(format!("{}/v1/cluster", self.url(id)))
            .send()
            .await?;
        Ok(r.error_for_status()?.json().await?)
    }

    /// `DELETE /v1/cluster/nodes/{id}` through node `via`, waiting up to a minute for the
    /// drain; repeated while the answer is 503 (the metadata group is electing a leader).
    pub async fn remove_node(&self, via: u64, id: u64, force: bool) -> Result<reqwest::Response> {
        let url = format!(
            "{}/v1/cluster/nodes/{id}?force={force}&wait=60s",
            self.url(via)
        );
        wait_until(
            Duration::from_secs(30),
            "an answer other than 503",
            || async {
                let r = self
                    .http
                    .delete(&url)
                    .timeout(Duration::from_secs(70))
                    .send()
                    .await?;
                if r.status() == 503 {
                    eprintln!("DELETE {url}: 503 {}", r.text().await.unwrap_or_default());
                    return Ok(None);
                }
                Ok(Some(r))
            },
        )
        .await
    }

    /// Wait until, as node `via` sees the cluster, every partition's Raft voters are exactly
    /// the replicas the map assigns, no learner is left, no move is in flight and every
    /// partition has a leader; returns that view.
    pub async fn wait_settled(&self, via: u64, timeout: Duration) -> Result<ClusterStatus> {
        wait_until(timeout, "partition moves settled", || async {
            let s = self.status(via).await?;
            let settled = s.moves.is_empty()
                && s.groups.iter().filter(|g| g.partition.is_some()).all(|g| {
                    let mut voters = g.voters.clone();
                    voters.sort_unstable();
                    let mut replicas = g.replicas.clone();
                    replicas.sort_unstable();
                    voters == replicas
                        && g.learners.is_empty()
                        && g.leader.is_some_and(|l| g.voters.contains(&l))
                });
            Ok(settled.then_some(s))
        })
        .await
    }

    /// Wait until every partition is led by its target leader (`Placement::leaders` of the
    /// map as node `via` sees it); returns the number of partitions each node leads.
    pub async fn wait_leaders_balanced(
        &self,
        via: u64,
        timeout: Duration,
    ) -> Result<BTreeMap<u64, usize>> {
        wait_until(timeout, "leaders on their targets", || async {
            let s = self.status(via).await?;
            let ids: Vec<kv_ring::NodeId> =
                s.members.iter().map(|m| kv_ring::NodeId(m.id)).collect();
            let params = kv_ring::RingParams {
                partitions: s.partitions,
                replication_factor: s.replication_factor,
                vnodes: s.vnodes,
            };
            let targets = kv_ring::Placement::compute(&ids, params)?.leaders();
            let mut led = BTreeMap::new();
            for g in &s.groups {
                let Some(p) = g.partition else { continue };
                let target = targets.get(&kv_ring::PartitionId(p)).map(|n| n.0);
                if g.leader.is_none() || g.leader != target {
                    return Err(anyhow!(
                        "partition {p} is led by {:?}, its target is {target:?}",
                        g.leader
                    ));
                }
                *led.entry(g.leader.unwrap_or_default()).or_default() += 1;
            }
            Ok(Some(led))
        })
        .await
    }

    /// Partitions node `id` hosts a Raft group for, from its own view.
    pub async fn hosted(&self, id: u64) -> Result<std::collections::BTreeSet<u32>> {
        let r = self
            .http
            .get(format!("{}/v1/cluster?scope=local", self.url(id)))
            .send()
            .await?;
        let s: ClusterStatus = r.error_for_status()?.json().await?;
        Ok(s.groups
            .into_iter()
            .filter(|g| g.role != "none")
            .filter_map(|g| g.partition)
            .collect())
    }

    /// Wait until every running node hosts exactly the partitions the map (as `via` sees it)
    /// assigns to it: moved-away copies have been dropped.
    pub async fn wait_hosting_map_share(&self, via: u64, timeout: Duration) -> Result<()> {
        let status = self.status(via).await?;
        for id in self.running() {
            let want: std::collections::BTreeSet<u32> = status
                .groups
                .iter()
                .filter(|g| g.replicas.contains(&id))
                .filter_map(|g| g.partition)
                .collect();
            wait_until(timeout, &format!("node {id} hosts its share"), || async {
                let have = self.hosted(id).await?;
                if have == want {
                    Ok(Some(()))
                } else {
                    Err(anyhow!(
                        "node {id} hosts {have:?}, the map gives it {want:?}"
                    ))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Sum of the Prometheus samples of `name` on node `id` whose labels contain every
    /// `key="value"` in `labels`.
    pub async fn metric(&self, id: u64, name: &str, labels: &[&str]) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url(id)))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let mut sum = 0.0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, series_labels) = series.split_once('{').unwrap_or((series, ""));
            if metric != name || !labels.iter().all(|l| series_labels.contains(l)) {
                continue;
            }
            sum += value.parse::<f64>().context("metric value")?;
        }
        Ok(sum)
    }

    /// Start a writer that PUTs `w/0`, `w/1`, ... through node `via` until stopped; it keeps
    /// the writes that were acknowledged.
    pub fn start_writer(&self, via: u64) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = self.http.clone();
        let url = self.url(via);
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w/{i}");
                let answer = http
                    .put(format!("{url}/v1/kv/{key}"))
                    .body(format!("v{i}"))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 200 => acked.push((key, format!("v{i}"))),
                    // The node is down or has no leader: do not spin.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                i += 1;
            }
            acked
        });
        Writer { stop, task }
    }

    /// Check that every `(key, value)` reads back, linearizably, from every running node.
    pub async fn assert_readable(&self, pairs: &[(String, String)]) -> Result<()> {
        for id in self.running() {
            for (k, v) in pairs {
                let r = self.get(id, k).await?;
                let status = r.status();
                let text = r.text().await?;
                if status != 200 || &text != v {
                    let short = |t: &str| t.chars().take(80).collect::<String>();
                    bail!(
                        "node {id} key {k}: {status} {:?}, want {:?} ({} bytes)",
                        short(&text),
                        short(v),
                        v.len()
                    );
                }
            }
        }
        Ok(())
    }

    /// The leader of `partition` as seen by any running node that knows one.
    pub async fn leader_of(&self, partition: u32) -> Result<Option<u64>> {
        for id in self.running() {
            if let Ok(s) = self.status(id).await {
                if let Some(g) = s.groups.iter().find(|g| g.partition == Some(partition)) {
                    if g.leader.is_some() && g.role == "leader" {
                        return Ok(g.leader);
                    }
                }
            }
        }
        Ok(None)
    }

    /// The replicas of `partition` (by node 1's status) and a node that is none of them.
    pub async fn replicas_and_outsider(&self, partition: u32) -> Result<(Vec<u64>, u64)> {
        let status = self.status(1).await?;
        let replicas = status
            .groups
            .iter()
            .find(|g| g.partition == Some(partition))
            .map(|g| g.replicas.clone())
            .ok_or_else(|| anyhow!("node 1 shows no partition {partition}"))?;
        let outsider = self
            .ids()
            .into_iter()
            .find(|id| !replicas.contains(id))
            .ok_or_else(|| anyhow!("every node is a replica of partition {partition}"))?;
        Ok((replicas, outsider))
    }

    /// Wait until `partition` has a leader among the running nodes, and return it.
    pub async fn wait_leader(&self, partition: u32) -> Result<u64> {
        wait_until(
            Duration::from_secs(30),
            &format!("a leader for partition {partition}"),
            || self.leader_of(partition),
        )
        .await
    }
}

/// An answer read off a raw connection (see [`raw_request`]).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Send `request` byte for byte to `addr` (no client library in between to normalize paths
/// or headers) and read the answer until the server closes the connection, within `timeout`.
/// The request should say `Connection: close`.
pub async fn raw_request(addr: &str, request: &[u8], timeout: Duration) -> Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // The server may answer (and close) before it read everything: ignore write errors.
        let _ = stream.write_all(request).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        anyhow::Ok(out)
    };
    let bytes = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("no complete answer within {timeout:?}"))??;
    parse_response(&bytes)
}

fn parse_response(bytes: &[u8]) -> Result<RawResponse> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut fields);
    let len = match head.parse(bytes)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            bail!("incomplete answer: {:?}", String::from_utf8_lossy(bytes))
        }
    };
    Ok(RawResponse {
        status: head.code.unwrap_or(0),
        headers: head
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: bytes[len..].to_vec(),
    })
}

/// What a TLS client presents and trusts, for [`tls_request`].
pub struct TlsClient<'a> {
    /// The CA the server's certificate must chain to.
    pub ca: &'a Path,
    /// A client certificate to present.
    pub identity: Option<&'a CertFiles>,
}

/// [`raw_request`] over TLS. Also returns the certificate the server presented (DER).
pub async fn tls_request(
    addr: &str,
    client: &TlsClient<'_>,
    request: &[u8],
    timeout: Duration,
) -> Result<(RawResponse, Vec<u8>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(client.ca)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client.identity {
        Some(files) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<_, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&files.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1".to_string())?;
        let mut tls = connector.connect(name, tcp).await?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let _ = tls.write_all(request).await;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        anyhow::Ok((out, presented))
    };
    let (bytes, presented) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("no complete answer within {timeout:?}"))??;
    Ok((parse_response(&bytes)?, presented))
}

/// A background writer started by [`TestCluster::start_writer`].
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, String)>>,
}

impl Writer {
    /// Stop writing; returns every acknowledged `(key, value)`.
    pub async fn stop(self) -> Result<Vec<(String, String)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let ids = self.ids();
        for id in ids {
            if panicking {
                eprintln!(
                    "---- last log lines of node {id} ----\n{}",
                    self.log_tail(id, 30)
                );
            }
            let _ = self.kill(id);
        }
    }
}
