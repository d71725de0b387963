//! The front over real TCP on 127.0.0.1, driven with raw bytes so that what is checked is what
//! a client receives.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::*;

/// Generous bound for anything a test waits on; behaviour is asserted, not speed.
const PATIENCE: Duration = Duration::from_secs(10);

/// Lets a test hold `/slow` in flight: the handler signals `entered`, then waits for `release`.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

fn test_app(gate: Gate) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/peer",
            get(|ConnectInfo(conn): ConnectInfo<super::Conn>| async move { conn.remote.to_string() }),
        )
        .route(
            "/slow",
            get(move || {
                let gate = gate.clone();
                async move {
                    gate.entered.notify_one();
                    gate.release.notified().await;
                    "done"
                }
            }),
        )
}

struct TestServer {
    addr: SocketAddr,
    gate: Gate,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<io::Result<()>>,
}

impl TestServer {
    async fn start(limits: ServerLimits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let gate = Gate::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            test_app(gate.clone()),
            limits,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            gate,
            stop: Some(stop),
            served,
        }
    }

    async fn connect(&self) -> Client {
        Client {
            stream: TcpStream::connect(self.addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One answer as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Checks the API's error contract and returns the message.
    fn assert_json_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.header("connection"), Some("close"));
        let body: ErrorBody = serde_json::from_slice(&self.body).expect("a JSON error body");
        assert_eq!(body.error, code);
        assert!(!body.message.is_empty());
        body.message
    }
}

struct Client {
    stream: TcpStream,
    /// Bytes read past the last answer.
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn read_more(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one `Content-Length`-framed answer.
    async fn answer(&mut self) -> Answer {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut fields);
            let parsed = resp.parse(&self.buf).expect("a valid HTTP response");
            if let httparse::Status::Complete(head) = parsed {
                let status = resp.code.expect("status");
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map(|(_, v)| v.parse().expect("numeric content-length"))
                    .expect("every answer here has a content-length");
                while self.buf.len() < head + len {
                    assert!(self.read_more().await > 0, "closed inside an answer");
                }
                let body = self.buf[head..head + len].to_vec();
                self.buf.drain(..head + len);
                return Answer {
                    status,
                    headers,
                    body,
                };
            }
            assert!(
                self.read_more().await > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// The server closes the connection with nothing more to say.
    async fn assert_closed(&mut self) {
        assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.buf);
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(Ok(n)) => panic!(
                "expected the end, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Ok(Err(e)) => panic!("expected the end, got {e}"),
            Err(_) => panic!("the server did not close the connection"),
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: kv\r\n\r\n";

#[tokio::test]
async fn get_is_served_and_keep_alive_serves_the_next_request() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    for _ in 0..2 {
        client.send(GET).await;
        let answer = client.answer().await;
        assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
    }
    client.send(b"GET /peer HTTP/1.1\r\nHost: kv\r\n\r\n").await;
    let answer = client.answer().await;
    let local = client.stream.local_addr().expect("local addr");
    assert_eq!(answer.body, local.to_string().into_bytes(), "ConnectInfo");
}

#[tokio::test]
async fn a_body_arriving_in_pieces_reaches_the_app_unchanged() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    client
        .send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: kv\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    for piece in body.chunks(700) {
        client.send(piece).await;
        client.stream.flush().await.expect("flush");
    }
    let answer = client.answer().await;
    assert_eq!((answer.status, &answer.body), (200, &body));

    let chunked = b"POST /echo HTTP/1.1\r\nHost: kv\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    for piece in chunked.chunks(7) {
        client.send(piece).await;
    }
    let answer = client.answer().await;
    assert_eq!(
        (answer.status, &answer.body[..]),
        (200, &b"hello world"[..])
    );
}

#[tokio::test]
async fn a_target_over_the_limit_gets_414_json() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    let path = "a".repeat(70_000);
    client
        .send(format!("GET /{path} HTTP/1.1\r\nHost: kv\r\n\r\n").as_bytes())
        .await;
    client.answer().await.assert_json_error(414, "uri_too_long");
    client.assert_closed().await;
}

#[tokio::test]
async fn too_many_header_fields_get_431_json() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    let fields: String = (0..150).map(|i| format!("X-Field-{i}: v\r\n")).collect();
    client
        .send(format!("GET / HTTP/1.1\r\nHost: kv\r\n{fields}\r\n").as_bytes())
        .await;
    client
        .answer()
        .await
        .assert_json_error(431, "headers_too_large");
    client.assert_closed().await;
}

#[tokio::test]
async fn a_head_growing_past_the_limit_gets_431_json_before_it_ends() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    let value = "v".repeat(70_000);
    client
        .send(format!("GET / HTTP/1.1\r\nHost: kv\r\nX-Big: {value}").as_bytes())
        .await;
    client
        .answer()
        .await
        .assert_json_error(431, "headers_too_large");
    client.assert_closed().await;
}

#[tokio::test]
async fn a_hash_in_the_target_gets_400_json_naming_it() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    client.send(b"GET /a#b HTTP/1.1\r\nHost: kv\r\n\r\n").await;
    let message = client.answer().await.assert_json_error(400, "bad_request");
    assert!(message.contains('#'), "{message}");
    client.assert_closed().await;
}

#[tokio::test]
async fn a_malformed_request_line_gets_400_json() {
    let server = TestServer::start(ServerLimits::default()).await;
    for bad in [&b"GET / HTTP/9.9\r\n\r\n"[..], b"\x16\x03\x01\x00\xa5\x01"] {
        let mut client = server.connect().await;
        client.send(bad).await;
        client.answer().await.assert_json_error(400, "bad_request");
        client.assert_closed().await;
    }
}

#[tokio::test]
async fn a_good_request_then_a_bad_head_gets_both_answers_then_the_end() {
    let server = TestServer::start(ServerLimits::default()).await;
    let bad: &[u8] = b"GET /a#b HTTP/1.1\r\nHost: kv\r\n\r\n";

    // One after the other.
    let mut client = server.connect().await;
    client.send(GET).await;
    assert_eq!(client.answer().await.status, 200);
    client.send(bad).await;
    client.answer().await.assert_json_error(400, "bad_request");
    client.assert_closed().await;

    // Pipelined in one write.
    let mut client = server.connect().await;
    client.send(&[GET, GET, bad, GET].concat()).await;
    for _ in 0..2 {
        assert_eq!(client.answer().await.status, 200);
    }
    client.answer().await.assert_json_error(400, "bad_request");
    client.assert_closed().await;
}

#[tokio::test]
async fn a_chunked_post_then_a_bad_head_gets_both_answers_then_the_end() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    let fields: String = (0..150).map(|i| format!("X-Field-{i}: v\r\n")).collect();
    let mut input = b"POST /echo HTTP/1.1\r\nHost: kv\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        .to_vec();
    input.extend_from_slice(format!("GET / HTTP/1.1\r\n{fields}\r\n").as_bytes());
    for piece in input.chunks(11) {
        client.send(piece).await;
    }
    let answer = client.answer().await;
    assert_eq!(
        (answer.status, &answer.body[..]),
        (200, &b"hello world"[..])
    );
    client
        .answer()
        .await
        .assert_json_error(431, "headers_too_large");
    client.assert_closed().await;
}

#[tokio::test]
async fn a_broken_chunked_body_gets_only_the_apps_answer_then_the_end() {
    let server = TestServer::start(ServerLimits::default()).await;
    let mut client = server.connect().await;
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: kv\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        .await;
    // The app saw its body end early and answered that; no second answer of ours follows.
    let answer = client.answer().await;
    assert_eq!(answer.status, 400, "{answer:?}");
    client.assert_closed().await;
}

fn quick_timeouts() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn an_unfinished_head_is_closed_after_the_header_read_timeout() {
    let server = TestServer::start(quick_timeouts()).await;
    let mut client = server.connect().await;
    client.send(b"GET / HTTP/1.1\r\nHost: kv\r\n").await;
    client.assert_closed().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let server = TestServer::start(quick_timeouts()).await;
    let mut client = server.connect().await;
    client.send(GET).await;
    assert_eq!(client.answer().await.status, 200);
    client.assert_closed().await;
}

#[tokio::test]
async fn a_stalled_body_is_closed_after_the_header_read_timeout() {
    let server = TestServer::start(quick_timeouts()).await;
    let mut client = server.connect().await;
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: kv\r\nContent-Length: 100\r\n\r\nonly this")
        .await;
    // Whatever the app made of the cut body, the connection ends.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, client.stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server did not close the connection");
}

#[tokio::test]
async fn a_connection_over_the_cap_gets_503_json() {
    let server = TestServer::start(ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    })
    .await;
    let mut first = server.connect().await;
    first.send(GET).await;
    assert_eq!(first.answer().await.status, 200);

    let mut second = server.connect().await;
    second.send(GET).await;
    let answer = second.answer().await;
    let message = answer.assert_json_error(503, "overloaded");
    assert_eq!(message, "too many open connections");
    assert_eq!(answer.header("retry-after"), Some("1"));
    second.assert_closed().await;

    // The first connection still works, and once it closes its slot is free again.
    first.send(GET).await;
    assert_eq!(first.answer().await.status, 200);
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut next = server.connect().await;
        next.send(GET).await;
        if next.answer().await.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let mut server = TestServer::start(ServerLimits::default()).await;
    let mut idle = server.connect().await;
    idle.send(GET).await;
    assert_eq!(idle.answer().await.status, 200);

    let mut busy = server.connect().await;
    busy.send(b"GET /slow HTTP/1.1\r\nHost: kv\r\n\r\n").await;
    tokio::time::timeout(PATIENCE, server.gate.entered.notified())
        .await
        .expect("the slow handler starts");

    server.shut_down();
    // Idle connections close at once, while the in-flight request is still running.
    idle.assert_closed().await;
    assert!(!server.served.is_finished());

    server.gate.release.notify_one();
    let answer = busy.answer().await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"done"[..]));
    assert_eq!(answer.header("connection"), Some("close"));
    busy.assert_closed().await;

    let served = tokio::time::timeout(PATIENCE, &mut server.served)
        .await
        .expect("serve returns once connections are done");
    served.expect("no panic").expect("serve succeeded");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "the listener is closed"
    );
}

#[test]
fn error_answers_carry_their_exact_length() {
    let bytes = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many \"open\" connections",
        &[("retry-after", "1")],
    );
    let mut fields = [httparse::EMPTY_HEADER; 8];
    let mut resp = httparse::Response::new(&mut fields);
    let head = match resp.parse(&bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        other => panic!("{other:?}"),
    };
    let len = resp
        .headers
        .iter()
        .find(|h| h.name == "content-length")
        .map(|h| {
            std::str::from_utf8(h.value)
                .expect("ascii")
                .parse::<usize>()
        })
        .expect("content-length")
        .expect("numeric");
    assert_eq!(bytes.len(), head + len);
    let body: ErrorBody = serde_json::from_slice(&bytes[head..]).expect("json");
    assert_eq!(body.message, "too many \"open\" connections");
}
