//! Certificates made in the test (rcgen): a CA and node or client certificates it signs, in the
//! layout the node expects (node certificates: CN and DNS SAN `node-N`, serverAuth and
//! clientAuth; client certificates: CN = name, clientAuth only).

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority of a test, with its files.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate (PEM).
    pub cert_file: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, written to files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/name.crt`.
    pub fn new(dir: &Path, name: &str) -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir)?;
        let cert_file = dir.join(format!("{name}.crt"));
        std::fs::write(&cert_file, cert.pem())?;
        Ok(TestCa {
            params,
            key,
            cert_file,
            dir: dir.to_path_buf(),
        })
    }

    fn sign(&self, params: CertificateParams, file_name: &str) -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_name}.crt")),
            key: self.dir.join(format!("{file_name}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// A node certificate for node `id`, valid for `hosts` (IP addresses or names); written as
    /// `file_name`.crt/.key.
    pub fn node(&self, id: u64, hosts: &[&str], file_name: &str) -> Result<CertFiles> {
        let name = format!("node-{id}");
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, &name);
        for host in hosts {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*host).try_into()?),
            });
        }
        params
            .subject_alt_names
            .push(SanType::DnsName(name.as_str().try_into()?));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, file_name)
    }

    /// A client certificate named `name` (common name), written as `file_name`.crt/.key.
    pub fn client(&self, name: &str, file_name: &str) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, file_name)
    }
}
