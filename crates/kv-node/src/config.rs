//! Node configuration: command-line flags, each also read from a `KV_*` environment variable,
//! over an optional TOML file (`--config`), over built-in defaults. A bare `kv-node` is a
//! single-node store on redb under `./data`, listening on 127.0.0.1:7001.
//!
//! A listen address may have port 0: the node takes the port it is given, advertises it where
//! no advertised address is set, and reports it (`--listen-addr-file`). Until the node listens,
//! such an advertised address keeps port 0 as a placeholder (`Config::bound_to` fills it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kv_raft::RaftTuning;
use kv_ring::{NodeId, RingParams};
use serde::Deserialize;

/// Partition moves one node leads at once, unless `--max-moves` says otherwise.
const DEFAULT_MAX_MOVES: usize = 2;

/// Which storage engine holds the node's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A redb file under the data directory (durable).
    Redb,
    /// Process memory (lost on exit; for tests and experiments).
    Memory,
}

/// Command-line flags. Every flag is optional here so that the config file can fill what the
/// command line and environment leave out.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "kv-node",
    version,
    about = "A node of the kv store",
    after_help = SOCKET_ACTIVATION_HELP
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Flags {
    /// TOML file with any of these settings (keys as the long flag names).
    #[arg(long, env = "KV_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "KV_ID")]
    pub id: Option<u64>,
    /// Address to listen on for clients (and for peers, without --listen-peer). Port 0 takes
    /// any free port (see --listen-addr-file).
    #[arg(long, env = "KV_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address clients (and peers, without --listen-peer) use to reach this node (default:
    /// the address --listen bound).
    #[arg(long, env = "KV_ADVERTISE")]
    pub advertise: Option<String>,
    /// Listen for peers (Raft, forwarding, membership) on this address of their own, like
    /// etcd's 2380; the --listen address then serves clients only.
    #[arg(long, env = "KV_LISTEN_PEER")]
    pub listen_peer: Option<SocketAddr>,
    /// Address peers use to reach this node's peer listener (default: the address
    /// --listen-peer bound). This is the address --initial-cluster and --join name.
    #[arg(long, env = "KV_ADVERTISE_PEER", requires = "listen_peer")]
    pub advertise_peer: Option<String>,
    /// Once listening, write the bound addresses to this file as JSON
    /// (`{"listen":"127.0.0.1:43123","listen_peer":null}`), whole or not at all; a file left
    /// from an earlier run is removed at start. For whoever starts the node on port 0.
    #[arg(long, env = "KV_LISTEN_ADDR_FILE")]
    pub listen_addr_file: Option<PathBuf>,
    /// Directory for the node's data (redb file, snapshots).
    #[arg(long, env = "KV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Members of a new cluster: `1=host:port,2=host:port,...` (default: this node alone).
    #[arg(long, env = "KV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Join the running cluster that this member (`host:port`) belongs to, instead of forming
    /// a new one with --initial-cluster.
    #[arg(long, env = "KV_JOIN", conflicts_with = "initial_cluster")]
    pub join: Option<String>,
    /// Storage engine.
    #[arg(long, env = "KV_STORAGE", value_enum)]
    pub storage: Option<StorageKind>,
    /// Number of partitions the key space is split into (fixed at cluster creation).
    #[arg(long, env = "KV_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Replicas per partition (capped by the node count).
    #[arg(long, env = "KV_REPLICATION_FACTOR")]
    pub replication_factor: Option<u32>,
    /// Virtual nodes per node on the hash ring.
    #[arg(long, env = "KV_VNODES")]
    pub vnodes: Option<u32>,
    /// Largest accepted value, in bytes.
    #[arg(long, env = "KV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "KV_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum Raft election timeout in milliseconds (the maximum is twice this).
    #[arg(long, env = "KV_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Let idle partitions go quiet: no Raft heartbeats while nothing is written, one liveness
    /// ping per peer instead (default true).
    #[arg(long, env = "KV_QUIESCE", num_args = 0..=1, default_missing_value = "true")]
    pub quiesce: Option<bool>,
    /// Snapshot and purge the Raft log after this many applied entries.
    #[arg(long, env = "KV_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, env = "KV_LOGS_KEPT")]
    pub logs_kept: Option<u64>,
    /// How long a request may wait for a quorum before answering 503, in milliseconds.
    #[arg(long, env = "KV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Partition moves this node leads at once (adding replicas, changing voters).
    #[arg(long, env = "KV_MAX_MOVES")]
    pub max_moves: Option<usize>,
    /// Most bytes of keys and values in one scan answer; `next` continues from there.
    #[arg(long, env = "KV_MAX_SCAN_BYTES")]
    pub max_scan_bytes: Option<usize>,
    /// Page cache of the redb file, in MiB (most of a node's memory).
    #[arg(long, env = "KV_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Open client and peer connections accepted at once; more are answered 503.
    #[arg(long, env = "KV_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Key requests (get, put, delete, forwarded operations) served at once; more get 429.
    #[arg(long, env = "KV_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Scans served at once; more get 429.
    #[arg(long, env = "KV_MAX_CONCURRENT_SCANS")]
    pub max_concurrent_scans: Option<usize>,
    /// A request's head, and its body, must each arrive within this many milliseconds; also
    /// how long an idle connection is kept open.
    #[arg(long, env = "KV_CLIENT_TIMEOUT_MS")]
    pub client_timeout_ms: Option<u64>,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `kv_node=debug`).
    #[arg(long, env = "KV_LOG")]
    pub log: Option<String>,
    /// Certificate (PEM) the listener presents to clients; with --key-file, clients speak TLS.
    #[arg(long, env = "KV_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "KV_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that sign client certificates.
    #[arg(long, env = "KV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file on every connection.
    #[arg(long, env = "KV_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// This node's certificate (PEM) towards its peers: CN or DNS SAN `node-<id>`, usages
    /// serverAuth and clientAuth (`kv cert create-node` makes one). Peers then speak TLS and
    /// prove who they are with theirs.
    #[arg(long, env = "KV_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "KV_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that sign the node certificates of the cluster.
    #[arg(long, env = "KV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// A file holding the cluster secret peers send each other when they do not use TLS.
    #[arg(long, env = "KV_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,
    /// TOML file of client tokens with their roles and key prefixes; without it every client
    /// may do everything.
    #[arg(long, env = "KV_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve /ready, /metrics and /v1/cluster without a token even with --auth-file.
    #[arg(long, env = "KV_METRICS_PUBLIC", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_public: Option<bool>,
}

/// Fully resolved node settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// The client listener (also the peers' without a peer listener).
    pub listen: SocketAddr,
    /// Where clients reach this node.
    pub advertise: String,
    /// The peer listener, if peers have one of their own.
    pub listen_peer: Option<SocketAddr>,
    /// Where peers reach this node: its address in the cluster map (= `advertise` without a
    /// peer listener).
    pub peer_advertise: String,
    /// Where to report the bound addresses (`--listen-addr-file`).
    pub listen_addr_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Initial members: id -> address (just this node when joining).
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// A member of the running cluster to join through, instead of forming a new cluster.
    pub join: Option<String>,
    pub storage: StorageKind,
    pub ring: RingParams,
    pub max_value_bytes: usize,
    pub raft: RaftTuning,
    /// Partition moves this node leads at once.
    pub max_moves: usize,
    /// Most bytes of keys and values in one scan answer.
    pub max_scan_bytes: usize,
    /// redb page cache, in bytes.
    pub cache_bytes: usize,
    pub limits: Limits,
    pub log: String,
    pub tls: TlsFiles,
    pub peer_token_file: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub metrics_public: bool,
}

/// The PEM files of the node's TLS setup (see `tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub trusted_ca: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
    pub peer_trusted_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.peer_cert.is_some()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            anyhow::bail!("--cert-file and --key-file go together");
        }
        if self.peer_cert.is_some() != self.peer_key.is_some() {
            anyhow::bail!("--peer-cert-file and --peer-key-file go together");
        }
        if self.cert.is_some() && self.peer_cert.is_none() {
            anyhow::bail!(
                "--cert-file makes the listener speak TLS, and peers share it: give the nodes certificates too (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)"
            );
        }
        if self.peer_cert.is_some() && self.peer_trusted_ca.is_none() {
            anyhow::bail!(
                "--peer-cert-file needs --peer-trusted-ca-file to check the peers' certificates"
            );
        }
        if self.client_cert_auth && self.trusted_ca.is_none() {
            anyhow::bail!("--client-cert-auth needs --trusted-ca-file");
        }
        if self.trusted_ca.is_some() && !self.enabled() {
            anyhow::bail!(
                "--trusted-ca-file needs a TLS listener (--cert-file or --peer-cert-file)"
            );
        }
        Ok(())
    }
}

/// How much work a node accepts at once, and how long it waits for a client.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
    pub max_concurrent_scans: usize,
    /// For a request head, for a request body, and for an idle connection.
    pub client_timeout: Duration,
}

impl Config {
    /// How long a request body may take to arrive.
    pub fn body_timeout(&self) -> Duration {
        self.limits.client_timeout
    }
}

/// Largest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

impl Config {
    /// Resolve command-line flags (already merged with the environment by clap) over the
    /// config file they name, over the defaults.
    pub fn from_flags(flags: Flags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str::<Flags>(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
            }
            None => Flags::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                flags.$field.or(file.$field).unwrap_or_else(|| $default)
            };
        }
        let id = NodeId(pick!(id, 1));
        if id.0 == 0 {
            anyhow::bail!("--id must be a positive integer");
        }
        let listen: SocketAddr = pick!(listen, SocketAddr::from(([127, 0, 0, 1], 7001)));
        let advertise = flags.advertise.or(file.advertise);
        if let Some(addr) = advertise.as_deref().filter(|a| port_zero(a)) {
            anyhow::bail!("--advertise {addr} has port 0: advertise the port clients reach");
        }
        let advertise = advertise.unwrap_or_else(|| listen.to_string());
        let listen_peer = flags.listen_peer.or(file.listen_peer);
        let peer_advertise = match (flags.advertise_peer.or(file.advertise_peer), listen_peer) {
            (Some(_), None) => anyhow::bail!("--advertise-peer needs --listen-peer"),
            (Some(addr), Some(_)) if port_zero(&addr) => {
                anyhow::bail!("--advertise-peer {addr} has port 0: advertise the port peers reach")
            }
            (Some(addr), Some(_)) => addr,
            (None, Some(peer)) => peer.to_string(),
            (None, None) => advertise.clone(),
        };
        if listen_peer.is_some_and(|p| p == listen && p.port() != 0) {
            anyhow::bail!("--listen-peer must differ from --listen (or leave it out to share one)");
        }
        let (listen_flag, advertise_flag) = match listen_peer {
            Some(_) => ("--listen-peer", "--advertise-peer"),
            None => ("--listen", "--advertise"),
        };
        let join = flags.join.or(file.join);
        let initial_cluster = match flags.initial_cluster.or(file.initial_cluster) {
            Some(_) if join.is_some() => {
                anyhow::bail!("use either --join or --initial-cluster, not both")
            }
            // The other members would have to know a port that is picked only at start.
            Some(_) if port_zero(&peer_advertise) => anyhow::bail!(
                "{listen_flag} has port 0, picked when the node starts, so --initial-cluster cannot give node {id}'s address: give {listen_flag} a fixed port or set {advertise_flag}; port 0 suits a node alone (no --initial-cluster) or one that joins (--join)"
            ),
            Some(spec) => parse_members(&spec)?,
            None => BTreeMap::from([(id, peer_advertise.clone())]),
        };
        match initial_cluster.get(&id) {
            Some(addr) if *addr == peer_advertise => {}
            Some(addr) => anyhow::bail!(
                "--initial-cluster gives node {id} the address {addr}, but it advertises {peer_advertise} to peers (set {advertise_flag})"
            ),
            None => anyhow::bail!("--initial-cluster does not include this node's id {id}"),
        }
        let storage = pick!(storage, StorageKind::Redb);
        let ring = RingParams {
            partitions: pick!(partitions, 16),
            replication_factor: pick!(replication_factor, 3),
            vnodes: pick!(vnodes, RingParams::DEFAULT.vnodes),
        };
        ring.validate()
            .map_err(|e| anyhow::anyhow!("invalid placement settings: {e}"))?;
        let tls = TlsFiles {
            cert: flags.cert_file.or(file.cert_file),
            key: flags.key_file.or(file.key_file),
            trusted_ca: flags.trusted_ca_file.or(file.trusted_ca_file),
            client_cert_auth: flags
                .client_cert_auth
                .or(file.client_cert_auth)
                .unwrap_or(false),
            peer_cert: flags.peer_cert_file.or(file.peer_cert_file),
            peer_key: flags.peer_key_file.or(file.peer_key_file),
            peer_trusted_ca: flags.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
        };
        tls.validate()?;
        let heartbeat = pick!(heartbeat_ms, 100);
        let election = pick!(election_timeout_ms, heartbeat * 5);
        if heartbeat == 0 || election <= heartbeat {
            anyhow::bail!(
                "--election-timeout-ms ({election}) must exceed --heartbeat-ms ({heartbeat})"
            );
        }
        let raft = RaftTuning {
            heartbeat: Duration::from_millis(heartbeat),
            election_min: Duration::from_millis(election),
            election_max: Duration::from_millis(election * 2),
            snapshot_after_logs: pick!(snapshot_logs, 10_000).max(1),
            logs_kept_after_snapshot: pick!(logs_kept, 1_000),
            request_timeout: Duration::from_millis(pick!(request_timeout_ms, 5_000).max(1)),
            quiesce: pick!(quiesce, true),
        };
        Ok(Config {
            id,
            listen,
            advertise,
            listen_peer,
            peer_advertise,
            listen_addr_file: flags.listen_addr_file.or(file.listen_addr_file),
            data_dir: pick!(data_dir, PathBuf::from("./data")),
            initial_cluster,
            join,
            storage,
            ring,
            max_value_bytes: pick!(max_value_bytes, 1 << 20),
            raft,
            max_moves: pick!(max_moves, DEFAULT_MAX_MOVES).max(1),
            max_scan_bytes: pick!(max_scan_bytes, 4 << 20).max(1024),
            cache_bytes: pick!(cache_mb, 64).max(1).saturating_mul(1 << 20),
            limits: Limits {
                max_connections: pick!(max_connections, 4096).max(1),
                max_concurrent_requests: pick!(max_concurrent_requests, 1024).max(1),
                max_concurrent_scans: pick!(max_concurrent_scans, 32).max(1),
                client_timeout: Duration::from_millis(pick!(client_timeout_ms, 10_000).max(1)),
            },
            log: pick!(log, "info".to_string()),
            tls,
            peer_token_file: flags.peer_token_file.or(file.peer_token_file),
            auth_file: flags.auth_file.or(file.auth_file),
            metrics_public: pick!(metrics_public, false),
        })
    }
}

impl Config {
    /// Take the addresses the listeners were bound to: they replace the listen addresses, and
    /// port 0 wherever it stands as a placeholder (an advertised address taken from a listen
    /// address with port 0, and this node's entry in its own one-node cluster).
    pub(crate) fn bound_to(&mut self, listen: SocketAddr, listen_peer: Option<SocketAddr>) {
        // from_flags refuses port 0 in an address given explicitly, so port 0 here is always
        // one taken from a listen address.
        if port_zero(&self.advertise) {
            self.advertise = listen.to_string();
        }
        if port_zero(&self.peer_advertise) {
            self.peer_advertise = match listen_peer {
                Some(peer) => peer.to_string(),
                None => self.advertise.clone(),
            };
            if let Some(own) = self.initial_cluster.get_mut(&self.id) {
                if port_zero(own) {
                    own.clone_from(&self.peer_advertise);
                }
            }
        }
        self.listen = listen;
        self.listen_peer = listen_peer;
    }
}

/// Whether `addr` (`host:port`) has port 0.
fn port_zero(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>() == Ok(0))
}

/// `--help`'s word on socket activation.
const SOCKET_ACTIVATION_HELP: &str = "\
Socket activation: the node also serves on listening sockets it inherits (systemd's LISTEN_FDS,
LISTEN_PID; a .socket unit with ListenStream=). Named `clients` and `peers` by LISTEN_FDNAMES
(FileDescriptorName=), or else the first serves clients and the second peers. Each stands in for
the node's own bind of --listen or --listen-peer, so it must be bound to the address that flag
names (any port when the flag says port 0). The startup line `listening` says which were
inherited.";

/// Parse `1=host:port,2=host:port`.
pub fn parse_members(spec: &str) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("member {part:?} is not of the form ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("member id {id:?} is not a positive integer"))?;
        if id == 0 {
            anyhow::bail!("member id 0 is not allowed");
        }
        let addr = addr.trim();
        if !valid_addr(addr) {
            anyhow::bail!("member address {addr:?} is not HOST:PORT with a numeric port");
        }
        if members.insert(NodeId(id), addr.to_string()).is_some() {
            anyhow::bail!("member id {id} appears twice");
        }
    }
    if members.is_empty() {
        anyhow::bail!("the member list is empty");
    }
    Ok(members)
}

/// Whether `addr` looks like `host:port`: printable, at most 255 bytes, a numeric port.
pub(crate) fn valid_addr(addr: &str) -> bool {
    addr.len() <= 255
        && addr.bytes().all(|b| b.is_ascii_graphic())
        && addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["kv-node"];
        argv.extend_from_slice(args);
        Config::from_flags(Flags::try_parse_from(argv)?)
    }

    #[test]
    fn bare_node_is_a_single_node_redb_store_on_7001() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.id, NodeId(1));
        assert_eq!(c.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(c.storage, StorageKind::Redb);
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn initial_cluster_must_name_this_node_at_its_address() {
        let err = resolve(&["--id", "4", "--initial-cluster", "1=a:1,2=b:2"]).unwrap_err();
        assert!(err.to_string().contains("does not include"), "{err}");
        let ok = resolve(&[
            "--id",
            "2",
            "--listen",
            "127.0.0.1:7002",
            "--initial-cluster",
            "1=127.0.0.1:7001,2=127.0.0.1:7002",
        ])
        .unwrap();
        assert_eq!(ok.initial_cluster.len(), 2);
    }

    #[test]
    fn bad_member_lists_are_refused() {
        for spec in ["", "1", "x=a:1", "0=a:1", "1=a:1,1=b:2", "1=nohost"] {
            assert!(parse_members(spec).is_err(), "{spec:?} accepted");
        }
    }

    #[test]
    fn tls_flags_must_come_in_working_sets() {
        let err = |args: &[&str]| resolve(args).unwrap_err().to_string();
        assert!(err(&["--cert-file", "a.crt"]).contains("--key-file"));
        assert!(err(&["--cert-file", "a.crt", "--key-file", "a.key"]).contains("--peer-cert-file"));
        assert!(
            err(&["--peer-cert-file", "n.crt", "--peer-key-file", "n.key"])
                .contains("--peer-trusted-ca-file")
        );
        assert!(err(&["--client-cert-auth"]).contains("--trusted-ca-file"));
        assert!(err(&["--trusted-ca-file", "ca.crt"]).contains("TLS listener"));
        let ok = resolve(&[
            "--peer-cert-file",
            "n.crt",
            "--peer-key-file",
            "n.key",
            "--peer-trusted-ca-file",
            "ca.crt",
            "--client-cert-auth",
            "--trusted-ca-file",
            "ca.crt",
        ])
        .unwrap();
        assert!(ok.tls.enabled() && ok.tls.client_cert_auth);
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 3\npartitions = 8\nlisten = \"127.0.0.1:7003\"\n",
        )
        .unwrap();
        let c = resolve(&["--config", path.to_str().unwrap(), "--partitions", "4"]).unwrap();
        assert_eq!(c.id, NodeId(3));
        assert_eq!(c.ring.partitions, 4);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(resolve(&["--config", path.to_str().unwrap()]).is_err());
    }

    #[test]
    fn a_peer_listener_apart_is_the_member_address() {
        let c = resolve(&[
            "--listen",
            "0.0.0.0:2379",
            "--advertise",
            "db1:2379",
            "--listen-peer",
            "0.0.0.0:2380",
            "--advertise-peer",
            "db1:2380",
            "--initial-cluster",
            "1=db1:2380,2=db2:2380",
        ])
        .unwrap();
        assert_eq!(c.advertise, "db1:2379");
        assert_eq!(c.peer_advertise, "db1:2380");
        assert_eq!(c.listen_peer.unwrap().port(), 2380);
        assert_eq!(c.initial_cluster[&NodeId(1)], "db1:2380");
        // Without --advertise-peer, peers use --listen-peer.
        let c = resolve(&["--listen-peer", "127.0.0.1:7101"]).unwrap();
        assert_eq!(c.peer_advertise, "127.0.0.1:7101");
        assert_eq!(c.advertise, "127.0.0.1:7001");
        assert_eq!(c.initial_cluster[&NodeId(1)], "127.0.0.1:7101");

        let err = |args: &[&str]| resolve(args).unwrap_err().to_string();
        assert!(err(&["--advertise-peer", "db1:2380"]).contains("--listen-peer"));
        assert!(err(&["--listen-peer", "127.0.0.1:7001"]).contains("must differ"));
        // --initial-cluster names members by their peer addresses.
        let wrong = err(&[
            "--listen-peer",
            "127.0.0.1:7101",
            "--initial-cluster",
            "1=127.0.0.1:7001",
        ]);
        assert!(wrong.contains("--advertise-peer"), "{wrong}");
    }

    #[test]
    fn port_zero_is_filled_in_once_bound_and_kept_out_of_a_static_cluster() {
        let mut alone = resolve(&["--listen", "127.0.0.1:0"]).unwrap();
        let bound = SocketAddr::from(([127, 0, 0, 1], 43123));
        alone.bound_to(bound, None);
        assert_eq!(alone.listen, bound);
        assert_eq!(alone.advertise, "127.0.0.1:43123");
        assert_eq!(alone.peer_advertise, "127.0.0.1:43123");
        assert_eq!(alone.initial_cluster[&NodeId(1)], "127.0.0.1:43123");

        let mut apart =
            resolve(&["--listen", "127.0.0.1:0", "--listen-peer", "127.0.0.1:0"]).unwrap();
        let peers = SocketAddr::from(([127, 0, 0, 1], 43124));
        apart.bound_to(bound, Some(peers));
        assert_eq!(apart.advertise, "127.0.0.1:43123");
        assert_eq!(apart.peer_advertise, "127.0.0.1:43124");
        assert_eq!(apart.initial_cluster[&NodeId(1)], "127.0.0.1:43124");

        // An explicit address stays what it says.
        let mut fixed = resolve(&["--listen", "0.0.0.0:0", "--advertise", "db1:7001"]).unwrap();
        fixed.bound_to(SocketAddr::from(([0, 0, 0, 0], 43123)), None);
        assert_eq!(fixed.advertise, "db1:7001");
        assert_eq!(fixed.initial_cluster[&NodeId(1)], "db1:7001");

        let err = |args: &[&str]| resolve(args).unwrap_err().to_string();
        let static_cluster = err(&[
            "--listen",
            "127.0.0.1:0",
            "--initial-cluster",
            "1=127.0.0.1:0,2=127.0.0.1:7002",
        ]);
        assert!(
            static_cluster.contains("port 0") && static_cluster.contains("--join"),
            "{static_cluster}"
        );
        assert!(err(&["--advertise", "db1:0"]).contains("port 0"));
        // The peer address is what the other members must know; the client port may float.
        let ok = resolve(&[
            "--listen",
            "127.0.0.1:0",
            "--listen-peer",
            "127.0.0.1:7101",
            "--initial-cluster",
            "1=127.0.0.1:7101,2=127.0.0.1:7102",
        ])
        .unwrap();
        assert_eq!(ok.initial_cluster[&NodeId(1)], "127.0.0.1:7101");
        assert!(resolve(&["--listen", "127.0.0.1:0", "--join", "127.0.0.1:7001"]).is_ok());
    }
}
