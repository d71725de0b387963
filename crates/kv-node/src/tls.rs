//! TLS for the node's listeners and for its connections to peers, with rustls: PEM files named
//! by the flags, loaded at start and again on SIGHUP ([`Tls::reload`]), so certificates and CAs
//! rotate without a restart. New connections use the new files; open ones keep theirs.
//!
//! Who is on the other end of a connection is decided here too ([`Tls::identify`]): a
//! certificate that chains to the peer CA, carries the serverAuth usage (node certificates are
//! also server certificates; client certificates are not) and names a node as `node-N` (its
//! common name or a DNS SAN) is that node; one that chains to the client CA is a client, named
//! by its common name. Whether node N is a member is the caller's question.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kv_ring::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsFiles;

/// Why TLS could not be set up: which file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TlsError {
    pub path: PathBuf,
    pub problem: String,
}

fn error(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(path, e))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| error(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| error(path, format!("not a PEM private key: {e}")))
}

fn roots(paths: &[&Path]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for path in paths {
        for cert in certs(path)? {
            store
                .add(cert)
                .map_err(|e| error(path, format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(Arc::new(store))
}

fn certified_key(cert: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs(cert)?;
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key(key_path)?)
        .map_err(|e| error(key_path, format!("unsupported private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// What is loaded from the files, replaced whole on reload.
struct Loaded {
    /// For the node's client listener, which peers share when they have no listener of their
    /// own.
    server: Option<Arc<rustls::ServerConfig>>,
    /// For a peer listener of its own (`--listen-peer`): the node certificate, and a node
    /// certificate of the peer CA required from whoever connects.
    peer_server: Option<Arc<rustls::ServerConfig>>,
    /// Chains to the peer CA only: tells peers from clients.
    peer_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Chains to the client CA only.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// What this node presents to its peers, and how it checks them, on outgoing connections.
    outgoing_key: Option<Arc<CertifiedKey>>,
    outgoing_verifier: Option<Arc<WebPkiServerVerifier>>,
}

/// Who a connection's client certificate says is on the other end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presented {
    /// A node certificate of the peer CA: that node's id (member or not).
    pub node: Option<NodeId>,
    /// A client certificate of the client CA: its common name.
    pub client: Option<String>,
}

/// Which listener a connection came in on: they present different certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client listener (shared with peers when they have none of their own).
    Clients,
    /// A peer listener of its own.
    Peers,
}

/// The node's TLS state. Cheap to share.
pub struct Tls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    /// Outgoing connections read the current key and verifier through these at each handshake.
    client_cert: Arc<CurrentClientCert>,
    server_check: Arc<CurrentServerVerifier>,
}

impl Tls {
    /// Load every file the flags name. Fails on the first file that is missing or invalid.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let loaded = Arc::new(build(&files)?);
        let tls = Tls {
            client_cert: Arc::new(CurrentClientCert(RwLock::new(loaded.outgoing_key.clone()))),
            server_check: Arc::new(CurrentServerVerifier(RwLock::new(
                loaded.outgoing_verifier.clone(),
            ))),
            loaded: RwLock::new(loaded),
            files,
        };
        Ok(Arc::new(tls))
    }

    /// Read the files again. On any error the old state stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(build(&self.files)?);
        *self
            .client_cert
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner()) = loaded.outgoing_key.clone();
        *self
            .server_check
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner()) = loaded.outgoing_verifier.clone();
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server configuration of the listener, if it speaks TLS.
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.loaded().server.clone()
    }

    /// The server configuration of the listener on `side`, if it speaks TLS.
    pub fn server_config_for(&self, side: Side) -> Option<Arc<rustls::ServerConfig>> {
        match side {
            Side::Clients => self.server_config(),
            Side::Peers => self.loaded().peer_server.clone(),
        }
    }

    /// Whether peers talk to each other over TLS (then with node certificates).
    pub fn peers_use_tls(&self) -> bool {
        self.files.peer_cert.is_some()
    }

    /// The client configuration for connections to peers, if they use TLS.
    pub fn peer_client_config(&self) -> Option<rustls::ClientConfig> {
        if !self.peers_use_tls() {
            return None;
        }
        let verifier: Arc<dyn ServerCertVerifier> = self.server_check.clone();
        let config = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.client_cert.clone());
        Some(config)
    }

    /// Who the client certificate chain `certs` (leaf first) of a connection says it is.
    pub fn identify(&self, certs: &[CertificateDer<'_>]) -> Presented {
        let Some((leaf, intermediates)) = certs.split_first() else {
            return Presented::default();
        };
        let loaded = self.loaded();
        let now = UnixTime::now();
        let chains = |verifier: &Option<Arc<dyn ClientCertVerifier>>| {
            verifier
                .as_ref()
                .is_some_and(|v| v.verify_client_cert(leaf, intermediates, now).is_ok())
        };
        let mut presented = Presented::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            return presented;
        };
        if chains(&loaded.peer_verifier) && server_auth(&cert) {
            presented.node = node_id(&cert);
        }
        if chains(&loaded.client_verifier) {
            presented.client = common_name(&cert);
        }
        presented
    }
}

/// The `node-N` a certificate names, in its common name or a DNS SAN.
fn node_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<NodeId> {
    let parse = |name: &str| {
        name.strip_prefix("node-")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .map(NodeId)
    };
    if let Some(id) = common_name(cert).as_deref().and_then(parse) {
        return Some(id);
    }
    let sans = cert.subject_alternative_name().ok().flatten()?;
    sans.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => parse(dns),
        _ => None,
    })
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

fn server_auth(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    cert.extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.server_auth || eku.value.any)
}

fn build(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let peer_ca = files.peer_trusted_ca.as_deref();
    let client_ca = files.trusted_ca.as_deref();
    let verifier =
        |paths: &[&Path], optional: bool| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
            let path = paths.first().copied().unwrap_or(Path::new("-"));
            let builder = WebPkiClientVerifier::builder(roots(paths)?);
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| error(path, e))
        };
    let peer_verifier = peer_ca.map(|p| verifier(&[p], false)).transpose()?;
    let client_verifier = client_ca.map(|p| verifier(&[p], false)).transpose()?;
    let peer_key = match (&files.peer_cert, &files.peer_key) {
        (Some(c), Some(k)) => Some(certified_key(c, k)?),
        _ => None,
    };
    let client_key = match (&files.cert, &files.key) {
        (Some(c), Some(k)) => Some(certified_key(c, k)?),
        _ => None,
    };
    let server_config = |key: Arc<CertifiedKey>,
                         cas: &[&Path],
                         required: bool|
     -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder();
        let builder = if cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            builder.with_client_cert_verifier(verifier(cas, !required)?)
        };
        let mut config = builder.with_cert_resolver(Arc::new(FixedCert(key)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    };
    // One listener for clients and peers: it presents the client-facing certificate if there
    // is one, else the node certificate, and accepts client certificates of either CA.
    let cas: Vec<&Path> = client_ca.into_iter().chain(peer_ca).collect();
    let server = client_key
        .or_else(|| peer_key.clone())
        .map(|key| server_config(key, &cas, files.client_cert_auth))
        .transpose()?;
    let peer_server = match (&peer_key, peer_ca) {
        (Some(key), Some(ca)) => Some(server_config(key.clone(), &[ca], true)?),
        _ => None,
    };
    // Towards peers: present the node certificate; trust the peer CA, and the client CA too
    // when listeners present client-facing certificates.
    let mut outgoing_roots: Vec<&Path> = peer_ca.into_iter().collect();
    if files.cert.is_some() {
        outgoing_roots.extend(client_ca);
    }
    let outgoing_verifier = if files.peer_cert.is_some() && !outgoing_roots.is_empty() {
        let path = outgoing_roots[0];
        Some(
            WebPkiServerVerifier::builder(roots(&outgoing_roots)?)
                .build()
                .map_err(|e| error(path, e))?,
        )
    } else {
        None
    };
    Ok(Loaded {
        server,
        peer_server,
        peer_verifier,
        client_verifier,
        outgoing_key: peer_key,
        outgoing_verifier,
    })
}

/// A listener's certificate (swapped by rebuilding the whole server configuration).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The node certificate presented to peers, as last loaded.
#[derive(Debug)]
struct CurrentClientCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn has_certs(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// The check of a peer's server certificate, as last loaded.
#[derive(Debug)]
struct CurrentServerVerifier(RwLock<Option<Arc<WebPkiServerVerifier>>>);

impl CurrentServerVerifier {
    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| rustls::Error::General("no peer CA configured".into()))
    }
}

impl ServerCertVerifier for CurrentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
