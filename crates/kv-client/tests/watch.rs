//! Watch streams against a scripted HTTP server on loopback (not kv-node): the Server-Sent
//! Events parse of every message kind across odd chunk boundaries, reconnecting from the last
//! cursor after a drop or a passing error, failing over to the next endpoint, and the
//! `compacted` and other final refusals.

#![allow(clippy::unwrap_used)] // tests: a failure here is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kv_client::api::{WatchEvent, WatchEventKind};
use kv_client::{Client, Error, Watch, Watched};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a scripted event stream ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The last chunk of the chunked body: a clean end.
    Close,
    /// The connection is closed in the middle of the body.
    Abort,
    /// The connection stays open and silent.
    Hang,
}

/// What the server does with one connection.
#[derive(Debug, Clone)]
enum Conn {
    /// `200 text/event-stream`, the pieces sent as separate chunks a few ms apart.
    Stream(Vec<Vec<u8>>, End),
    /// A complete answer with a JSON body.
    Answer(u16, &'static str),
}

/// An HTTP/1.1 server that serves its connections, in order, as scripted (connections past
/// the script hang), and records each request's target and headers.
struct ScriptedServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct Request {
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl ScriptedServer {
    async fn start(script: Vec<Conn>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut script = script.into_iter();
                let mut open = Vec::new();
                while let Ok((mut socket, _)) = listener.accept().await {
                    let Some(request) = read_head(&mut socket).await else {
                        continue;
                    };
                    requests.lock().unwrap().push(request);
                    match script.next() {
                        Some(conn) => open.push(tokio::spawn(serve(socket, conn))),
                        None => open.push(tokio::spawn(async move {
                            let _held = socket;
                            std::future::pending::<()>().await;
                        })),
                    }
                }
            })
        };
        ScriptedServer {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(socket: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8(buf).ok()?;
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Request { target, headers })
}

async fn serve(mut socket: TcpStream, conn: Conn) {
    match conn {
        Conn::Answer(status, body) => {
            let answer = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
        Conn::Stream(pieces, end) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for piece in pieces {
                let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                chunk.extend_from_slice(&piece);
                chunk.extend_from_slice(b"\r\n");
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
                let _ = socket.flush().await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            match end {
                End::Close => {
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                }
                End::Abort => {}
                End::Hang => std::future::pending::<()>().await,
            }
        }
    }
}

/// `text` cut into pieces of `size` bytes (the last one shorter).
fn pieces(text: &str, size: usize) -> Vec<Vec<u8>> {
    text.as_bytes().chunks(size).map(<[u8]>::to_vec).collect()
}

fn put(key: &str, version: u64, value: &str) -> WatchEvent {
    WatchEvent {
        kind: WatchEventKind::Put,
        key: key.into(),
        version,
        value: Some(value.into()),
        value_b64: None,
    }
}

fn change(cursor: &str, event: WatchEvent) -> Watched {
    Watched {
        cursor: cursor.into(),
        event: Some(event),
    }
}

fn cursor_only(cursor: &str) -> Watched {
    Watched {
        cursor: cursor.into(),
        event: None,
    }
}

/// An SSE message carrying a put.
fn put_message(cursor: &str, key: &str, version: u64, value: &str) -> String {
    format!(
        "id: {cursor}\ndata: {{\"type\":\"put\",\"key\":\"{key}\",\"version\":{version},\
         \"value\":\"{value}\"}}\n\n"
    )
}

fn client(endpoints: &[&str]) -> Client {
    Client::builder()
        .endpoints(endpoints.iter().copied())
        .timeout(Duration::from_secs(5))
        .token("t0k")
        .build()
        .unwrap()
}

/// The next item, failing the test if none comes within 10 s.
async fn next(watch: &mut Watch) -> Option<kv_client::Result<Watched>> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch yields within 10 s")
}

async fn next_ok(watch: &mut Watch) -> Watched {
    next(watch).await.expect("an item").expect("not an error")
}

#[tokio::test]
async fn every_message_kind_is_read_across_odd_chunk_boundaries() {
    let stream = concat!(
        ": keep-alive\r\n\r\n",
        "id: p0:1,p1:0\r\n",
        "data: {\"type\":\"put\",\"key\":\"app/x\",\"version\":12,\"value\":\"text\"}\r\n\r\n",
        "id: p0:2,p1:0\n",
        "data: {\"type\":\"put\",\"key\":\"app/bin\",\n",
        "data: \"version\":3,\"value_b64\":\"/wCh\"}\n\n",
        ": keep-alive\n\n",
        "id: p0:2,p1:7\n\n",
        "id: p0:3,p1:7\r\ndata: {\"type\":\"delete\",\"key\":\"app/x\",\"version\":12}\r\n\r\n",
        "id: p0:4,p1:7\rdata: {\"type\":\"expire\",\"key\":\"app/ttl\",\"version\":5}\r\r",
    );
    // Pieces of 5 bytes split CRLFs, field names, JSON and cursors.
    let server = ScriptedServer::start(vec![Conn::Stream(pieces(stream, 5), End::Hang)]).await;
    let mut watch = client(&[&server.url]).watch("app/", None);

    assert_eq!(
        next_ok(&mut watch).await,
        change("p0:1,p1:0", put("app/x", 12, "text"))
    );
    let binary = next_ok(&mut watch).await;
    assert_eq!(binary.cursor, "p0:2,p1:0");
    let event = binary.event.unwrap();
    assert_eq!((event.key.as_str(), event.version), ("app/bin", 3));
    assert_eq!(event.value_bytes(), Some(vec![0xff, 0x00, 0xa1]));
    assert_eq!(next_ok(&mut watch).await, cursor_only("p0:2,p1:7"));
    let deleted = next_ok(&mut watch).await;
    assert_eq!(deleted.cursor, "p0:3,p1:7");
    let event = deleted.event.unwrap();
    assert_eq!(
        (event.kind, event.key.as_str(), event.version, event.value),
        (WatchEventKind::Delete, "app/x", 12, None)
    );
    let expired = next_ok(&mut watch).await;
    assert_eq!(expired.cursor, "p0:4,p1:7");
    assert_eq!(expired.event.unwrap().kind, WatchEventKind::Expire);

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].target, "/v1/watch?prefix=app%2F");
    assert_eq!(requests[0].header("authorization"), Some("Bearer t0k"));
    assert_eq!(requests[0].header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn a_dropped_stream_resumes_from_the_last_cursor_without_repeats() {
    let first = format!(
        "{}{}id: c/3\ndata: {{\"type\":\"put\",\"key\":\"k\",",
        put_message("c/1", "k", 1, "a"),
        put_message("c/2", "k", 2, "b"),
    );
    let second = format!(
        "{}{}",
        put_message("c/3", "k", 3, "c"),
        put_message("c/4", "k", 4, "d")
    );
    let server = ScriptedServer::start(vec![
        // Dropped in the middle of the third message, which must not count.
        Conn::Stream(pieces(&first, 9), End::Abort),
        // Ends cleanly: the watch goes on all the same.
        Conn::Stream(pieces(&second, 64), End::Close),
        Conn::Stream(vec![b"id: c/5\n\n".to_vec()], End::Hang),
    ])
    .await;
    let mut watch = client(&[&server.url]).watch_key("k", Some("c/0"));

    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_ok(&mut watch).await);
    }
    assert_eq!(
        seen,
        [
            change("c/1", put("k", 1, "a")),
            change("c/2", put("k", 2, "b")),
            change("c/3", put("k", 3, "c")),
            change("c/4", put("k", 4, "d")),
            cursor_only("c/5"),
        ]
    );
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/watch/k?since=c%2F0",
            "/v1/watch/k?since=c%2F2",
            "/v1/watch/k?since=c%2F4",
        ]
    );
}

#[tokio::test]
async fn a_node_that_refuses_connections_is_skipped() {
    let down = format!("http://127.0.0.1:{}", kv_node::testing::closed_port());
    let server = ScriptedServer::start(vec![
        Conn::Stream(pieces(&put_message("c1", "a", 1, "x"), 64), End::Abort),
        Conn::Stream(pieces(&put_message("c2", "a", 2, "y"), 64), End::Hang),
    ])
    .await;
    let mut watch = client(&[&down, &server.url]).watch("", None);
    assert_eq!(next_ok(&mut watch).await, change("c1", put("a", 1, "x")));
    assert_eq!(next_ok(&mut watch).await, change("c2", put("a", 2, "y")));
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/v1/watch?prefix=", "/v1/watch?prefix=&since=c1"]);
}

#[tokio::test]
async fn a_silent_stream_is_replaced() {
    // The first stream sends one change, then nothing, not even keep-alives.
    let server = ScriptedServer::start(vec![
        Conn::Stream(pieces(&put_message("c1", "a", 1, "x"), 64), End::Hang),
        Conn::Stream(pieces(&put_message("c2", "a", 2, "y"), 64), End::Hang),
    ])
    .await;
    let client = Client::builder()
        .endpoints([server.url.as_str()])
        .watch_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut watch = client.watch("a", None);
    assert_eq!(next_ok(&mut watch).await.cursor, "c1");
    assert_eq!(next_ok(&mut watch).await.cursor, "c2");
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/v1/watch?prefix=a", "/v1/watch?prefix=a&since=c1"]
    );
}

#[tokio::test]
async fn a_stream_kept_alive_past_the_timeout_still_reconnects() {
    // Keep-alives only, for longer than the client's timeout, then a drop.
    let keep_alives = vec![b": keep-alive\n\n".to_vec(); 200];
    let server = ScriptedServer::start(vec![
        Conn::Stream(keep_alives, End::Abort),
        Conn::Stream(pieces(&put_message("c1", "a", 1, "x"), 64), End::Hang),
    ])
    .await;
    let client = Client::builder()
        .endpoints([server.url.as_str()])
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut watch = client.watch("a", Some("c0"));
    assert_eq!(next_ok(&mut watch).await.cursor, "c1");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn no_reachable_node_ends_the_watch_after_the_timeout() {
    let down = format!("127.0.0.1:{}", kv_node::testing::closed_port());
    let client = Client::builder()
        .endpoints([down.as_str()])
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut watch = client.watch("a", Some("c7"));
    match next(&mut watch).await {
        Some(Err(Error::Transport(message))) => assert!(message.contains(&down), "{message}"),
        other => panic!("not a transport error: {other:?}"),
    }
    assert_eq!(next(&mut watch).await, None);
}

#[tokio::test]
async fn passing_errors_reconnect_from_the_last_cursor() {
    let slow = format!(
        "{}data: {{\"type\":\"error\",\"error\":\"slow_consumer\",\"message\":\"behind\"}}\n\n",
        put_message("c1", "a", 1, "x")
    );
    let unavailable = format!(
        "{}data: {{\"type\":\"error\",\"error\":\"unavailable\",\"message\":\"no quorum\"}}\n\n",
        put_message("c2", "a", 2, "y")
    );
    let server = ScriptedServer::start(vec![
        Conn::Answer(503, r#"{"error":"unavailable","message":"starting"}"#),
        Conn::Stream(pieces(&slow, 16), End::Close),
        Conn::Stream(pieces(&unavailable, 16), End::Close),
        Conn::Stream(pieces(&put_message("c3", "a", 3, "z"), 16), End::Hang),
    ])
    .await;
    let mut watch = client(&[&server.url]).watch("a", None);
    assert_eq!(next_ok(&mut watch).await.cursor, "c1");
    assert_eq!(next_ok(&mut watch).await.cursor, "c2");
    assert_eq!(next_ok(&mut watch).await.cursor, "c3");
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/watch?prefix=a",
            "/v1/watch?prefix=a",
            "/v1/watch?prefix=a&since=c1",
            "/v1/watch?prefix=a&since=c2",
        ]
    );
}

#[tokio::test]
async fn gone_ends_the_watch_with_the_current_cursor() {
    let server = ScriptedServer::start(vec![Conn::Answer(
        410,
        r#"{"error":"compacted","message":"history starts later","current":"p0:90,p1:4"}"#,
    )])
    .await;
    let mut watch = client(&[&server.url]).watch("", Some("p0:1,p1:1"));
    assert_eq!(
        next(&mut watch).await,
        Some(Err(Error::Compacted {
            current: "p0:90,p1:4".into()
        }))
    );
    assert_eq!(next(&mut watch).await, None);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_compacted_error_in_the_stream_ends_the_watch() {
    let stream = format!(
        "{}data: {{\"type\":\"error\",\"error\":\"compacted\",\"message\":\"m\",\
         \"current\":\"c9\"}}\n\n",
        put_message("c1", "a", 1, "x")
    );
    let server = ScriptedServer::start(vec![Conn::Stream(pieces(&stream, 11), End::Close)]).await;
    let mut watch = client(&[&server.url]).watch("a", None);
    assert_eq!(next_ok(&mut watch).await.cursor, "c1");
    assert_eq!(
        next(&mut watch).await,
        Some(Err(Error::Compacted {
            current: "c9".into()
        }))
    );
    assert_eq!(next(&mut watch).await, None);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn refusals_that_retrying_cannot_fix_end_the_watch() {
    for (status, body, want) in [
        (
            403,
            r#"{"error":"forbidden","message":"no watch for you"}"#,
            Error::Unauthorized("no watch for you".into()),
        ),
        (
            400,
            r#"{"error":"bad_request","message":"bad cursor"}"#,
            Error::InvalidInput("bad cursor".into()),
        ),
        (
            404,
            r#"{"error":"not_found","message":"no such route"}"#,
            Error::NotFound("no such route".into()),
        ),
    ] {
        let server = ScriptedServer::start(vec![Conn::Answer(status, body)]).await;
        let mut watch = client(&[&server.url]).watch("a", Some("junk"));
        assert_eq!(next(&mut watch).await, Some(Err(want)), "{status}");
        assert_eq!(next(&mut watch).await, None);
        assert_eq!(server.requests().len(), 1, "{status}");
    }
    let mut watch = client(&["127.0.0.1:1"]).watch_key("..", None);
    assert!(matches!(
        next(&mut watch).await,
        Some(Err(Error::InvalidInput(_)))
    ));
    assert_eq!(next(&mut watch).await, None);
}
