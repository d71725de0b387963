use proptest::prelude::*;

use super::*;

fn limits() -> HeadLimits {
    HeadLimits {
        max_head_bytes: 4096,
        max_target_bytes: 512,
        max_headers: 16,
        key_prefix: Some("/v1/kv/"),
    }
}

/// Feeds `stream` cut at `cuts` the way the guard does (held bytes are fed again with the next
/// piece). Returns what passed, the violation, and how much had passed after each feed.
fn feed_in_pieces(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Violation>, Vec<usize>) {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c < stream.len()).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut framing = Framing::new(limits());
    let (mut pending, mut passed, mut boundaries) = (Vec::new(), Vec::new(), Vec::new());
    let mut from = 0;
    for cut in cuts {
        pending.extend_from_slice(&stream[from..cut]);
        from = cut;
        let fed = framing.feed(&pending);
        passed.extend(pending.drain(..fed.pass));
        boundaries.push(passed.len());
        if fed.violation.is_some() {
            return (passed, fed.violation, boundaries);
        }
    }
    (passed, None, boundaries)
}

/// Judges `input` whole, then cut once at every offset, then byte by byte, and checks that the
/// verdict never depends on where the cuts fall.
fn judge(input: &[u8]) -> (usize, Option<Violation>) {
    let (passed, violation, _) = feed_in_pieces(input, &[]);
    for cut in 0..input.len() {
        let (p, v, _) = feed_in_pieces(input, &[cut]);
        assert_eq!((p.len(), &v), (passed.len(), &violation), "cut at {cut}");
    }
    let every: Vec<usize> = (0..input.len()).collect();
    let (p, v, _) = feed_in_pieces(input, &every);
    assert_eq!((p.len(), &v), (passed.len(), &violation), "byte by byte");
    assert_eq!(&passed[..], &input[..passed.len()]);
    (passed.len(), violation)
}

fn malformed(what: &'static str) -> Option<Violation> {
    Some(Violation::Malformed(what))
}

#[test]
fn valid_heads_and_bodies_pass_whole() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /v1/kv/a%23b?x=1 HTTP/1.0\r\n\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        // UTF-8 in the target: hyper and the `http` crate take it as is.
        b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Note: values may hold # freely\r\n\r\n",
        b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
        b"PUT /k HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value;flag\r\nhello\r\nA \t; x=\"q\"\r\n0123456789\r\n0\r\n\r\n",
        b"POST /k HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n0\r\n\r\n",
        b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0;last\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ];
    for &case in cases {
        assert_eq!(
            judge(case),
            (case.len(), None),
            "{:?}",
            String::from_utf8_lossy(case)
        );
    }
}

#[test]
fn a_body_that_has_not_fully_arrived_passes_as_far_as_it_goes() {
    let partial: &[u8] = b"PUT /k HTTP/1.1\r\nContent-Length: 10\r\n\r\nhel";
    assert_eq!(judge(partial), (partial.len(), None));
    // The chunk-size line is held until its CRLF, its data passes as it comes.
    let head = b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".len();
    let mut input = b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(b"10\r\nabc");
    assert_eq!(judge(&input), (head + 7, None));
    input.extend_from_slice(b"defghijklmnop\r\n2;ext");
    assert_eq!(judge(&input), (head + 22, None));
}

#[test]
fn heads_that_have_not_ended_are_held() {
    assert_eq!(judge(b"GET / HTTP/1.1\r\nHost: a\r\n"), (0, None));
    assert_eq!(
        judge(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r"),
        (18, None)
    );
    // Could still be the HTTP/2 preface.
    assert_eq!(judge(b"PRI * HT"), (0, None));
}

#[test]
fn the_http2_preface_passes_everything_through() {
    let input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00#";
    assert_eq!(judge(input), (input.len(), None));
}

#[test]
fn targets_with_a_fragment_are_refused() {
    assert_eq!(
        judge(b"GET /a#b HTTP/1.1\r\n\r\n"),
        (0, Some(Violation::Fragment))
    );
    assert_eq!(
        judge(b"PUT /v1/kv/a?x=1#frag HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
        (0, Some(Violation::Fragment))
    );
    let msg = Violation::Fragment.to_string();
    assert!(msg.contains('#'), "{msg}");
}

#[test]
fn size_limits_hold_exactly() {
    let too_long = Some(Violation::TargetTooLong { limit: 512 });
    let target = |len: usize| format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(len - 1));
    assert_eq!(judge(target(512).as_bytes()).1, None);
    assert_eq!(judge(target(513).as_bytes()), (0, too_long.clone()));
    // Refused as soon as the target is too long, before its line ends.
    let unfinished = format!("GET /{}", "a".repeat(600));
    assert_eq!(judge(unfinished.as_bytes()), (0, too_long));

    let head = |len: usize| {
        let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(len - fixed))
    };
    assert_eq!(judge(head(4096).as_bytes()).1, None);
    let too_large = Some(Violation::HeadTooLarge { limit: 4096 });
    assert_eq!(judge(head(4097).as_bytes()), (0, too_large.clone()));
    let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(5000));
    assert_eq!(judge(unfinished.as_bytes()), (0, too_large));

    let fields = |n: usize| {
        let lines: String = (0..n).map(|i| format!("X-{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\n{lines}\r\n")
    };
    assert_eq!(judge(fields(16).as_bytes()).1, None);
    let too_many = Some(Violation::TooManyHeaders { limit: 16 });
    assert_eq!(judge(fields(17).as_bytes()), (0, too_many.clone()));
    let unfinished = fields(40);
    assert_eq!(judge(&unfinished.as_bytes()[..300]), (0, too_many));
}

#[test]
fn malformed_heads_are_refused() {
    let cases: &[(&[u8], Option<Violation>)] = &[
        (b"GARBAGE\r\n\r\n", malformed("invalid method")),
        (b"\x16\x03\x01\x02\x00\x01", malformed("invalid method")),
        (
            b"GET /\r\n\r\n",
            malformed("invalid token in the request line"),
        ),
        (b"GET / HTTP/2.0\r\n\r\n", malformed("invalid HTTP version")),
        (
            b"GET  / HTTP/1.1\r\n\r\n",
            malformed("invalid token in the request line"),
        ),
        (
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            malformed("invalid header name"),
        ),
        (
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            malformed("invalid header name"),
        ),
        (
            b"GET / HTTP/1.1\rX: y\r\n\r\n",
            malformed("invalid line ending"),
        ),
        (
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            malformed("invalid header value"),
        ),
        (
            b"GET /\xff HTTP/1.1\r\n\r\n",
            malformed("invalid token in the request line"),
        ),
        (
            b"GET http://[::1/ HTTP/1.1\r\n\r\n",
            malformed("invalid request target"),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            malformed("both Transfer-Encoding and Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            malformed("both Transfer-Encoding and Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            malformed("Transfer-Encoding must end with chunked"),
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            malformed("Transfer-Encoding must end with chunked"),
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            malformed("Transfer-Encoding in an HTTP/1.0 request"),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            malformed("invalid Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            malformed("invalid Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            malformed("invalid Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            malformed("conflicting Content-Length fields"),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            &judge(input),
            &(0, expected.clone()),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        let (status, code) = expected
            .as_ref()
            .and_then(Violation::answer)
            .expect("answered");
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "bad_request"));
    }
}

#[test]
fn broken_chunked_framing_stops_after_the_head_without_an_answer() {
    let head: &[u8] = b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: &[(&[u8], usize, &str)] = &[
        (b"zz\r\n", 0, "invalid chunk size line"),
        (b"5\n", 0, "chunk size line does not end in CRLF"),
        (b"5;a\nb\r\n", 0, "chunk size line does not end in CRLF"),
        (b"11111111111111111\r\n", 0, "invalid chunk size line"),
        (b"3\r\nabcX", 6, "chunk data is not followed by CRLF"),
        (b"0\r\nBad Name: x\r\n\r\n", 3, "malformed trailer section"),
    ];
    for (body, passed, why) in cases {
        let input = [head, body].concat();
        let (n, violation) = judge(&input);
        assert_eq!(
            n,
            head.len() + passed,
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(violation, Some(Violation::Body(why)));
        assert_eq!(Violation::Body(why).answer(), None);
    }
    let long_extension = [head, b"5;", &[b'x'; MAX_CHUNK_LINE]].concat();
    assert_eq!(
        judge(&long_extension),
        (
            head.len(),
            Some(Violation::Body("chunk size line too long"))
        )
    );
}

#[test]
fn status_and_code_follow_the_kind_of_violation() {
    assert_eq!(
        Violation::TargetTooLong { limit: 1 }.answer(),
        Some((StatusCode::URI_TOO_LONG, "uri_too_long"))
    );
    for v in [
        Violation::HeadTooLarge { limit: 1 },
        Violation::TooManyHeaders { limit: 1 },
    ] {
        assert_eq!(
            v.answer(),
            Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large"
            ))
        );
    }
}

#[test]
fn a_target_limit_above_hypers_own_is_lowered_to_it() {
    let framing = Framing::new(HeadLimits {
        max_head_bytes: 1 << 20,
        max_target_bytes: 1 << 20,
        max_headers: 16,
        key_prefix: None,
    });
    assert_eq!(framing.limits.max_target_bytes, HYPER_MAX_TARGET);
}

/// One generated request, encoded, with where its head ends.
#[derive(Debug, Clone)]
enum Req {
    NoBody {
        path: String,
        fields: Vec<(String, String)>,
    },
    Sized {
        body: Vec<u8>,
    },
    Chunked {
        chunks: Vec<Vec<u8>>,
        extensions: bool,
        trailers: Vec<(String, String)>,
    },
}

impl Req {
    /// The request's bytes and the length of its head.
    fn encode(&self) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        match self {
            Req::NoBody { path, fields } => {
                out.extend_from_slice(format!("GET {path} HTTP/1.1\r\n").as_bytes());
                for (name, value) in fields {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                let head = out.len();
                (out, head)
            }
            Req::Sized { body } => {
                out.extend_from_slice(
                    format!("PUT /k HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                let head = out.len();
                out.extend_from_slice(body);
                (out, head)
            }
            Req::Chunked {
                chunks,
                extensions,
                trailers,
            } => {
                out.extend_from_slice(b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
                let head = out.len();
                for chunk in chunks {
                    let ext = if *extensions { ";a=b;c" } else { "" };
                    out.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                (out, head)
            }
        }
    }
}

fn field() -> impl Strategy<Value = (String, String)> {
    ("X-[A-Za-z0-9-]{0,12}", "[!-~]([ -~]{0,30}[!-~])?")
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        (
            "/[A-Za-z0-9/%._~?=&-]{0,40}",
            prop::collection::vec(field(), 0..6)
        )
            .prop_map(|(path, fields)| Req::NoBody { path, fields }),
        prop::collection::vec(any::<u8>(), 1..300).prop_map(|body| Req::Sized { body }),
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 1..80), 0..5),
            any::<bool>(),
            prop::collection::vec(field(), 0..4),
        )
            .prop_map(|(chunks, extensions, trailers)| Req::Chunked {
                chunks,
                extensions,
                trailers,
            }),
    ]
}

/// A connection's worth of pipelined requests, and the byte ranges of their heads.
fn stream(reqs: &[Req]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut out = Vec::new();
    let mut heads = Vec::new();
    for req in reqs {
        let (bytes, head) = req.encode();
        heads.push((out.len(), out.len() + head));
        out.extend_from_slice(&bytes);
    }
    (out, heads)
}

fn cuts(len: usize, picks: &[prop::sample::Index]) -> Vec<usize> {
    picks.iter().map(|i| i.index(len + 1)).collect()
}

/// A bad head to follow valid requests, and what it must be refused as.
fn bad_head() -> impl Strategy<Value = (Vec<u8>, Violation)> {
    prop_oneof![
        Just((b"GET /a#b HTTP/1.1\r\n\r\n".to_vec(), Violation::Fragment)),
        Just((
            format!("GET /{} HTTP/1.1\r\n\r\n", "t".repeat(600)).into_bytes(),
            Violation::TargetTooLong { limit: 512 }
        )),
        Just((
            format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(20)).into_bytes(),
            Violation::TooManyHeaders { limit: 16 }
        )),
        Just((
            format!("GET / HTTP/1.1\r\nX-Big: {}", "v".repeat(5000)).into_bytes(),
            Violation::HeadTooLarge { limit: 4096 }
        )),
        Just((
            b"BR\x01W / HTTP/1.1\r\n\r\n".to_vec(),
            Violation::Malformed("invalid method")
        )),
        Just((
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(),
            Violation::Malformed("invalid Content-Length")
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn valid_pipelined_requests_pass_unchanged_wherever_they_are_cut(
        reqs in prop::collection::vec(request(), 1..6),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let (input, heads) = stream(&reqs);
        let (passed, violation, boundaries) = feed_in_pieces(&input, &cuts(input.len(), &picks));
        prop_assert_eq!(violation, None);
        prop_assert_eq!(&passed, &input);
        // Hyper never sees part of a head.
        for b in boundaries {
            for &(start, end) in &heads {
                prop_assert!(b <= start || b >= end, "passed {} inside head {}..{}", b, start, end);
            }
        }
    }

    #[test]
    fn a_bad_head_after_valid_requests_stops_exactly_at_its_start(
        reqs in prop::collection::vec(request(), 0..4),
        (bad, expected) in bad_head(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let (good, _) = stream(&reqs);
        let input = [good.clone(), bad].concat();
        let (passed, violation, _) = feed_in_pieces(&input, &cuts(input.len(), &picks));
        prop_assert_eq!(&passed, &good);
        prop_assert_eq!(violation, Some(expected));
    }
}

#[test]
fn a_too_long_target_naming_a_key_is_an_over_long_key() {
    let key = format!("GET /v1/kv/{} HTTP/1.1\r\n\r\n", "k".repeat(600));
    let (_, violation, _) = feed_in_pieces(key.as_bytes(), &[]);
    assert_eq!(violation, Some(Violation::KeyTooLong));
    assert_eq!(
        Violation::KeyTooLong.answer(),
        Some((StatusCode::PAYLOAD_TOO_LARGE, "too_large"))
    );
    let other = format!("GET /v1/kx/{} HTTP/1.1\r\n\r\n", "k".repeat(600));
    let (_, violation, _) = feed_in_pieces(other.as_bytes(), &[]);
    assert_eq!(violation, Some(Violation::TargetTooLong { limit: 512 }));
}
