//! The credential vault: each tenant's named credentials in the run store,
//! the secret sealed with AES-256-GCM (ring).
//!
//! # What is stored
//!
//! One record per (tenant, name) in the store's `credentials` column
//! family, JSON: kind, the non-secret detail (username, header or query
//! parameter name), origins, version, times, and the secret sealed under a
//! key: `key_id`, a random 96-bit nonce and the ciphertext with its tag.
//! The additional data of the seal is everything else in the record and the
//! tenant and name, so a sealed secret moved to another tenant or name, or a
//! record whose origins were edited on disk, no longer opens.
//!
//! # Keys and rotation
//!
//! A [`Keyring`] has one current key (new seals) and any number of previous
//! keys (opening only). [`Vault::open`] reseals every record under a
//! previous key with the current one, so after one start with both keys the
//! previous key can be dropped; a record under a key the keyring does not
//! hold stops the open with a sentence that names the key id.

use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Credential, CredentialError, CredentialFuture, CredentialKind, Credentials, Secret};
use crate::action::origin::Origin;
use crate::model::CredentialName;
use crate::store::{Store, StoreError, now_ms};

/// The length of a key: 256 bits.
pub const KEY_BYTES: usize = 32;
/// The most credentials a tenant keeps.
pub const MAX_CREDENTIALS: usize = 1000;
/// The longest origin, as stored.
pub const MAX_ORIGIN_BYTES: usize = 2048;
/// The longest username, header or parameter name.
pub const MAX_DETAIL_BYTES: usize = 256;

/// A named AES-256-GCM key.
pub struct Key {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub fn new(id: &str, bytes: &[u8]) -> Result<Key, VaultError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(VaultError::Key(format!(
                "key id {id:?} must be 1 to 64 printable characters without spaces"
            )));
        }
        if bytes.len() != KEY_BYTES {
            return Err(VaultError::Key(format!(
                "key {id:?} is {} bytes; a key is {KEY_BYTES} bytes",
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| VaultError::Key(format!("key {id:?} is not an AES-256 key")))?;
        Ok(Key {
            id: id.to_owned(),
            key: LessSafeKey::new(key),
        })
    }

    /// A key from its text form: the 32 bytes in base64 (what
    /// `head -c 32 /dev/urandom | base64` prints), surrounding space
    /// ignored.
    pub fn from_base64(id: &str, text: &str) -> Result<Key, VaultError> {
        // The decoder's own message may quote a character of the key.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                VaultError::Key(format!("key {id:?} is not {KEY_BYTES} bytes of base64"))
            })?;
        Key::new(id, &bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The current key, and previous keys still accepted for opening.
#[derive(Debug)]
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl Keyring {
    pub fn new(current: Key) -> Keyring {
        Keyring {
            current,
            previous: Vec::new(),
        }
    }

    /// Adds a key that opens what it sealed, and seals nothing.
    pub fn with_previous(mut self, key: Key) -> Result<Keyring, VaultError> {
        if key.id == self.current.id || self.previous.iter().any(|k| k.id == key.id) {
            return Err(VaultError::Key(format!(
                "key id {:?} is given twice",
                key.id
            )));
        }
        self.previous.push(key);
        Ok(self)
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    fn key(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

/// What a listing shows of a credential: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    pub name: String,
    /// `bearer`, `basic`, `header` or `query`.
    pub kind: String,
    /// The username, header or query parameter name.
    pub detail: Option<String>,
    pub origins: Vec<String>,
    /// 1 when set, one more on each rotation or replacement.
    pub version: u32,
    /// The key its secret is sealed with.
    pub key_id: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{0}")]
    Key(String),
    /// What the caller asked for is wrong (one sentence).
    #[error("{0}")]
    Invalid(String),
    #[error("tenant {tenant:?} has no credential {name:?}")]
    NotFound { tenant: String, name: String },
    #[error(
        "credential {name:?} of tenant {tenant:?} is sealed with key {key_id:?}, which this node does not have: add it as a previous key"
    )]
    UnknownKey {
        tenant: String,
        name: String,
        key_id: String,
    },
    #[error(
        "credential {name:?} of tenant {tenant:?} does not open with key {key_id:?}: the key is wrong or the record was altered"
    )]
    Tampered {
        tenant: String,
        name: String,
        key_id: String,
    },
    #[error("credential {name:?} of tenant {tenant:?} cannot be read: {reason}")]
    Corrupt {
        tenant: String,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    origins: Vec<String>,
    version: u32,
    created_ms: u64,
    updated_ms: u64,
    key_id: String,
    /// base64.
    nonce: String,
    /// base64: the secret, encrypted, with the tag.
    sealed: String,
}

impl Record {
    /// What the seal binds besides the secret.
    fn aad(&self, tenant: &str, name: &str) -> Vec<u8> {
        serde_json::to_vec(&(
            "isoflow credential 1",
            tenant,
            name,
            &self.kind,
            &self.detail,
            &self.origins,
            self.version,
            &self.key_id,
        ))
        .expect("strings always serialise")
    }

    fn info(&self, name: &str) -> CredentialInfo {
        CredentialInfo {
            name: name.to_owned(),
            kind: self.kind.clone(),
            detail: self.detail.clone(),
            origins: self.origins.clone(),
            version: self.version,
            key_id: self.key_id.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }
    }
}

/// Credentials in the run store, sealed.
#[derive(Debug)]
pub struct Vault {
    store: Arc<Store>,
    keys: Arc<Keyring>,
    random: SystemRandom,
    /// Held across each read-modify-write, so that a rotation and a
    /// replacement of one credential cannot interleave.
    writing: std::sync::Mutex<()>,
}

impl Vault {
    /// The vault over `store`, after resealing every credential sealed with
    /// a previous key under the current one. Fails, naming the credential
    /// and key id, if one is sealed with a key the keyring lacks or does
    /// not open.
    pub fn open(store: Arc<Store>, keys: impl Into<Arc<Keyring>>) -> Result<Vault, VaultError> {
        let vault = Vault {
            store,
            keys: keys.into(),
            random: SystemRandom::new(),
            writing: std::sync::Mutex::new(()),
        };
        let mut resealed = 0;
        // One record in memory at a time, however many there are.
        for (tenant, name) in vault.store.credential_names()? {
            let Some(bytes) = vault.store.credential(&tenant, &name)? else {
                continue;
            };
            let record = vault.record(&tenant, &name, &bytes)?;
            let secret = vault.unseal(&tenant, &name, &record)?;
            if record.key_id != vault.keys.current.id {
                let mut fresh = record.clone();
                vault.seal(&tenant, &name, &mut fresh, &secret)?;
                vault
                    .store
                    .put_credential(&tenant, &name, &to_json(&fresh))?;
                resealed += 1;
            }
        }
        if resealed > 0 {
            tracing::info!(
                credentials = resealed,
                key = %vault.keys.current.id,
                "credentials resealed with the current key"
            );
        }
        Ok(vault)
    }

    /// Stores (or replaces) a tenant's credential. Origins must be https
    /// unless `allow_http`.
    pub fn set(
        &self,
        tenant: &str,
        name: &str,
        kind: &CredentialKind,
        origins: &[String],
        allow_http: bool,
    ) -> Result<CredentialInfo, VaultError> {
        CredentialName::new(name.to_owned())
            .map_err(|e| VaultError::Invalid(format!("credential name {name:?}: {e}")))?;
        kind.check()
            .map_err(|e| VaultError::Invalid(format!("credential {name:?}: {e}")))?;
        if kind.detail().is_some_and(|d| d.len() > MAX_DETAIL_BYTES) {
            return Err(VaultError::Invalid(format!(
                "credential {name:?}: its username, header or parameter name is longer than {MAX_DETAIL_BYTES} bytes"
            )));
        }
        let origins = checked_origins(name, origins, allow_http)?;
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_ms();
        let previous = self.find(tenant, name)?;
        if previous.is_none() && self.store.credential_count(tenant)? >= MAX_CREDENTIALS {
            return Err(VaultError::Invalid(format!(
                "tenant {tenant:?} has {MAX_CREDENTIALS} credentials, the most a tenant keeps: delete one first"
            )));
        }
        let mut record = Record {
            kind: kind.name().to_owned(),
            detail: kind.detail().map(str::to_owned),
            origins,
            version: previous.as_ref().map_or(1, |r| r.version.saturating_add(1)),
            created_ms: previous.as_ref().map_or(now, |r| r.created_ms),
            updated_ms: now,
            key_id: String::new(),
            nonce: String::new(),
            sealed: String::new(),
        };
        self.seal(tenant, name, &mut record, kind.secret())?;
        self.store.put_credential(tenant, name, &to_json(&record))?;
        Ok(record.info(name))
    }

    /// Replaces a credential's secret, keeping its kind and origins.
    pub fn rotate(
        &self,
        tenant: &str,
        name: &str,
        secret: Secret,
    ) -> Result<CredentialInfo, VaultError> {
        let mut record = self
            .find(tenant, name)?
            .ok_or_else(|| VaultError::NotFound {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
            })?;
        let kind = kind_of(&record, secret).map_err(|reason| VaultError::Corrupt {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            reason,
        })?;
        kind.check()
            .map_err(|e| VaultError::Invalid(format!("credential {name:?}: {e}")))?;
        record.version = record.version.saturating_add(1);
        record.updated_ms = now_ms();
        self.seal(tenant, name, &mut record, kind.secret())?;
        self.store.put_credential(tenant, name, &to_json(&record))?;
        Ok(record.info(name))
    }

    /// Deletes a credential; whether there was one.
    pub fn delete(&self, tenant: &str, name: &str) -> Result<bool, VaultError> {
        if name.is_empty() || name.contains('\0') {
            return Ok(false);
        }
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.store.delete_credential(tenant, name)?)
    }

    /// A tenant's credentials, without their secrets, by name.
    pub fn list(&self, tenant: &str) -> Result<Vec<CredentialInfo>, VaultError> {
        self.store
            .credentials(Some(tenant))?
            .into_iter()
            .map(|(tenant, name, bytes)| Ok(self.record(&tenant, &name, &bytes)?.info(&name)))
            .collect()
    }

    /// A tenant's credential, opened.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<Credential>, VaultError> {
        let Some(record) = self.find(tenant, name)? else {
            return Ok(None);
        };
        let secret = self.unseal(tenant, name, &record)?;
        let corrupt = |reason: String| VaultError::Corrupt {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            reason,
        };
        let kind = kind_of(&record, secret).map_err(corrupt)?;
        let origins = record
            .origins
            .iter()
            .map(|o| o.parse::<Origin>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        Ok(Some(Credential::of(kind, origins)))
    }

    fn find(&self, tenant: &str, name: &str) -> Result<Option<Record>, VaultError> {
        if name.is_empty() || name.contains('\0') {
            return Ok(None);
        }
        self.store
            .credential(tenant, name)?
            .map(|bytes| self.record(tenant, name, &bytes))
            .transpose()
    }

    fn record(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<Record, VaultError> {
        serde_json::from_slice(bytes).map_err(|e| VaultError::Corrupt {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Seals `secret` into `record` with the current key.
    fn seal(
        &self,
        tenant: &str,
        name: &str,
        record: &mut Record,
        secret: &Secret,
    ) -> Result<(), VaultError> {
        let key = &self.keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| VaultError::Key("the system has no randomness for a nonce".into()))?;
        record.key_id = key.id.clone();
        let aad = record.aad(tenant, name);
        let mut sealed = secret.expose().as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut sealed,
            )
            .map_err(|_| VaultError::Key(format!("key {:?} cannot seal", key.id)))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        record.nonce = b64.encode(nonce);
        record.sealed = b64.encode(sealed);
        Ok(())
    }

    fn unseal(&self, tenant: &str, name: &str, record: &Record) -> Result<Secret, VaultError> {
        let key = self
            .keys
            .key(&record.key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                key_id: record.key_id.clone(),
            })?;
        let tampered = || VaultError::Tampered {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            key_id: record.key_id.clone(),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce: [u8; NONCE_LEN] = b64
            .decode(&record.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(tampered)?;
        let mut sealed = b64.decode(&record.sealed).map_err(|_| tampered())?;
        let aad = record.aad(tenant, name);
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut sealed,
            )
            .map_err(|_| tampered())?;
        let text = std::str::from_utf8(plain).map_err(|_| tampered())?;
        Ok(Secret::new(text))
    }
}

fn checked_origins(
    name: &str,
    origins: &[String],
    allow_http: bool,
) -> Result<Vec<String>, VaultError> {
    if origins.is_empty() {
        return Err(VaultError::Invalid(format!(
            "credential {name:?} has no origins: say where it may be sent, like https://erp.example.com"
        )));
    }
    if origins.len() > 32 {
        return Err(VaultError::Invalid(format!(
            "credential {name:?} has {} origins; at most 32",
            origins.len()
        )));
    }
    origins
        .iter()
        .map(|text| {
            let origin: Origin = text
                .parse()
                .map_err(|e| VaultError::Invalid(format!("credential {name:?}: {e}")))?;
            let shown = origin.to_string();
            if shown.len() > MAX_ORIGIN_BYTES {
                return Err(VaultError::Invalid(format!(
                    "credential {name:?}: an origin is longer than {MAX_ORIGIN_BYTES} bytes"
                )));
            }
            if shown.starts_with("http://") && !allow_http {
                return Err(VaultError::Invalid(format!(
                    "credential {name:?}: origin {shown} is plain http, where anyone on the path reads the secret; use https, or allow plain http explicitly"
                )));
            }
            Ok(shown)
        })
        .collect()
}

fn kind_of(record: &Record, secret: Secret) -> Result<CredentialKind, String> {
    let detail = || {
        record.detail.clone().ok_or_else(|| {
            format!(
                "a {} credential names no {}",
                record.kind,
                match record.kind.as_str() {
                    "basic" => "username",
                    "header" => "header",
                    _ => "parameter",
                }
            )
        })
    };
    Ok(match record.kind.as_str() {
        "bearer" => CredentialKind::Bearer { token: secret },
        "basic" => CredentialKind::Basic {
            username: detail()?,
            password: secret,
        },
        "header" => CredentialKind::Header {
            header: detail()?,
            value: secret,
        },
        "query" => CredentialKind::Query {
            param: detail()?,
            value: secret,
        },
        other => return Err(format!("unknown kind {other:?}")),
    })
}

fn to_json(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("records are plain data and always serialise")
}

impl Credentials for Vault {
    fn credential<'a>(
        &'a self,
        tenant: &'a str,
        _run_id: &'a str,
        name: &'a str,
    ) -> CredentialFuture<'a> {
        let found = self
            .get(tenant, name)
            .map_err(|e| CredentialError(e.to_string()));
        Box::pin(std::future::ready(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn key(id: &str, byte: u8) -> Key {
        Key::new(id, &[byte; KEY_BYTES]).expect("a key")
    }

    fn bearer(token: &str) -> CredentialKind {
        CredentialKind::Bearer {
            token: Secret::new(token),
        }
    }

    fn origins() -> Vec<String> {
        vec!["https://erp.example.com".into()]
    }

    #[test]
    fn a_secret_is_sealed_on_disk_and_opens_only_where_it_was_stored() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("a store"));
        let vault = Vault::open(store.clone(), Keyring::new(key("k1", 1))).expect("a vault");
        let info = vault
            .set(
                "acme",
                "erp-api",
                &bearer("s3cr3t-token"),
                &origins(),
                false,
            )
            .expect("stored");
        assert_eq!((info.version, info.key_id.as_str()), (1, "k1"));
        let raw = store
            .credential("acme", "erp-api")
            .expect("read")
            .expect("stored");
        assert!(!String::from_utf8_lossy(&raw).contains("s3cr3t"));
        let got = vault.get("acme", "erp-api").expect("opens").expect("found");
        assert_eq!(got.kind, bearer("s3cr3t-token"));
        assert_eq!(vault.get("other", "erp-api").expect("no error"), None);

        // Moved to another tenant, or with its origins edited: no longer opens.
        store
            .put_credential("evil", "erp-api", &raw)
            .expect("copied");
        assert!(matches!(
            vault.get("evil", "erp-api"),
            Err(VaultError::Tampered { .. })
        ));
        let mut record: Record = serde_json::from_slice(&raw).expect("json");
        record.origins = vec!["https://attacker.example".into()];
        store
            .put_credential("acme", "erp-api", &to_json(&record))
            .expect("edited");
        assert!(matches!(
            vault.get("acme", "erp-api"),
            Err(VaultError::Tampered { .. })
        ));
    }

    #[test]
    fn rotation_reseals_under_the_current_key_and_the_old_key_can_go() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("a store"));
        let old = Vault::open(store.clone(), Keyring::new(key("k1", 1))).expect("a vault");
        old.set("acme", "erp-api", &bearer("tok-1"), &origins(), false)
            .expect("stored");
        drop(old);

        // Without k1 the store cannot be opened, and says which key it needs.
        let missing =
            Vault::open(store.clone(), Keyring::new(key("k2", 2))).expect_err("k1 missing");
        assert!(missing.to_string().contains("key \"k1\""), "{missing}");

        let both = Keyring::new(key("k2", 2))
            .with_previous(key("k1", 1))
            .expect("two keys");
        let vault = Vault::open(store.clone(), both).expect("resealed");
        assert_eq!(vault.list("acme").expect("list")[0].key_id, "k2");
        drop(vault);

        let vault = Vault::open(store.clone(), Keyring::new(key("k2", 2))).expect("k2 alone");
        let got = vault.get("acme", "erp-api").expect("opens").expect("found");
        assert_eq!(got.kind, bearer("tok-1"));
        // A wrong key under the right id is told apart from a missing one.
        let wrong = Vault::open(store, Keyring::new(key("k2", 9))).expect_err("wrong key");
        assert!(matches!(wrong, VaultError::Tampered { .. }), "{wrong}");
    }

    #[test]
    fn set_rotate_list_delete() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("a store"));
        let vault = Vault::open(store, Keyring::new(key("k1", 1))).expect("a vault");
        let basic = CredentialKind::Basic {
            username: "svc".into(),
            password: Secret::new("pw-1"),
        };
        vault
            .set("acme", "crm", &basic, &origins(), false)
            .expect("stored");
        let rotated = vault
            .rotate("acme", "crm", Secret::new("pw-2"))
            .expect("rotated");
        assert_eq!(rotated.version, 2);
        assert_eq!(rotated.detail.as_deref(), Some("svc"));
        let got = vault.get("acme", "crm").expect("opens").expect("found");
        assert_eq!(
            got.kind,
            CredentialKind::Basic {
                username: "svc".into(),
                password: Secret::new("pw-2")
            }
        );
        assert!(matches!(
            vault.rotate("other", "crm", Secret::new("x")),
            Err(VaultError::NotFound { .. })
        ));
        let long = format!("https://erp.example.com/{}", "a".repeat(MAX_ORIGIN_BYTES));
        let error = vault
            .set("acme", "long", &bearer("t"), &[long], false)
            .expect_err("too long");
        assert!(
            error.to_string().contains("longer than 2048 bytes"),
            "{error}"
        );
        let plain = vault
            .set(
                "acme",
                "local",
                &bearer("t"),
                &["http://127.0.0.1:9".into()],
                false,
            )
            .expect_err("plain http refused");
        assert!(plain.to_string().contains("plain http"), "{plain}");
        vault
            .set(
                "acme",
                "local",
                &bearer("t"),
                &["http://127.0.0.1:9".into()],
                true,
            )
            .expect("allowed explicitly");
        let names: Vec<String> = vault
            .list("acme")
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["crm", "local"]);
        assert!(vault.delete("acme", "crm").expect("deleted"));
        assert!(!vault.delete("acme", "crm").expect("gone"));
        assert!(vault.list("other").expect("list").is_empty());
    }
}
