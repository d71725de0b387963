//! The key and cluster commands of `kv` against a real 3-node cluster: output, `--json`, and
//! exit codes.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::{closed_port, fails, kv_sync, success, RealCluster};

fn json(text: &str) -> Value {
    assert_eq!(text.lines().count(), 1, "one JSON object expected: {text}");
    serde_json::from_str(text).unwrap()
}

fn version(text: &str) -> u64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a version: {text:?}"))
}

#[test]
fn key_commands_print_values_and_versions_and_exit_with_their_codes() {
    let c = RealCluster::start();

    // put / get, human and JSON
    let v1 = version(&success(&mut c.kv(&["put", "greeting", "hello"])));
    assert_eq!(success(&mut c.kv(&["get", "greeting"])), "hello");
    assert_eq!(success(&mut c.kv(&["get", "greeting", "--stale"])), "hello");
    let read = json(&success(&mut c.kv(&["get", "greeting", "--json"])));
    assert_eq!(
        read,
        serde_json::json!({"key": "greeting", "version": v1, "value": "hello"})
    );

    // values from stdin and from a file, binary included
    let from_stdin = success(
        c.kv(&["put", "stdin", "-", "--json"])
            .write_stdin("piped\n"),
    );
    assert_eq!(json(&from_stdin)["key"], "stdin");
    assert_eq!(success(&mut c.kv(&["get", "stdin"])), "piped\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("value.bin");
    std::fs::write(&path, [0u8, 159, 146, 150]).unwrap();
    success(&mut c.kv(&["put", "binary", "--file", path.to_str().unwrap()]));
    let raw = c.kv(&["get", "binary"]).output().unwrap();
    assert_eq!(raw.stdout, [0u8, 159, 146, 150]);
    let read = json(&success(&mut c.kv(&["get", "binary", "--json"])));
    assert_eq!(read["value_b64"], "AJ+Slg==");

    // a missing key: exit 1
    let (code, stdout, stderr) = fails(&mut c.kv(&["get", "missing"]));
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("\"missing\" does not exist"), "{stderr}");
    let (code, stdout, _) = fails(&mut c.kv(&["get", "missing", "--json"]));
    assert_eq!(code, 1);
    assert_eq!(json(&stdout)["error"], "not_found");

    // cas: the right version writes, a stale one exits 3 with the current version
    let v2 = version(&success(&mut c.kv(&[
        "cas",
        "greeting",
        "--version",
        &v1.to_string(),
        "hi",
    ])));
    assert!(v2 > v1);
    let (code, _, stderr) =
        fails(&mut c.kv(&["cas", "greeting", "--version", &v1.to_string(), "hey"]));
    assert_eq!(code, 3);
    assert!(
        stderr.contains(&format!("the key is at version {v2}")),
        "{stderr}"
    );
    let (code, stdout, _) = fails(&mut c.kv(&[
        "cas",
        "greeting",
        "--version",
        &v1.to_string(),
        "hey",
        "--json",
    ]));
    assert_eq!(code, 3);
    let error = json(&stdout);
    assert_eq!(error["error"], "precondition_failed");
    assert_eq!(error["current_version"], v2);
    assert_eq!(success(&mut c.kv(&["get", "greeting"])), "hi");

    // create: only once
    let created = json(&success(&mut c.kv(&["create", "fresh", "new", "--json"])));
    assert_eq!(created["key"], "fresh");
    let (code, _, _) = fails(&mut c.kv(&["create", "fresh", "again"]));
    assert_eq!(code, 3);

    // delete: conditional, plain, and of a missing key
    let (code, _, _) = fails(&mut c.kv(&["delete", "greeting", "--if-version", "1"]));
    assert_eq!(code, 3);
    let deleted = json(&success(&mut c.kv(&[
        "delete",
        "greeting",
        "--if-version",
        &v2.to_string(),
        "--json",
    ])));
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["version"], v2);
    let stdout = success(&mut c.kv(&["delete", "fresh"]));
    assert!(stdout.starts_with("deleted version "), "{stdout}");
    let (code, _, _) = fails(&mut c.kv(&["delete", "fresh"]));
    assert_eq!(code, 1);

    // scan: a table for people, the server's JSON for scripts
    for i in 0..3 {
        success(&mut c.kv(&["put", &format!("list/{i}"), &format!("item {i}")]));
    }
    let output = c.kv(&["scan", "list/", "--limit", "2"]).output().unwrap();
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("VERSION"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("list/0") && lines[1].ends_with("item 0"),
        "{table}"
    );
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("--limit"));
    let scan = json(&success(&mut c.kv(&["scan", "list/", "--json"])));
    assert_eq!(scan["items"].as_array().unwrap().len(), 3);
    assert_eq!(scan["truncated"], false);
    assert_eq!(scan["items"][2]["value"], "item 2");

    // usage errors: exit 2
    for args in [
        &["put", "k"][..],
        &["cas", "k", "v"],
        &["scan", "--limit", "0"],
    ] {
        let output = c.kv(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn cluster_commands_show_the_cluster_and_report_refused_changes() {
    let mut c = RealCluster::start();

    let status = success(&mut c.kv(&["cluster", "status"]));
    assert!(status.contains("3 members, 4 partitions"), "{status}");
    assert!(status.contains("MEMBER  ADDRESS"), "{status}");
    let header = status
        .lines()
        .find(|l| l.starts_with("PARTITION"))
        .unwrap_or_else(|| panic!("no partition table: {status}"));
    for column in ["REPLICAS", "LEADER", "TERM", "APPLIED"] {
        assert!(header.contains(column), "{header}");
    }
    let rows = status
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .filter(|l| !l.starts_with("meta"));
    assert_eq!(rows.count(), 4, "{status}");

    let status = json(&success(&mut c.kv(&["cluster", "status", "--json"])));
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert_eq!(status["partitions"], 4);

    // A join of an address where no node answers, or of a taken id, is refused with its message.
    let (code, _, stderr) =
        fails(&mut c.kv(&["cluster", "join", "--id", "4", "--addr", "127.0.0.1:1"]));
    assert_ne!(code, 0);
    assert!(stderr.contains("no kv node answers"), "{stderr}");
    let (code, _, stderr) =
        fails(&mut c.kv(&["cluster", "join", "--id", "1", "--addr", "127.0.0.1:1"]));
    assert_ne!(code, 0);
    assert!(stderr.contains("already a member"), "{stderr}");
    // Removing a node that is not a member: exit 1 with the server's message.
    let (code, _, stderr) = fails(&mut c.kv(&["cluster", "leave", "9"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("not a member"), "{stderr}");
    // Going below the replication factor is refused, and says what to do instead.
    let (code, _, stderr) = fails(&mut c.kv(&["cluster", "leave", "3"]));
    assert_ne!(code, 0);
    assert!(stderr.contains("add a replacement first"), "{stderr}");
    // A fourth node joins (started with --join) and leaves again; the command waits for its
    // partitions to move off it.
    let n4 = c
        .runtime
        .block_on(c.cluster.add_node(1))
        .unwrap()
        .to_string();
    let out = success(&mut c.kv(&["--timeout", "60s", "cluster", "leave", &n4]));
    assert!(out.contains("left the cluster"), "{out}");
    let status = json(&success(&mut c.kv(&["cluster", "status", "--json"])));
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");

    // The load generator runs through kv-client too.
    let report = json(&success(&mut c.kv(&[
        "bench",
        "--via-client",
        "--requests",
        "100",
        "--concurrency",
        "4",
        "--read-ratio",
        "0.5",
        "--json",
    ])));
    assert_eq!(report["count"], 100);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["workload"]["via_client"], true);
}

#[test]
fn an_unreachable_endpoint_exits_4_with_a_one_line_error() {
    let endpoint = format!("127.0.0.1:{}", closed_port());
    for args in [
        &["get", "k"][..],
        &["put", "k", "v"],
        &["scan", "p"],
        &["cluster", "status"],
    ] {
        let mut command = kv_sync(&["--endpoints", &endpoint, "--timeout", "300ms"]);
        command.args(args);
        let (code, stdout, stderr) = fails(&mut command);
        assert_eq!(code, 4, "{args:?}: {stderr}");
        assert!(stdout.is_empty());
        assert!(stderr.contains(&endpoint), "{args:?}: {stderr}");
    }
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let help = success(&mut kv_sync(&["--help"]));
    for expected in [
        "get",
        "put",
        "create",
        "cas",
        "delete",
        "scan",
        "watch",
        "cluster",
        "bench",
        "Exit codes:",
        "3  precondition failed",
        "6  watch history compacted",
    ] {
        assert!(help.contains(expected), "missing {expected:?} in:\n{help}");
    }
}
