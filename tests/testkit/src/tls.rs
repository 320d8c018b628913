//! Certificates for tests, made with rcgen (ring, no aws-lc): a [`Ca`]
//! issues server certificates (names as subject alternative names) and
//! client certificates (a common name only), and writes everything as PEM
//! files for processes to read.
//!
//! ```no_run
//! use isoflow_testkit::tls::Ca;
//!
//! let dir = tempfile::tempdir()?;
//! let ca = Ca::new("cluster CA");
//! let ca_file = ca.write(dir.path(), "ca");
//! let server = ca.server(&["127.0.0.1", "localhost"]).write(dir.path(), "coordinator");
//! let worker = ca.client("worker-1").write(dir.path(), "worker-1");
//! // ... point configs at ca_file, server.cert, server.key, worker.cert ...
//! # anyhow::Ok(())
//! ```
//!
//! Certificates keep rcgen's validity (1975 to 4096): a test never meets
//! an expired one.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority, its key in memory.
pub struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`Issued::write`] put a certificate and its key.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params
}

impl Ca {
    /// A fresh self-signed CA, `name` its common name.
    pub fn new(name: &str) -> Ca {
        let mut params = params(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("rcgen generates a P-256 key");
        let cert = params
            .self_signed(&key)
            .expect("a CA's parameters are valid");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA's certificate to `dir/<name>.pem`; its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).expect("write the CA certificate");
        path
    }

    /// A server certificate for `names` (IP addresses or DNS names, all as
    /// subject alternative names; the first is also the common name), good
    /// for client authentication too, as etcd's must be.
    pub fn server(&self, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("valid names");
        params.distinguished_name =
            self::params(names.first().copied().unwrap_or("server")).distinguished_name;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A client certificate whose only name is its common name.
    pub fn client(&self, common_name: &str) -> Issued {
        let mut params = params(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Issued {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("rcgen generates a P-256 key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the CA signs valid parameters");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `dir/<name>.pem` and `dir/<name>-key.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> Files {
        let files = Files {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, &self.cert_pem).expect("write a certificate");
        std::fs::write(&files.key, &self.key_pem).expect("write a private key");
        files
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}
