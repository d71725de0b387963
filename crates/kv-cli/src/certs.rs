//! Certificates for a TLS cluster, as PEM: a CA ([`create_ca`]), node certificates
//! ([`create_node`]) and client certificates ([`create_client`]), the last two signed by a CA
//! loaded from its PEM ([`Ca::from_pem`]). Keys are ECDSA P-256, made with rcgen on aws-lc-rs.
//!
//! The names are the ones the nodes check. Node N is `node-N` (common name, and a DNS name
//! beside its hosts) with both the serverAuth and clientAuth usages: the same certificate is
//! its server certificate and its client certificate towards its peers. A client is its common
//! name, with clientAuth only, and may not take a node's name. Writing the files is
//! [`cert_files`](crate::cert_files)'s job; these functions only make PEM.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::ServerName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The CA's common name unless `--name` says otherwise.
pub const DEFAULT_CA_NAME: &str = "kv-ca";
/// Days a CA is valid unless `--days` says otherwise.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Days a node or client certificate is valid unless `--days` says otherwise.
pub const DEFAULT_DAYS: u32 = 365;
/// Longest validity `--days` accepts (a hundred years).
pub const MAX_DAYS: u32 = 36_500;

/// Longest common name X.509 allows (`ub-common-name`).
const MAX_NAME_LEN: usize = 64;
/// Certificates start this long before they are made, so a node whose clock is a little behind
/// accepts one made just now.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A certificate and its private key, both PEM. No `Debug`: it holds a private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that can sign: its name and key, read from its certificate and key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// The CA whose certificate and key are `cert_pem` and `key_pem`. Fails unless the
    /// certificate is a CA's (basicConstraints CA:true, keyCertSign if it lists usages), is
    /// valid now, and `key_pem` is its key: certificates signed otherwise would not verify.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the CA certificate is not PEM: {e}"))?;
        ensure!(
            pem.label == "CERTIFICATE",
            "the CA certificate file holds a {} block, not a CERTIFICATE",
            pem.label
        );
        let (_, cert) = X509Certificate::from_der(&pem.contents)
            .map_err(|e| anyhow::anyhow!("the CA certificate cannot be read: {e}"))?;
        ensure!(
            cert.is_ca(),
            "the certificate of {} is not a CA's (no basicConstraints CA:true)",
            cert.subject()
        );
        let usage = cert
            .key_usage()
            .map_err(|e| anyhow::anyhow!("the CA certificate's key usage cannot be read: {e}"))?;
        if let Some(usage) = usage {
            ensure!(
                usage.value.key_cert_sign(),
                "the CA certificate may not sign certificates (no keyCertSign usage)"
            );
        }
        ensure!(
            cert.validity().is_valid(),
            "the CA certificate is not valid now (valid from {} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        );
        let key = KeyPair::from_pem(key_pem).context("the CA key cannot be read")?;
        ensure!(
            key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref(),
            "the CA key does not belong to the CA certificate"
        );
        let issuer = Issuer::from_ca_cert_der(&pem.contents.clone().into(), key)
            .context("the CA certificate cannot sign")?;
        Ok(Ca { issuer })
    }

    fn sign(&self, params: &CertificateParams) -> anyhow::Result<Issued> {
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed CA named `name`, valid for `days`, that may sign end-entity certificates only
/// (path length 0): node certificates for the peer CA, client certificates for the client CA.
pub fn create_ca(name: &str, days: u32) -> anyhow::Result<Issued> {
    check_ca_name(name).map_err(anyhow::Error::msg)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, days)?;
    let key = new_key()?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Node `id`'s certificate: common name `node-<id>`, a SubjectAltName for each of `hosts` (an
/// IP address, or a DNS name) and the DNS name `node-<id>`, for serverAuth and clientAuth.
pub fn create_node(ca: &Ca, id: u64, hosts: &[String], days: u32) -> anyhow::Result<Issued> {
    ensure!(id > 0, "node ids start at 1");
    ensure!(
        !hosts.is_empty(),
        "a node certificate needs at least one host"
    );
    let name = node_name(id);
    let mut params = CertificateParams::default();
    for host in hosts.iter().map(String::as_str).chain([name.as_str()]) {
        let san = subject_alt_name(host)?;
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.distinguished_name = common_name(&name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days)?;
    ca.sign(&params)
}

/// The certificate of the client `name`: that common name, for clientAuth only.
pub fn create_client(ca: &Ca, name: &str, days: u32) -> anyhow::Result<Issued> {
    check_client_name(name).map_err(anyhow::Error::msg)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days)?;
    ca.sign(&params)
}

/// The name of node `id` in certificates: `node-<id>`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// Parses a `--host`: an IP address, or a DNS name (lowercased). Refuses anything a TLS
/// client could not match against, such as `host:port`, a URL or a wildcard.
pub fn parse_host(input: &str) -> Result<String, String> {
    let host = input.trim();
    match ServerName::try_from(host) {
        Ok(ServerName::IpAddress(_)) => Ok(host.to_owned()),
        Ok(ServerName::DnsName(name)) => Ok(name.as_ref().to_ascii_lowercase()),
        _ => Err(format!(
            "`{input}` is neither an IP address nor a DNS name (give the host without port or scheme)"
        )),
    }
}

/// Checks a client's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit
/// (it is also part of a file name), and not a node's name (`node-<digits>`, any case), so a
/// client certificate can never pass for a node.
pub fn check_client_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(format!(
            "`{name}` is not a client name: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(digits) = lower.strip_prefix("node-") {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{name}` is a node's name; client names may not look like node-<N>"
            ));
        }
    }
    Ok(())
}

/// Checks a CA's name: 1 to 64 characters, none of them control characters.
pub fn check_ca_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "`{name}` is not a CA name: use 1 to {MAX_NAME_LEN} printable characters"
        ));
    }
    Ok(())
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn subject_alt_name(host: &str) -> anyhow::Result<SanType> {
    let host = parse_host(host).map_err(anyhow::Error::msg)?;
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().context("a DNS name must be ASCII")?),
    })
}

/// Valid from a little before now ([`CLOCK_SKEW`]) until `days` from now.
fn set_validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 || days > MAX_DAYS {
        bail!("the validity must be 1 to {MAX_DAYS} days, not {days}");
    }
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    // Within a few centuries of now, far from the limits of the date type: no overflow.
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + Duration::from_secs(u64::from(days) * 24 * 60 * 60);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn ca() -> (Issued, Ca) {
        let issued = create_ca(DEFAULT_CA_NAME, DEFAULT_CA_DAYS).unwrap();
        let ca = Ca::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        (issued, ca)
    }

    /// The common name, and the SubjectAltNames as text (`DNS:x`, `IP:y`).
    fn names(cert: &X509Certificate<'_>) -> (String, Vec<String>) {
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|name| match name {
                        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap())),
                            _ => format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap())),
                        },
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (cn, sans)
    }

    /// (serverAuth, clientAuth) of the extended key usage.
    fn usages(cert: &X509Certificate<'_>) -> (bool, bool) {
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        (eku.server_auth, eku.client_auth)
    }

    fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    #[test]
    fn ca_is_a_ca_named_as_asked() {
        let (issued, _) = ca();
        let der = der(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(names(&cert).0, "kv-ca");
        assert!(cert.is_ca());
        let constraints = cert.basic_constraints().unwrap().unwrap();
        assert!(constraints.critical);
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert!(!usage.digital_signature());
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, i64::from(DEFAULT_CA_DAYS));
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn node_certificate_names_its_hosts_and_chains_to_the_ca_both_ways() {
        let (ca_issued, ca) = ca();
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let node = create_node(&ca, 3, &hosts, DEFAULT_DAYS).unwrap();
        let node_der = der(&node.cert_pem);
        let (_, cert) = X509Certificate::from_der(&node_der).unwrap();
        let (cn, sans) = names(&cert);
        assert_eq!(cn, "node-3");
        assert_eq!(sans, ["IP:127.0.0.1", "DNS:localhost", "DNS:node-3"]);
        assert_eq!(usages(&cert), (true, true));
        assert!(!cert.is_ca());
        assert_eq!(
            cert.issuer(),
            X509Certificate::from_der(&der(&ca_issued.cert_pem))
                .unwrap()
                .1
                .subject()
        );

        let now = UnixTime::now();
        // As a client of its peers.
        let clients =
            WebPkiClientVerifier::builder_with_provider(roots(&ca_issued.cert_pem), provider())
                .build()
                .unwrap();
        clients.verify_client_cert(&node_der, &[], now).unwrap();
        // As a server, under each of its names.
        let servers =
            WebPkiServerVerifier::builder_with_provider(roots(&ca_issued.cert_pem), provider())
                .build()
                .unwrap();
        for name in ["127.0.0.1", "localhost", "node-3"] {
            let name = ServerName::try_from(name).unwrap();
            servers
                .verify_server_cert(&node_der, &[], &name, &[], now)
                .unwrap();
        }
        let elsewhere = ServerName::try_from("10.0.0.9").unwrap();
        assert!(servers
            .verify_server_cert(&node_der, &[], &elsewhere, &[], now)
            .is_err());
        // The key is the certificate's.
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap();
        rustls::sign::CertifiedKey::from_der(vec![node_der], key, &provider())
            .unwrap()
            .keys_match()
            .unwrap();
    }

    #[test]
    fn client_certificate_is_for_client_auth_only_and_chains_to_the_ca() {
        let (ca_issued, ca) = ca();
        let client = create_client(&ca, "app-1", 30).unwrap();
        let client_der = der(&client.cert_pem);
        let (_, cert) = X509Certificate::from_der(&client_der).unwrap();
        let (cn, sans) = names(&cert);
        assert_eq!(cn, "app-1");
        assert!(sans.is_empty());
        assert_eq!(usages(&cert), (false, true));
        let now = UnixTime::now();
        WebPkiClientVerifier::builder_with_provider(roots(&ca_issued.cert_pem), provider())
            .build()
            .unwrap()
            .verify_client_cert(&client_der, &[], now)
            .unwrap();
        // It cannot serve: no serverAuth usage.
        let servers =
            WebPkiServerVerifier::builder_with_provider(roots(&ca_issued.cert_pem), provider())
                .build()
                .unwrap();
        let name = ServerName::try_from("app-1").unwrap();
        assert!(servers
            .verify_server_cert(&client_der, &[], &name, &[], now)
            .is_err());
    }

    #[test]
    fn certificate_of_another_ca_does_not_verify() {
        let (ca_issued, _) = ca();
        let (_, other) = ca();
        let node = create_node(&other, 1, &["localhost".to_owned()], 1).unwrap();
        let clients =
            WebPkiClientVerifier::builder_with_provider(roots(&ca_issued.cert_pem), provider())
                .build()
                .unwrap();
        assert!(clients
            .verify_client_cert(&der(&node.cert_pem), &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn ca_loading_refuses_a_foreign_key_and_a_leaf() {
        let (ca_issued, ca) = ca();
        let (other_issued, _) = self::ca();
        let err = Ca::from_pem(&ca_issued.cert_pem, &other_issued.key_pem)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let leaf = create_client(&ca, "app", 1).unwrap();
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).err().unwrap();
        assert!(err.to_string().contains("not a CA"), "{err}");
        assert!(Ca::from_pem("junk", &ca_issued.key_pem).is_err());
        assert!(Ca::from_pem(&ca_issued.cert_pem, "junk").is_err());
    }

    #[test]
    fn names_and_hosts_are_checked() {
        assert_eq!(parse_host(" LocalHost ").unwrap(), "localhost");
        assert_eq!(parse_host("::1").unwrap(), "::1");
        assert_eq!(parse_host("10.1.2.3").unwrap(), "10.1.2.3");
        for bad in [
            "",
            "host:7001",
            "https://host",
            "*.example.com",
            "a b",
            "[::1]",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
        for good in [
            "app", "app-1", "A.b_c", "node-", "node-x", "nodes-1", "1node",
        ] {
            check_client_name(good).unwrap();
        }
        for bad in [
            "node-1",
            "NODE-42",
            "",
            "-app",
            ".app",
            "a/b",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(check_client_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_ca_name("kv peer CA").is_ok());
        assert!(check_ca_name(" ").is_err());
        assert!(check_ca_name("a\nb").is_err());
        let (_, ca) = ca();
        assert!(create_node(&ca, 0, &["localhost".to_owned()], 1).is_err());
        assert!(create_node(&ca, 1, &[], 1).is_err());
        assert!(create_client(&ca, "node-7", 1).is_err());
        assert!(create_ca("kv-ca", 0).is_err());
        assert!(create_ca("kv-ca", MAX_DAYS + 1).is_err());
    }
}
