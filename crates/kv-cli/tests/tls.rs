//! `kv` against a TLS fake node that requires a client certificate and a token, with
//! certificates made by `kv cert` itself: the key commands (through kv-client) and `kv bench`
//! (its own HTTP client, and `--via-client`) present both; missing credentials fail with one
//! line each.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use support::{
    finish, json_report, kv, kv_command, kv_sync, success, Behaviour, FakeNode, TlsSetup,
};

const TOKEN: &str = "Zm9vYmFyLXRva2VuLWZvci10ZXN0cw";

/// A CA, node 1's certificate for 127.0.0.1 and the client `app`'s, all made by `kv cert`.
struct Certs {
    _temp: tempfile::TempDir,
    dir: PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let d = dir.to_str().unwrap();
        success(&mut kv_sync(&["cert", "create-ca", "--dir", d]));
        success(&mut kv_sync(&[
            "cert",
            "create-node",
            "--id",
            "1",
            "--host",
            "127.0.0.1",
            "--dir",
            d,
        ]));
        success(&mut kv_sync(&["cert", "create-client", "app", "--dir", d]));
        Certs { _temp: temp, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    async fn node(&self) -> FakeNode {
        let (cert, key, ca) = (
            self.dir.join("node-1.crt"),
            self.dir.join("node-1.key"),
            self.dir.join("ca.crt"),
        );
        FakeNode::start_tls(
            Behaviour::Healthy,
            TlsSetup {
                cert: &cert,
                key: &key,
                client_ca: Path::new(&ca),
                token: TOKEN,
            },
        )
        .await
    }
}

/// `--endpoints <node>` with every credential flag, then `args`.
fn with_credentials(certs: &Certs, node: &FakeNode, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "--endpoints",
        &node.endpoint,
        "--cacert",
        &certs.path("ca.crt"),
        "--cert",
        &certs.path("client-app.crt"),
        "--key",
        &certs.path("client-app.key"),
        "--token",
        TOKEN,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    all.extend(args.iter().map(|s| (*s).to_owned()));
    all
}

async fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kv(&args).await
}

fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "kv failed: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// The exit code and the one `error: ` line of a failed run.
fn failure(output: &std::process::Output) -> (i32, String) {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1,
        "not a one-line error: {stderr:?}"
    );
    (output.status.code().unwrap(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_and_bench_present_the_client_certificate_and_token() {
    let certs = Certs::make();
    let node = certs.node().await;

    let output = run(&with_credentials(&certs, &node, &["put", "k", "v"])).await;
    assert_success(&output);
    assert_eq!(output.stdout, b"1\n");
    let output = run(&with_credentials(&certs, &node, &["get", "k"])).await;
    assert_success(&output);
    assert_eq!(output.stdout, vec![b'v'; 200]);

    for via_client in [false, true] {
        let mut args = vec!["bench", "--requests", "20", "--concurrency", "2", "--json"];
        if via_client {
            args.push("--via-client");
        }
        let output = run(&with_credentials(&certs, &node, &args)).await;
        assert_success(&output);
        let report = json_report(&output);
        assert_eq!(report["ok"], 20, "via_client {via_client}: {report}");
        assert_eq!(report["errors"], 0);
    }
    assert_eq!(node.puts(), 41);

    // The same credentials from the environment.
    let mut command = kv_command(&["--endpoints", &node.endpoint, "get", "k"]);
    command
        .env("KV_CACERT", certs.path("ca.crt"))
        .env("KV_CERT", certs.path("client-app.crt"))
        .env("KV_KEY", certs.path("client-app.key"))
        .env("KV_TOKEN", TOKEN);
    assert_success(&finish(command).await);
    assert_eq!(node.gets(), 2);
    assert!(
        node.seen
            .client_certs
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_fail_with_one_line() {
    let certs = Certs::make();
    let node = certs.node().await;
    let full = with_credentials(&certs, &node, &["get", "k"]);
    let without = |flags: &[&str]| -> Vec<String> {
        let mut args = Vec::new();
        let mut skip = false;
        for arg in &full {
            if skip {
                skip = false;
            } else if flags.contains(&arg.as_str()) {
                skip = true;
            } else {
                args.push(arg.clone());
            }
        }
        args
    };

    // The system's roots do not know the test CA.
    let (code, stderr) = failure(&run(&without(&["--cacert"])).await);
    assert_eq!(code, 5);
    assert!(
        stderr.contains("TLS: handshake with https://127.0.0.1:")
            && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    // The node requires a client certificate.
    let (code, stderr) = failure(&run(&without(&["--cert", "--key"])).await);
    assert_eq!(code, 5);
    assert!(stderr.contains("TLS: handshake with"), "{stderr}");
    // The node requires the token.
    let output = run(&without(&["--token"])).await;
    let (code, stderr) = failure(&output);
    assert_eq!(code, 5);
    assert!(
        stderr.contains("unauthorized: missing or unknown token"),
        "{stderr}"
    );
    let mut json_args = without(&["--token"]);
    json_args.push("--json".to_owned());
    let output = run(&json_args).await;
    assert_eq!(json_report(&output)["error"], "unauthorized");
    // A wrong token is refused the same way.
    let mut wrong = without(&["--token"]);
    wrong.extend(["--token".to_owned(), "not-the-token".to_owned()]);
    let (code, stderr) = failure(&run(&wrong).await);
    assert_eq!(code, 5);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    // bench's health check over the same TLS: the endpoint counts as unreachable.
    let mut bench = without(&["--cacert"]);
    bench.truncate(bench.len() - 2);
    bench.extend(["bench".to_owned(), "--requests".to_owned(), "1".to_owned()]);
    let (code, stderr) = failure(&run(&bench).await);
    assert_eq!(code, 4);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert_eq!(node.puts() + node.gets(), 0);

    // A key file that is not there, and a CA file that is not PEM.
    let mut missing = without(&["--key"]);
    missing.splice(0..0, ["--key".to_owned(), certs.path("nope.key")]);
    let (code, stderr) = failure(&run(&missing).await);
    assert_eq!(code, 5);
    assert!(stderr.contains("reading --key"), "{stderr}");
    let mut not_pem = without(&["--cacert"]);
    not_pem.splice(0..0, ["--cacert".to_owned(), certs.path("client-app.key")]);
    let (code, stderr) = failure(&run(&not_pem).await);
    assert_eq!(code, 5);
    assert!(
        stderr.contains("TLS: the CA certificate PEM holds no CERTIFICATE"),
        "{stderr}"
    );

    // --cert without --key is a usage error.
    let output = run(&without(&["--key"])).await;
    assert_eq!(output.status.code(), Some(2));
}
