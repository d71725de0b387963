//! The command grammar: global flags, then one [`Command`] variant per subcommand.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::bench::BenchArgs;
use crate::endpoints::Endpoint;
use crate::{auth, certs, duration};

/// The exit codes, as `kv --help` lists them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  not found (the key, or the node of `cluster leave`)
  2  usage error
  3  precondition failed (cas, create, delete --if-version)
  4  cluster unavailable or unreachable (no leader or quorum, connection refused, timeout),
     or a `cluster leave` whose drain has not finished within --timeout
  5  any other error (invalid input such as a value too large, a token or certificate that
     is refused or not trusted, server error, local I/O, a file `kv cert` will not replace)
  6  watch history compacted: `kv watch --since` named a cursor older than the history the
     nodes keep (the error names the cursor to resume from, after re-reading the keys)

Errors are one line on stderr starting with `error: `; with --json, also one JSON object
{\"error\": kind, \"message\": text} on stdout.";

/// Command-line client for the kv store.
#[derive(Debug, Parser)]
#[command(
    name = "kv",
    version,
    about,
    propagate_version = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Nodes to talk to: comma-separated base URLs (`http://` is assumed when omitted).
    #[arg(
        long,
        global = true,
        env = "KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7001",
        value_parser = Endpoint::parse,
    )]
    pub endpoints: Vec<Endpoint>,

    /// How long a command may wait for the cluster, retries included, e.g. 5s or 500ms (for
    /// `bench` without --via-client: the timeout of each HTTP request).
    #[arg(
        long,
        global = true,
        env = "KV_TIMEOUT",
        default_value = "5s",
        value_parser = duration::parse_positive,
    )]
    pub timeout: Duration,

    /// Print JSON for scripts instead of human output (one object on stdout, errors included).
    #[arg(long, global = true)]
    pub json: bool,

    /// CA certificate (PEM) that signed the nodes' certificates: trusted for https://
    /// endpoints instead of the system's roots.
    #[arg(long, global = true, env = "KV_CACERT", value_name = "PATH")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM) to present to nodes that ask for one (needs --key).
    #[arg(
        long = "cert",
        global = true,
        env = "KV_CERT",
        value_name = "PATH",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    // Named `client_key`, not `key`: global flags share the subcommands' namespace, where
    // `key` is the key commands' argument.
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        global = true,
        env = "KV_KEY",
        value_name = "PATH",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Token sent as `Authorization: Bearer TOKEN` with every request (in the clear over
    /// http://).
    #[arg(
        long,
        global = true,
        env = "KV_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = auth::parse_token,
    )]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `kv`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a key's value to stdout, as raw bytes.
    Get(GetArgs),
    /// Write a value; prints the key's new version.
    #[command(override_usage = "kv put [OPTIONS] <KEY> <VALUE | - | --file PATH>")]
    Put(WriteArgs),
    /// Write a value only if the key does not exist yet; prints the new version.
    #[command(override_usage = "kv create [OPTIONS] <KEY> <VALUE | - | --file PATH>")]
    Create(WriteArgs),
    /// Compare-and-set: write a value only if the key is at --version; prints the new version.
    #[command(
        disable_version_flag = true,
        override_usage = "kv cas [OPTIONS] --version <N> <KEY> <VALUE | - | --file PATH>"
    )]
    Cas(CasArgs),
    /// Delete a key; prints the version it had.
    Delete(DeleteArgs),
    /// Give a key written with --ttl a new time to live from now, keeping its value and
    /// version (a lock's or a lease's keep-alive); prints the version.
    Refresh(RefreshArgs),
    /// List the keys starting with a prefix, in key order, with versions and values.
    Scan(ScanArgs),
    /// Print the changes of the keys starting with a prefix (or of one key) as they happen,
    /// one line each, until interrupted; resumes by itself when a node fails.
    Watch(WatchArgs),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Drive load against the cluster and report throughput and latency.
    Bench(BenchArgs),
    /// Make the certificates of a TLS cluster: a CA, node and client certificates (PEM files).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Make client tokens and the hashes that a node's auth file holds.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `kv cert` subcommands. Each writes `<DIR>/<NAME>.crt` and `<DIR>/<NAME>.key` (the key
/// readable by its owner only) and refuses to replace a file unless --overwrite.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a CA (self-signed) to sign node or client certificates: ca.crt, ca.key. Use one
    /// for the nodes (the peer CA) and, in another --dir, one for clients, or one for both.
    CreateCa(CreateCaArgs),
    /// Make node N's certificate, signed by the CA: node-N.crt, node-N.key. It names node-N
    /// and every --host, and serves both as the node's server certificate and as its client
    /// certificate towards its peers.
    CreateNode(CreateNodeArgs),
    /// Make the client certificate of NAME, signed by the CA: client-NAME.crt, client-NAME.key.
    CreateClient(CreateClientArgs),
}

/// Where `kv cert` writes, and whether it may replace files.
#[derive(Debug, Clone, Args)]
pub struct CertFiles {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    pub dir: PathBuf,
    /// Replace files that already exist.
    #[arg(long)]
    pub overwrite: bool,
}

/// The CA that signs, for `kv cert create-node` and `create-client`.
#[derive(Debug, Clone, Args)]
pub struct CertSigner {
    /// The CA's certificate (by default `ca.crt` in --dir).
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key (by default `ca.key` in --dir).
    #[arg(long, value_name = "PATH")]
    pub ca_key: Option<PathBuf>,
}

/// Flags of `kv cert create-ca`.
#[derive(Debug, Clone, Args)]
pub struct CreateCaArgs {
    /// The CA's common name.
    #[arg(long, default_value = certs::DEFAULT_CA_NAME, value_parser = parse_ca_name)]
    pub name: String,
    /// Days the CA is valid.
    #[arg(long, default_value_t = certs::DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(certs::MAX_DAYS)))]
    pub days: u32,
    #[command(flatten)]
    pub files: CertFiles,
}

/// Flags of `kv cert create-node`.
#[derive(Debug, Clone, Args)]
pub struct CreateNodeArgs {
    /// The node's id (its certificate names `node-<N>`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// A name or IP address clients and peers reach the node by; repeat for each.
    #[arg(long = "host", value_name = "HOST", required = true, value_parser = certs::parse_host)]
    pub hosts: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(certs::MAX_DAYS)))]
    pub days: u32,
    #[command(flatten)]
    pub signer: CertSigner,
    #[command(flatten)]
    pub files: CertFiles,
}

/// Flags of `kv cert create-client`.
#[derive(Debug, Clone, Args)]
pub struct CreateClientArgs {
    /// The client's name (its certificate's common name): letters, digits, `.`, `_`, `-`; not
    /// `node-<N>`.
    #[arg(value_parser = parse_client_name)]
    pub name: String,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(certs::MAX_DAYS)))]
    pub days: u32,
    #[command(flatten)]
    pub signer: CertSigner,
    #[command(flatten)]
    pub files: CertFiles,
}

fn parse_ca_name(input: &str) -> Result<String, String> {
    certs::check_ca_name(input).map(|()| input.to_owned())
}

fn parse_client_name(input: &str) -> Result<String, String> {
    certs::check_client_name(input).map(|()| input.to_owned())
}

/// `kv auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print the hash of TOKEN as a node's auth file holds it: sha256:<64 hex digits>.
    HashToken(HashTokenArgs),
    /// Make a random token (32 random bytes, URL-safe base64 without padding); prints the
    /// token on the first line and its hash (as `hash-token` prints it) on the second.
    NewToken,
}

/// Flags of `kv auth hash-token`.
#[derive(Debug, Clone, Args)]
pub struct HashTokenArgs {
    /// The token; `-` reads it from stdin (one line), which keeps it out of the shell history.
    #[arg(value_parser = auth::parse_token)]
    pub token: String,
}

/// Flags of `kv get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The key (any text; `/` is an ordinary character).
    pub key: String,
    /// Read from any replica (may miss the latest writes) instead of the partition's leader.
    #[arg(long)]
    pub stale: bool,
}

/// Where a written value comes from: the argument, a file, or stdin (`-`).
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ValueSource {
    /// The value; `-` reads it from stdin.
    #[arg(value_name = "VALUE")]
    pub value: Option<OsString>,
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// Flags of `kv put` and `kv create`.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// The key (any text; `/` is an ordinary character).
    pub key: String,
    #[command(flatten)]
    pub value: ValueSource,
    /// The key expires this long after the write (e.g. 30s, 5m; 1s to 366 days) unless
    /// refreshed (`kv refresh`) or rewritten; without it the key is permanent.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub ttl: Option<Duration>,
}

/// Flags of `kv refresh`.
#[derive(Debug, Clone, Args)]
pub struct RefreshArgs {
    /// The key.
    pub key: String,
    /// The new time to live, from now (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub ttl: Duration,
}

/// Flags of `kv cas`.
#[derive(Debug, Clone, Args)]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// The version the key must be at (as printed by `kv put` or `kv get --json`).
    #[arg(long, value_name = "N")]
    pub version: u64,
    #[command(flatten)]
    pub value: ValueSource,
    /// The key expires this long after the write (see `kv put --ttl`).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub ttl: Option<Duration>,
}

/// Flags of `kv delete`.
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Delete only if the key is at this version.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
}

/// Flags of `kv scan`.
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// Key prefix; empty lists every key.
    #[arg(default_value = "")]
    pub prefix: String,
    /// Most keys listed.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Only keys after this one (the `next` of the previous page).
    #[arg(long, alias = "start-after", value_name = "KEY")]
    pub after: Option<String>,
    /// Read from any replica instead of each partition's leader.
    #[arg(long)]
    pub stale: bool,
    /// Keys and versions only, without values.
    #[arg(long)]
    pub keys_only: bool,
}

/// Flags of `kv watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Key prefix; empty watches every key. With --exact: the one key to watch.
    #[arg(default_value = "")]
    pub prefix: String,
    /// Start after this cursor (printed by `--json`), instead of from now: no change after it
    /// is missed.
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
    pub since: Option<String>,
    /// Watch exactly the key PREFIX, not the keys starting with it. (Not `--key`: that is the
    /// global flag of the client certificate's private key.)
    #[arg(long)]
    pub exact: bool,
}

/// A cursor is opaque printable ASCII without spaces.
fn parse_cursor(input: &str) -> Result<String, String> {
    if input.is_empty() || !input.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "a cursor is printable ASCII without spaces (as `kv watch --json` prints it)".into(),
        );
    }
    Ok(input.to_owned())
}

/// `kv cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, and per partition: replicas, leader, term and applied index.
    Status,
    /// Add a node to the cluster.
    Join(JoinArgs),
    /// Remove a node from the cluster (its partitions are moved first).
    Leave(LeaveArgs),
}

/// Flags of `kv cluster join`.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The new node's id.
    #[arg(long)]
    pub id: u64,
    /// The address the new node listens on, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
}

/// Flags of `kv cluster leave`.
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {
    /// The id of the node to remove.
    pub id: u64,
    /// The node is down: re-replicate its partitions from the other replicas instead of
    /// draining it.
    #[arg(long)]
    pub force: bool,
}

/// Consistency asked of reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Served by the partition's leader after confirming its leadership.
    Linearizable,
    /// Served by any replica; may miss the latest writes.
    Stale,
}

impl Consistency {
    /// The query string that asks for this consistency (`None`: the server's default).
    pub fn query(self) -> Option<&'static str> {
        match self {
            Consistency::Linearizable => None,
            Consistency::Stale => Some("consistency=stale"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Stop;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kv").chain(args.iter().copied()))
    }

    #[test]
    fn grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_defaults() {
        let cli = parse(&["--endpoints", "http://127.0.0.1:7001", "bench"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench: {:?}", cli.command)
        };
        assert_eq!(args.concurrency, 64);
        assert_eq!(args.stop(), Stop::After(Duration::from_secs(10)));
        assert_eq!(args.keys, 10_000);
        assert_eq!(args.value_size, 128);
        assert_eq!(args.read_ratio, 0.0);
        assert_eq!(args.key_prefix, "bench/");
        assert_eq!(args.consistency, Consistency::Linearizable);
        assert!(!args.via_client);
        assert!(!cli.json);
        assert_eq!(cli.timeout, Duration::from_secs(5));
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "bench",
            "--endpoints",
            "127.0.0.1:7001,http://127.0.0.1:7002/",
            "--requests",
            "5",
            "--consistency",
            "stale",
        ])
        .unwrap();
        let endpoints: Vec<&str> = cli.endpoints.iter().map(Endpoint::as_str).collect();
        assert_eq!(
            endpoints,
            ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        let Command::Bench(args) = cli.command else {
            panic!("not bench: {:?}", cli.command)
        };
        assert_eq!(args.stop(), Stop::Requests(5));
        assert_eq!(args.consistency, Consistency::Stale);
    }

    #[test]
    fn bad_bench_flags_are_usage_errors() {
        for bad in [
            &["bench", "--read-ratio", "1.5"][..],
            &["bench", "--read-ratio", "NaN"],
            &["bench", "--concurrency", "0"],
            &["bench", "--requests", "0"],
            &["bench", "--keys", "0"],
            &["bench", "--duration", "10"],
            &["bench", "--duration", "0s"],
            &["bench", "--duration", "1s", "--requests", "3"],
            &["bench", "--consistency", "eventual"],
            &["--endpoints", "ftp://x", "bench"],
            &["bench", "--nope"],
            &[],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn key_commands_parse_values_from_argument_file_or_stdin() {
        let cli = parse(&["put", "k", "v", "--json"]).unwrap();
        assert!(cli.json);
        let Command::Put(args) = cli.command else {
            panic!("not put")
        };
        assert_eq!(args.key, "k");
        assert_eq!(args.value.value.as_deref(), Some("v".as_ref()));

        let cli = parse(&["cas", "k", "--version", "7", "--file", "/tmp/x"]).unwrap();
        let Command::Cas(args) = cli.command else {
            panic!("not cas")
        };
        assert_eq!(args.version, 7);
        assert_eq!(args.value.file, Some(PathBuf::from("/tmp/x")));

        let cli = parse(&["create", "k", "-"]).unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.value.value.as_deref(), Some("-".as_ref()));

        let cli = parse(&["delete", "k", "--if-version", "3"]).unwrap();
        let Command::Delete(args) = cli.command else {
            panic!("not delete")
        };
        assert_eq!(args.if_version, Some(3));

        let cli = parse(&["cluster", "leave", "4", "--force"]).unwrap();
        let Command::Cluster(ClusterCommand::Leave(args)) = cli.command else {
            panic!("not leave")
        };
        assert_eq!((args.id, args.force), (4, true));
    }

    #[test]
    fn credentials_are_global_and_cert_needs_key() {
        let cli = parse(&[
            "get", "k", "--cacert", "ca.crt", "--cert", "c.crt", "--key", "c.key", "--token", "t0k",
        ])
        .unwrap();
        assert_eq!(cli.cacert, Some(PathBuf::from("ca.crt")));
        assert_eq!(cli.client_cert, Some(PathBuf::from("c.crt")));
        assert_eq!(cli.client_key, Some(PathBuf::from("c.key")));
        assert_eq!(cli.token.as_deref(), Some("t0k"));
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.key, "k");
        for bad in [
            &["--cert", "c.crt", "get", "k"][..],
            &["get", "k", "--key", "c.key"],
            &["--token", "two words", "get", "k"],
            &["--token", "", "get", "k"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn cert_and_auth_commands_parse_with_their_defaults() {
        let cli = parse(&["cert", "create-ca"]).unwrap();
        let Command::Cert(CertCommand::CreateCa(args)) = cli.command else {
            panic!("not create-ca")
        };
        assert_eq!(args.name, "kv-ca");
        assert_eq!(args.days, 3650);
        assert_eq!(args.files.dir, PathBuf::from("./certs"));
        assert!(!args.files.overwrite);

        let cli = parse(&[
            "cert",
            "create-node",
            "--id",
            "3",
            "--host",
            "127.0.0.1",
            "--host",
            "LocalHost",
        ])
        .unwrap();
        let Command::Cert(CertCommand::CreateNode(args)) = cli.command else {
            panic!("not create-node")
        };
        assert_eq!((args.id, args.days), (3, 365));
        assert_eq!(args.hosts, ["127.0.0.1", "localhost"]);
        assert_eq!(args.signer.ca_cert, None);

        let cli = parse(&[
            "cert",
            "create-client",
            "app",
            "--days",
            "30",
            "--overwrite",
        ])
        .unwrap();
        let Command::Cert(CertCommand::CreateClient(args)) = cli.command else {
            panic!("not create-client")
        };
        assert_eq!((args.name.as_str(), args.days), ("app", 30));
        assert!(args.files.overwrite);

        let cli = parse(&["auth", "hash-token", "abc"]).unwrap();
        let Command::Auth(AuthCommand::HashToken(args)) = cli.command else {
            panic!("not hash-token")
        };
        assert_eq!(args.token, "abc");
        assert!(matches!(
            parse(&["auth", "new-token"]).unwrap().command,
            Command::Auth(AuthCommand::NewToken)
        ));
    }

    #[test]
    fn bad_cert_and_auth_command_lines_are_usage_errors() {
        for bad in [
            &["cert", "create-node", "--id", "0", "--host", "h"][..],
            &["cert", "create-node", "--id", "1"],
            &["cert", "create-node", "--id", "1", "--host", "h:7001"],
            &["cert", "create-node", "--host", "h"],
            &["cert", "create-client", "node-2"],
            &["cert", "create-client", "a/b"],
            &["cert", "create-client"],
            &["cert", "create-ca", "--days", "0"],
            &["cert", "create-ca", "--name", ""],
            &["auth", "hash-token"],
            &["auth", "hash-token", "a b"],
            &["auth"],
            &["cert"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn watch_parses_prefix_cursor_and_exact() {
        let cli = parse(&["watch", "app/", "--since", "p0:4,p1:9", "--json"]).unwrap();
        assert!(cli.json);
        let Command::Watch(args) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(args.prefix, "app/");
        assert_eq!(args.since.as_deref(), Some("p0:4,p1:9"));
        assert!(!args.exact);

        let cli = parse(&["watch"]).unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(
            (args.prefix.as_str(), args.since, args.exact),
            ("", None, false)
        );

        // `--exact` beside the global `--cert`/`--key` client certificate flags.
        let cli = parse(&[
            "watch", "app/x", "--exact", "--cert", "c.crt", "--key", "c.key",
        ])
        .unwrap();
        assert_eq!(cli.client_key, Some(PathBuf::from("c.key")));
        let Command::Watch(args) = cli.command else {
            panic!("not watch")
        };
        assert!(args.exact);

        for bad in [
            &["watch", "a", "--since", ""][..],
            &["watch", "a", "--since", "two words"],
            &["watch", "a", "b"],
            &["watch", "a", "--key"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_key_command_lines_are_usage_errors() {
        for bad in [
            &["put", "k"][..],
            &["put", "k", "v", "--file", "f"],
            &["cas", "k", "v"],
            &["cas", "k", "--version", "x", "v"],
            &["get"],
            &["get", "k", "extra"],
            &["delete", "k", "--if-version", "-1"],
            &["scan", "p", "--limit", "0"],
            &["cluster"],
            &["cluster", "join", "--id", "4"],
            &["cluster", "leave"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }
}
