//! TLS for a node's connections: the listener (`[tls]`), a worker's
//! connection to its coordinator (`[worker.tls]`) and the connection to
//! etcd (`[etcd]` ca, cert, key). rustls with ring, through tonic.
//!
//! Every file is read and parsed when the node starts, so that a missing
//! or wrong file stops it with one sentence naming the key and the path,
//! never at the first connection.
//!
//! A worker is known by its certificate: [`worker_names`] reads the names a
//! client certificate carries (subject common names and DNS names), and
//! [`check_worker_id`] holds the id a worker says in its Hello to them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::Status;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::config;

/// How long a client has to finish its TLS handshake on the listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM certificates in the file that `key` names, at least one, each
/// parsed as X.509.
fn read_certificates(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))?;
    let mut certificates = 0;
    for pem in Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        pem.parse_x509().map_err(|e| {
            anyhow::anyhow!(
                "{key} {}: a certificate in it cannot be read: {e}",
                path.display()
            )
        })?;
        certificates += 1;
    }
    if certificates == 0 {
        bail!(
            "{key} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(bytes)
}

/// The PEM private key in the file that `key` names.
fn read_private_key(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))?;
    let found = Pem::iter_from_buffer(&bytes)
        .filter_map(Result::ok)
        .any(|pem| pem.label.ends_with("PRIVATE KEY"));
    if !found {
        bail!(
            "{key} {} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
            path.display()
        );
    }
    Ok(bytes)
}

/// The certificate and key `cert_key` and `key_key` name, as one identity.
fn identity(
    (cert_key, cert): (&str, &Path),
    (key_key, key): (&str, &Path),
) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(
        read_certificates(cert_key, cert)?,
        read_private_key(key_key, key)?,
    ))
}

/// The listener's TLS, when `[tls]` is set. Client certificates are
/// optional at the TLS layer (API callers have none); the workers' API
/// requires one (see `auth::ClusterAuth`). A certificate that is presented
/// must be signed by `client_ca`, or the handshake fails.
pub fn server(tls: &config::Tls) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let mut server = ServerTlsConfig::new()
        .identity(identity(("tls.cert", cert), ("tls.key", key))?)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca {
        server = server
            .client_ca_root(Certificate::from_pem(read_certificates(
                "tls.client_ca",
                ca,
            )?))
            .client_auth_optional(true);
    }
    // rustls takes them apart here, as the listener will: a key that is
    // not the certificate's is refused now.
    tonic::transport::Server::builder()
        .tls_config(server.clone())
        .map_err(|e| {
            anyhow::anyhow!(
                "tls.cert {} and tls.key {} cannot be used: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(server))
}

/// A worker's TLS towards its coordinator, when `[worker.tls]` is set.
pub fn worker(tls: &config::WorkerTls) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &tls.ca else {
        return Ok(None);
    };
    let mut client = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        read_certificates("worker.tls.ca", ca)?,
    ));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        client = client.identity(identity(
            ("worker.tls.cert", cert),
            ("worker.tls.key", key),
        )?);
    }
    if let Some(name) = &tls.server_name {
        client = client.domain_name(name.clone());
    }
    Ok(Some(client))
}

/// The TLS options for etcd, when `etcd.ca` is set.
pub fn etcd(etcd: &config::Etcd) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
    let Some(ca) = &etcd.ca else {
        return Ok(None);
    };
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read_certificates("etcd.ca", ca)?));
    if let (Some(cert), Some(key)) = (&etcd.cert, &etcd.key) {
        options = options.identity(identity(("etcd.cert", cert), ("etcd.key", key))?);
    }
    Ok(Some(options))
}

/// The names a certificate (DER) carries: its subject's common names, then
/// its DNS names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub common: Vec<String>,
    pub dns: Vec<String>,
}

impl Names {
    fn contains(&self, id: &str) -> bool {
        self.common.iter().chain(&self.dns).any(|name| name == id)
    }
}

impl std::fmt::Display for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        write!(
            f,
            "common name {}; DNS names {}",
            list(&self.common),
            list(&self.dns)
        )
    }
}

/// The names in a client certificate, DER as rustls received it.
pub fn worker_names(der: &[u8]) -> Result<Names, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let mut names = Names::default();
    for common in certificate.subject().iter_common_name() {
        if let Ok(name) = common.as_str() {
            names.common.push(name.to_owned());
        }
    }
    let alternative = certificate
        .subject_alternative_name()
        .map_err(|e| format!("the certificate's subject alternative names cannot be read: {e}"))?;
    if let Some(alternative) = alternative {
        for name in &alternative.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.dns.push((*dns).to_owned());
            }
        }
    }
    Ok(names)
}

/// PERMISSION_DENIED unless the certificate a worker presented (`der`, the
/// first of its chain) names `worker_id`.
pub fn check_worker_id(worker_id: &str, der: &[u8]) -> Result<(), Status> {
    let names = worker_names(der).map_err(Status::permission_denied)?;
    if names.contains(worker_id) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "worker id {worker_id:?} is not named by the worker's certificate ({names}): \
         a worker's node_id must be its certificate's common name or one of its DNS names"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
    /// -subj /CN=worker-1 -addext subjectAltName=DNS:w1.internal,IP:10.0.0.1`
    const WORKER_1: &str = "-----BEGIN CERTIFICATE-----
MIIBmDCCAT+gAwIBAgIUS5qUWgAweZKaH0dhWqW0ZHBSgDswCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwId29ya2VyLTEwHhcNMjYxMTI4MjM1MTA5WhcNMzYxMTI1MjM1
MTA5WjATMREwDwYDVQQDDAh3b3JrZXItMTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABG/4ADrzIOHvw5UsvEc4kPmIRz9jpsd/yYgBXk2zf5ld6Ofa6JQTI6/qugLq
7DhbjEmwrG89WtBPZz6xYJTGnPajcTBvMB0GA1UdDgQWBBQLsgx5ZvqOraQHAtaG
u3Fu0PJAoTAfBgNVHSMEGDAWgBQLsgx5ZvqOraQHAtaGu3Fu0PJAoTAPBgNVHRMB
Af8EBTADAQH/MBwGA1UdEQQVMBOCC3cxLmludGVybmFshwQKAAABMAoGCCqGSM49
BAMCA0cAMEQCIHY0MsnJ/kEb5uPIzu1t8p9zGPUCZtrFXap1iVAqrWwSAiA5WkwU
kIPq+nehC1vU9ac7T8KCyUj1xoqM/8Nf6q/16w==
-----END CERTIFICATE-----
";

    fn der(pem: &str) -> Vec<u8> {
        Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .expect("one block")
            .expect("valid PEM")
            .contents
    }

    #[test]
    fn a_certificates_names_are_its_common_name_and_dns_names() {
        let names = worker_names(&der(WORKER_1)).expect("readable");
        assert_eq!(names.common, ["worker-1"]);
        assert_eq!(names.dns, ["w1.internal"], "IP addresses are not names");
        check_worker_id("worker-1", &der(WORKER_1)).expect("the common name");
        check_worker_id("w1.internal", &der(WORKER_1)).expect("a DNS name");
        let refused = check_worker_id("worker-2", &der(WORKER_1)).expect_err("not named");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "worker id \"worker-2\" is not named by the worker's certificate (common name \
             \"worker-1\"; DNS names \"w1.internal\"): a worker's node_id must be its \
             certificate's common name or one of its DNS names"
        );
        let garbage = check_worker_id("worker-1", b"not a certificate").expect_err("garbage");
        assert_eq!(garbage.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_listener_certificate_and_a_key_that_is_not_its_are_refused_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = isoflow_testkit::tls::Ca::new("test CA");
        let mine = ca.server(&["127.0.0.1"]).write(dir.path(), "mine");
        let other = ca.server(&["127.0.0.1"]).write(dir.path(), "other");
        let client_ca = ca.write(dir.path(), "ca");
        let tls = |key: &Path| config::Tls {
            cert: Some(mine.cert.clone()),
            key: Some(key.to_owned()),
            client_ca: Some(client_ca.clone()),
        };
        assert!(server(&tls(&mine.key)).expect("its own key").is_some());
        let error = server(&tls(&other.key))
            .expect_err("another certificate's key")
            .to_string();
        assert!(
            error.starts_with(&format!(
                "tls.cert {} and tls.key {} cannot be used: ",
                mine.cert.display(),
                other.key.display()
            )),
            "{error}"
        );
        assert!(server(&config::Tls::default()).expect("no TLS").is_none());
    }

    #[test]
    fn unreadable_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let error = read_certificates("tls.cert", &missing)
            .expect_err("missing")
            .to_string();
        assert_eq!(error, format!("cannot read tls.cert {}", missing.display()));

        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let error = read_certificates("tls.client_ca", &key_only)
            .expect_err("no certificate")
            .to_string();
        assert!(error.starts_with("tls.client_ca "), "{error}");
        assert!(error.ends_with("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        read_private_key("tls.key", &key_only).expect("a key block");

        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, WORKER_1).expect("write");
        read_certificates("tls.cert", &cert).expect("a certificate");
        let error = read_private_key("tls.key", &cert)
            .expect_err("no key")
            .to_string();
        assert!(error.contains("holds no PEM private key"), "{error}");
    }
}
