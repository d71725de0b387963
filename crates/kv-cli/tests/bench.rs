//! `kv bench` against fake nodes: it sends the load, stops by itself, and reports it.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod support;

use axum::http::StatusCode;
use serde_json::Value;
use support::{closed_port, finish, json_report, kv, kv_command, wait_until, Behaviour, FakeNode};

fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "kv failed: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

fn histogram_total(report: &Value) -> u64 {
    report["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_count_run_sends_exactly_that_many_writes_and_reports_json() {
    let node = FakeNode::start(Behaviour::Healthy).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--json",
    ])
    .await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["count"], 200);
    assert_eq!(report["ok"], 200);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["error_kinds"], serde_json::json!({}));
    assert_eq!(report["writes"], 200);
    assert_eq!(report["reads"], 0);
    assert_eq!(report["interrupted"], false);
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0);
    let latency = &report["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
    assert!(latency["p99"].as_f64().unwrap() <= latency["max"].as_f64().unwrap());
    assert_eq!(histogram_total(&report), 200);
    assert_eq!(node.puts(), 200);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ratio_mixes_reads_and_asks_for_the_consistency() {
    let node = FakeNode::start(Behaviour::Healthy).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--read-ratio",
        "0.5",
        "--consistency",
        "stale",
        "--json",
    ])
    .await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["count"], 200);
    assert_eq!(report["errors"], 0);
    let reads = report["reads"].as_u64().unwrap();
    let writes = report["writes"].as_u64().unwrap();
    assert_eq!(reads + writes, 200);
    assert!(reads > 0 && writes > 0, "reads {reads}, writes {writes}");
    assert_eq!(node.gets(), reads);
    assert_eq!(
        node.seen
            .stale_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        reads
    );
    assert_eq!(node.puts(), writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_counted_by_status_without_stopping_the_run() {
    let node = FakeNode::start(Behaviour::Fail(StatusCode::SERVICE_UNAVAILABLE)).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--requests",
        "50",
        "--concurrency",
        "4",
        "--json",
    ])
    .await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["count"], 50);
    assert_eq!(report["ok"], 0);
    assert_eq!(report["errors"], 50);
    assert_eq!(report["error_kinds"], serde_json::json!({"http_503": 50}));
    assert!(report["latency_ms"].is_null());
    assert_eq!(node.puts(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_run_stops_by_itself() {
    let node = FakeNode::start(Behaviour::Healthy).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--duration",
        "300ms",
        "--concurrency",
        "2",
        "--json",
    ])
    .await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["interrupted"], false);
    assert!(report["elapsed_secs"].as_f64().unwrap() >= 0.3);
    let count = report["count"].as_u64().unwrap();
    assert!(count > 0);
    assert_eq!(report["errors"], 0);
    assert_eq!(histogram_total(&report), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_from_the_environment_share_the_load() {
    let first = FakeNode::start(Behaviour::Healthy).await;
    let second = FakeNode::start(Behaviour::Healthy).await;
    let mut command = kv_command(&["bench", "--requests", "100", "--concurrency", "4", "--json"]);
    command.env(
        "KV_ENDPOINTS",
        format!("{},{}", first.endpoint, second.endpoint),
    );
    let output = finish(command).await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["count"], 100);
    assert_eq!(report["workload"]["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(first.puts() + second.puts(), 100);
    assert!(first.puts() > 0 && second.puts() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_report_has_figures_and_histogram_and_no_progress_off_a_terminal() {
    let node = FakeNode::start(Behaviour::Healthy).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--requests",
        "100",
        "--concurrency",
        "4",
    ])
    .await;
    assert_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "ops/s",
        "count       100  (0 reads, 100 writes)",
        "errors      0",
        "p99.9",
        "latency histogram (ms)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(stdout.lines().any(|l| l.contains('#')), "{stdout}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_run_early_and_still_reports() {
    let node = FakeNode::start(Behaviour::Healthy).await;
    let child = kv_command(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--duration",
        "10m",
        "--concurrency",
        "2",
        "--json",
    ])
    .spawn()
    .unwrap();
    wait_until(|| node.puts() >= 20).await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(support::RUN_LIMIT, child.wait_with_output())
        .await
        .expect("kv did not stop on Ctrl-C")
        .unwrap();
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["interrupted"], true);
    assert!(report["count"].as_u64().unwrap() >= 1);
    assert_eq!(report["errors"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_exits_4_with_a_one_line_error() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let output = kv(&["--endpoints", &endpoint, "bench", "--requests", "10"]).await;
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_usage_errors_with_exit_2() {
    for args in [
        &["bench", "--read-ratio", "2"][..],
        &["bench", "--duration", "ten"],
        &["bench", "--concurrency", "0"],
        &["bench", "--frobnicate"],
        &["--endpoints", "ftp://127.0.0.1:1", "bench"],
    ] {
        let output = kv(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_client_sends_the_load_through_kv_client() {
    let node = FakeNode::start(Behaviour::Healthy).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "bench",
        "--via-client",
        "--requests",
        "100",
        "--concurrency",
        "4",
        "--read-ratio",
        "0.5",
        "--json",
    ])
    .await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["count"], 100);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["workload"]["via_client"], true);
    assert_eq!(node.puts() + node.gets(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_client_counts_failures_by_client_error_kind() {
    let node = FakeNode::start(Behaviour::Fail(StatusCode::SERVICE_UNAVAILABLE)).await;
    let output = kv(&[
        "--endpoints",
        &node.endpoint,
        "--timeout",
        "200ms",
        "bench",
        "--via-client",
        "--requests",
        "4",
        "--concurrency",
        "2",
        "--json",
    ])
    .await;
    assert_success(&output);
    let report = json_report(&output);
    assert_eq!(report["errors"], 4);
    assert_eq!(report["error_kinds"], serde_json::json!({"unavailable": 4}));
    assert!(node.puts() > 4, "503s are retried: {} puts", node.puts());
}
