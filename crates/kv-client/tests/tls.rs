//! The client over TLS against a real rustls server on a loopback port, with certificates made
//! here: one CA, a node certificate for `localhost` and `127.0.0.1` (both server and client
//! auth, as `kv cert create-node` makes them) and a client certificate. The server answers
//! `GET /v1/cluster` and one key, and records what each request carried.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kv_client::api::{PartitionRoute, Routes};
use kv_client::{Client, Error};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "s3cret-token";

/// A CA and what it signed: PEM for the client, DER for the server.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    node_der: CertificateDer<'static>,
    node_key: KeyPair,
    client_pem: String,
    client_der: Vec<u8>,
    client_key_pem: String,
}

fn pki(ca_name: &str) -> Pki {
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let mut node = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    node.distinguished_name.push(DnType::CommonName, "node-1");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_key = KeyPair::generate().unwrap();
    let node_cert = node.signed_by(&node_key, &ca).unwrap();

    let mut client = CertificateParams::default();
    client.distinguished_name.push(DnType::CommonName, "app");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &ca).unwrap();

    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        node_der: node_cert.der().clone(),
        node_key,
        client_pem: client_cert.pem(),
        client_der: client_cert.der().to_vec(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    host: String,
    path: String,
    authorization: Option<String>,
    /// The DER of the certificate the client presented.
    client_cert: Option<Vec<u8>>,
}

/// A TLS node on `127.0.0.1:<free port>` until dropped.
struct TlsNode {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: JoinHandle<()>,
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TlsNode {
    /// Serves with the node certificate; clients must present a certificate signed by the CA
    /// when `require_client_cert`, may otherwise.
    async fn start(pki: &Pki, require_client_cert: bool) -> TlsNode {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if require_client_cert {
            verifier.build().unwrap()
        } else {
            verifier.allow_unauthenticated().build().unwrap()
        };
        let chain = vec![pki.node_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.node_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&recorded);
                tokio::spawn(async move {
                    // A refused handshake is what some tests are about: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.to_vec());
                    let service = service_fn(move |request: Request<Incoming>| {
                        let answer = answer(port, &request);
                        seen.lock().unwrap().push(Seen {
                            host: header(&request, "host").unwrap_or_default(),
                            path: request.uri().path().to_owned(),
                            authorization: header(&request, "authorization"),
                            client_cert: client_cert.clone(),
                        });
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsNode { port, seen, server }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `GET /v1/cluster`: one node at `127.0.0.1:<port>` leading the one partition; `GET
/// /v1/kv/greeting`: `hello` at version 3; anything else: 404.
fn answer(port: u16, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/v1/cluster/routes" => {
            let routes = Routes {
                epoch: 1,
                partitions: vec![PartitionRoute {
                    partition: 0,
                    leader: Some(1),
                    replicas: vec![1],
                }],
                members: [(1, format!("127.0.0.1:{port}"))].into(),
            };
            let body = serde_json::to_vec(&routes).unwrap();
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
        "/v1/kv/greeting" => Response::builder()
            .header("etag", "\"3\"")
            .header("x-kv-node", "1")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap(),
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(
                br#"{"error":"not_found","message":"no such route"}"#,
            )))
            .unwrap(),
    }
}

/// A client of `https://localhost:<port>`; the partition map then names `127.0.0.1:<port>`,
/// so both of the node certificate's names are used.
fn builder(node: &TlsNode) -> kv_client::ClientBuilder {
    Client::builder()
        .endpoints([format!("https://localhost:{}", node.port)])
        .timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn client_with_ca_certificate_and_token_reaches_a_tls_node() {
    let pki = pki("test-ca");
    let node = TlsNode::start(&pki, true).await;
    let client = builder(&node)
        .ca_cert_pem(pki.ca_pem.clone())
        .client_cert_pem(pki.client_pem.clone(), pki.client_key_pem.clone())
        .token(TOKEN)
        .build()
        .unwrap();

    let value = client.get("greeting").await.unwrap().unwrap();
    assert_eq!(value.data, Bytes::from_static(b"hello"));
    assert_eq!(value.version, 3);

    let seen = node.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
        assert_eq!(request.client_cert.as_deref(), Some(&*pki.client_der));
    }
    // The map came from the endpoint; the key went to the member's address, over https too.
    assert_eq!(seen[0].path, "/v1/cluster/routes");
    assert_eq!(seen[0].host, format!("localhost:{}", node.port));
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/v1/kv/greeting");
    assert_eq!(last.host, format!("127.0.0.1:{}", node.port));
}

#[tokio::test]
async fn client_without_the_ca_fails_with_a_tls_error_at_once() {
    let pki = pki("test-ca");
    let node = TlsNode::start(&pki, false).await;
    // The system's roots do not include the test CA.
    let client = builder(&node).token(TOKEN).build().unwrap();

    let err = client.get("greeting").await.unwrap_err();
    let Error::Tls(message) = &err else {
        panic!("not a TLS error: {err:?}");
    };
    assert!(message.contains("invalid peer certificate"), "{message}");
    assert!(
        message.contains(&format!("localhost:{}", node.port)),
        "{message}"
    );
    assert_eq!(err.kind(), "tls");
    assert!(
        node.seen().is_empty(),
        "no request may pass an untrusted handshake"
    );
}

#[tokio::test]
async fn node_that_requires_a_client_certificate_refuses_a_client_without_one() {
    let pki = pki("test-ca");
    let node = TlsNode::start(&pki, true).await;
    let client = builder(&node)
        .ca_cert_pem(pki.ca_pem.clone())
        .build()
        .unwrap();

    let err = client.get("greeting").await.unwrap_err();
    let Error::Tls(message) = &err else {
        panic!("not a TLS error: {err:?}");
    };
    assert!(message.contains("alert"), "the node's refusal: {message}");
    assert!(node.seen().is_empty());
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let pki = pki("test-ca");
    let other = self::pki("other-ca");
    let node = TlsNode::start(&pki, true).await;
    let client = builder(&node)
        .ca_cert_pem(pki.ca_pem.clone())
        .client_cert_pem(other.client_pem.clone(), other.client_key_pem.clone())
        .build()
        .unwrap();

    let err = client.get("greeting").await.unwrap_err();
    let Error::Tls(message) = &err else {
        panic!("not a TLS error: {err:?}");
    };
    assert!(message.contains("alert"), "the node's refusal: {message}");
    assert!(node.seen().is_empty());
}

#[tokio::test]
async fn bad_pem_is_refused_by_build() {
    let pki = pki("test-ca");
    let endpoints = ["https://localhost:1"];
    let err = Client::builder()
        .endpoints(endpoints)
        .ca_cert_pem("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    // A key that belongs to another certificate.
    let err = Client::builder()
        .endpoints(endpoints)
        .client_cert_pem(pki.client_pem.clone(), pki.node_key.serialize_pem())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}
