//! The `kv` CLI and kv-client against a real cluster with TLS for clients, node certificates
//! between peers and client tokens: every operation works with the right credentials, and the
//! wrong ones get one-line errors and change nothing.
#![allow(clippy::unwrap_used)]

mod support;

use kv_node::auth::hash_token;
use kv_node::testing::ClusterOptions;
use support::{fails, success, RealCluster};

fn auth_file() -> String {
    format!(
        "[[token]]\nname = \"admin\"\nhash = \"{}\"\nrole = \"admin\"\n\n\
         [[token]]\nname = \"reader\"\nhash = \"{}\"\nrole = \"readonly\"\n",
        hash_token("admin-token"),
        hash_token("reader-token")
    )
}

#[test]
fn kv_and_kv_client_work_over_tls_with_tokens() {
    let c = RealCluster::start_with(ClusterOptions {
        nodes: 3,
        partitions: 4,
        tls: true,
        auth_file: Some(auth_file()),
        token: Some("admin-token".into()),
        ..ClusterOptions::default()
    });
    let ca = c
        .cluster
        .ca()
        .unwrap()
        .cert_file
        .to_str()
        .unwrap()
        .to_string();
    let admin = |args: &[&str]| {
        let mut cmd = c.kv(&["--cacert", &ca, "--token", "admin-token"]);
        cmd.args(args);
        cmd
    };
    // Every operation through kv.
    assert!(success(&mut admin(&["put", "greeting", "hello"]))
        .trim()
        .parse::<u64>()
        .is_ok());
    assert_eq!(success(&mut admin(&["get", "greeting"])), "hello");
    success(&mut admin(&["create", "fresh", "1"]));
    let version = success(&mut admin(&["put", "swap", "a"]))
        .trim()
        .to_string();
    success(&mut admin(&["cas", "swap", "--version", &version, "b"]));
    let scan = success(&mut admin(&["scan", "", "--json"]));
    assert!(scan.contains("greeting") && scan.contains("swap"), "{scan}");
    success(&mut admin(&["delete", "fresh"]));
    assert!(success(&mut admin(&["cluster", "status"])).contains("PARTITION"));
    let bench = success(&mut admin(&[
        "bench",
        "--requests",
        "50",
        "--concurrency",
        "4",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&bench).unwrap();
    assert_eq!(report["errors"], 0, "{bench}");

    // A read-only token reads but cannot write; no token and no CA fail, one line each.
    let mut reader = c.kv(&[
        "--cacert",
        &ca,
        "--token",
        "reader-token",
        "get",
        "greeting",
    ]);
    assert_eq!(success(&mut reader), "hello");
    let mut write = c.kv(&[
        "--cacert",
        &ca,
        "--token",
        "reader-token",
        "put",
        "greeting",
        "x",
    ]);
    let (code, _, stderr) = fails(&mut write);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("readonly") || stderr.contains("forbid"),
        "{stderr}"
    );
    let (code, _, _) = fails(&mut c.kv(&["--cacert", &ca, "get", "greeting"]));
    assert_ne!(code, 0);
    let (code, _, _) = fails(&mut c.kv(&["--token", "admin-token", "get", "greeting"]));
    assert_ne!(code, 0);
    assert_eq!(success(&mut admin(&["get", "greeting"])), "hello");

    // kv-client with the CA and a token.
    let pem = std::fs::read(&ca).unwrap();
    let endpoints: Vec<String> = c.endpoints().split(',').map(str::to_string).collect();
    c.runtime.block_on(async {
        let client = kv_client::Client::builder()
            .endpoints(endpoints.clone())
            .ca_cert_pem(pem.clone())
            .token("admin-token")
            .build()
            .unwrap();
        let v = client.put("from-client", "yes").await.unwrap();
        let got = client.get("from-client").await.unwrap().unwrap();
        assert_eq!((got.data.as_ref(), got.version), (&b"yes"[..], v));
        client
            .compare_and_set("from-client", v, "again")
            .await
            .unwrap();
        assert!(client.scan("from-", 10).await.unwrap().items.len() == 1);
        // The same TLS settings, given as one TlsConfig.
        let reader = kv_client::Client::builder()
            .endpoints(endpoints)
            .tls(kv_client::TlsConfig::new().ca_cert_pem(pem))
            .token("reader-token")
            .build()
            .unwrap();
        assert!(reader.put("from-client", "no").await.is_err());
        assert_eq!(
            reader
                .get("from-client")
                .await
                .unwrap()
                .unwrap()
                .data
                .as_ref(),
            b"again"
        );
    });
}
