//! What the client trusts and presents: the CA certificates that must have signed the nodes'
//! certificates on `https://` endpoints, the client certificate for mutual TLS, and the bearer
//! token sent with every request.
//!
//! The PEM is checked once, when the client is built, and then configures the one reqwest
//! client. A handshake that fails later is recognized here ([`tls_failure`]), so it is reported
//! as [`Error::Tls`] at once instead of being retried as a lost connection: a certificate that
//! is not trusted now will not be trusted on the next attempt either.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The TLS and token settings of a [`ClientBuilder`](crate::ClientBuilder), as given; the PEM
/// is only read by [`Credentials::apply`].
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    /// PEM `CERTIFICATE` blocks; when set, the only roots trusted.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// A certificate chain (PEM, leaf first) and its private key (PEM).
    pub(crate) client_cert: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) token: Option<String>,
}

impl fmt::Debug for Credentials {
    // Builders end up in logs: never print the key or the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ca_cert", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// `builder` trusting only the configured CAs (the system's roots when none is), presenting
    /// the client certificate, and sending `Authorization: Bearer <token>` by default.
    pub(crate) fn apply(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, Error> {
        if let Some(pem) = &self.ca_pem {
            builder = builder.tls_certs_only(roots(pem)?);
        }
        if let Some((cert, key)) = &self.client_cert {
            builder = builder.identity(identity(cert, key)?);
        }
        if let Some(token) = &self.token {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, bearer(token)?);
            builder = builder.default_headers(headers);
        }
        Ok(builder)
    }
}

/// The certificates of a CA PEM, each checked to be usable as a trust anchor.
fn roots(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, Error> {
    let mut store = rustls::RootCertStore::empty();
    certificates(pem, "CA certificate")?
        .into_iter()
        .map(|der| {
            store
                .add(der.clone())
                .map_err(|e| Error::Tls(format!("the CA certificate cannot be trusted: {e}")))?;
            reqwest::Certificate::from_der(&der)
                .map_err(|e| Error::Tls(format!("the CA certificate cannot be used: {e}")))
        })
        .collect()
}

/// The client certificate and key, checked to belong together.
fn identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<reqwest::Identity, Error> {
    let chain = certificates(cert_pem, "client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        Error::Tls(match e {
            pem::Error::NoItemsFound => "the client key PEM holds no private key".to_owned(),
            e => format!("the client key is not valid PEM: {e}"),
        })
    })?;
    // rustls makes the same check when reqwest builds its client, but then the error would not
    // say which input is wrong.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| {
            Error::Tls(format!(
                "the client key cannot be used with its certificate: {e}"
            ))
        },
    )?;
    // Re-encoded from what was parsed: reqwest refuses PEM with other blocks (a public key, a
    // CSR) that the files may hold.
    let label = match &key {
        PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        _ => {
            return Err(Error::Tls(
                "the client key is of an unknown kind".to_owned(),
            ))
        }
    };
    let mut combined = String::new();
    for cert in &chain {
        combined.push_str(&pem_block("CERTIFICATE", cert));
    }
    combined.push_str(&pem_block(label, key.secret_der()));
    reqwest::Identity::from_pem(combined.as_bytes())
        .map_err(|e| Error::Tls(format!("the client certificate cannot be used: {e}")))
}

/// The `CERTIFICATE` blocks of `pem`; `what` names the input in errors.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("the {what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "the {what} PEM holds no CERTIFICATE block"
        )));
    }
    Ok(certs)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut block = format!("-----BEGIN {label}-----\n");
    // Base64 is ASCII, so every 64-byte chunk is a valid line.
    for line in base64.as_bytes().chunks(64) {
        block.push_str(&String::from_utf8_lossy(line));
        block.push('\n');
    }
    block.push_str(&format!("-----END {label}-----\n"));
    block
}

/// `Bearer <token>`, marked sensitive so the HTTP stack never logs it. A token must be
/// printable ASCII without spaces: anything else would not survive the header intact.
fn bearer(token: &str) -> Result<HeaderValue, Error> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(
            "the token must be non-empty printable ASCII without spaces".to_owned(),
        ));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|e| Error::InvalidInput(format!("the token cannot be sent: {e}")))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The TLS error behind `err`, when a request failed because a handshake was refused (by this
/// client or by the node) rather than because the network failed.
pub(crate) fn tls_failure<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // rustls's errors reach the HTTP stack inside `io::Error`s (sometimes one in another),
        // whose `source()` skips the error they wrap: step into it instead.
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn tls_message(result: Result<impl fmt::Debug, Error>) -> String {
        match result {
            Err(Error::Tls(message)) => message,
            other => panic!("not a TLS error: {other:?}"),
        }
    }

    #[test]
    fn good_pem_is_accepted() {
        let (cert, key) = self_signed("localhost");
        assert_eq!(roots(cert.as_bytes()).unwrap().len(), 1);
        // Extra blocks around the key do not matter.
        let key_file = format!("{cert}{key}");
        identity(cert.as_bytes(), key_file.as_bytes()).unwrap();
    }

    #[test]
    fn bad_pem_says_which_input_is_wrong() {
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("other");
        let message = tls_message(roots(b"not pem at all"));
        assert!(
            message.contains("CA certificate PEM holds no CERTIFICATE"),
            "{message}"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let message = tls_message(roots(garbage.as_bytes()));
        assert!(
            message.contains("CA certificate cannot be trusted"),
            "{message}"
        );
        let message = tls_message(identity(key.as_bytes(), key.as_bytes()));
        assert!(
            message.contains("client certificate PEM holds no"),
            "{message}"
        );
        let message = tls_message(identity(cert.as_bytes(), cert.as_bytes()));
        assert!(
            message.contains("client key PEM holds no private key"),
            "{message}"
        );
        let message = tls_message(identity(cert.as_bytes(), other_key.as_bytes()));
        assert!(
            message.contains("cannot be used with its certificate"),
            "{message}"
        );
    }

    #[test]
    fn tokens_become_sensitive_bearer_headers() {
        let value = bearer("abc-123_x.y~").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer abc-123_x.y~");
        assert!(value.is_sensitive());
        for bad in ["", "a b", "tab\t", "ü", "line\n"] {
            assert!(
                matches!(bearer(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        let debug = format!(
            "{:?}",
            Credentials {
                token: Some("secret".into()),
                ..Credentials::default()
            }
        );
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(tls_failure(&io), Some(&tls));
        let twice = std::io::Error::other(io);
        assert_eq!(tls_failure(&twice), Some(&tls));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&plain), None);
    }
}
