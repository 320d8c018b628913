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

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::oauth2::{self, Ask, OAuth2Setup, OAuth2State, Pending, TokenSet, Unhealthy};
use super::{Credential, CredentialError, CredentialFuture, CredentialKind, Credentials, Secret};
use crate::action::http;
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
    /// An OAuth2 credential's state: grant, endpoint, expiry, health.
    pub oauth2: Option<OAuth2State>,
}

/// An OAuth2 credential went unhealthy: its tokens could not be renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrenewable {
    pub tenant: String,
    pub name: String,
    /// One sentence, without secrets.
    pub reason: String,
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
    /// An OAuth2 credential has no usable token and cannot get one now.
    #[error("credential {name:?}: {reason}")]
    Unusable { name: String, reason: String },
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
    /// base64: the secret, encrypted, with the tag. For OAuth2: the
    /// [`TokenSet`] as JSON.
    sealed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth2: Option<OAuth2State>,
}

impl Record {
    /// A first version made now, its secret not sealed yet.
    fn unsealed(kind: &str, detail: Option<String>, origins: Vec<String>) -> Record {
        let now = now_ms();
        Record {
            kind: kind.to_owned(),
            detail,
            origins,
            version: 1,
            created_ms: now,
            updated_ms: now,
            key_id: String::new(),
            nonce: String::new(),
            sealed: String::new(),
            oauth2: None,
        }
    }

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
        .map(|mut aad| {
            // Appended only when there is one: records sealed before
            // OAuth2 existed keep their additional data.
            if let Some(state) = &self.oauth2 {
                aad.extend(serde_json::to_vec(state).expect("plain data always serialises"));
            }
            aad
        })
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
            oauth2: self.oauth2.clone().map(|mut state| {
                // Its state hash is of no use to anyone reading a listing.
                if let Some(pending) = &mut state.pending {
                    pending.state_sha256.clear();
                }
                state
            }),
        }
    }
}

/// One credential's renewal turn.
type Flight = Arc<tokio::sync::Mutex<()>>;

/// Credentials in the run store, sealed.
#[derive(Debug)]
pub struct Vault {
    store: Arc<Store>,
    keys: Arc<Keyring>,
    random: SystemRandom,
    /// Held across each read-modify-write, so that a rotation and a
    /// replacement of one credential cannot interleave.
    writing: std::sync::Mutex<()>,
    /// Renews OAuth2 tokens; without it they are used until they expire.
    http: std::sync::OnceLock<http::Client>,
    /// One renewal at a time per (tenant, name): concurrent users of an
    /// expired token wait for the one renewal, then share its token.
    flights: std::sync::Mutex<HashMap<(String, String), Flight>>,
    unrenewable: tokio::sync::broadcast::Sender<Unrenewable>,
    /// Told of each renewal's outcome (true: renewed), for metrics.
    renewals: std::sync::OnceLock<RenewalObserver>,
}

/// See [`Vault::observe_renewals`].
struct RenewalObserver(Box<dyn Fn(bool) + Send + Sync>);

impl std::fmt::Debug for RenewalObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenewalObserver")
    }
}

impl Vault {
    /// Calls `observer` after each OAuth2 renewal the vault asks a token
    /// endpoint for, with whether it got a token. Set once.
    pub fn observe_renewals(&self, observer: impl Fn(bool) + Send + Sync + 'static) {
        let _ = self.renewals.set(RenewalObserver(Box::new(observer)));
    }

    fn renewed(&self, ok: bool) {
        if let Some(observer) = self.renewals.get() {
            (observer.0)(ok);
        }
    }

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
            http: std::sync::OnceLock::new(),
            flights: std::sync::Mutex::default(),
            unrenewable: tokio::sync::broadcast::channel(64).0,
            renewals: std::sync::OnceLock::new(),
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
        let mut record = Record::unsealed(kind.name(), kind.detail().map(str::to_owned), origins);
        self.store_new(tenant, name, &mut record, kind.secret())
    }

    /// Stores `record` as the tenant's credential `name` (a new one, or the
    /// next version of the one there), sealing `secret` into it.
    fn store_new(
        &self,
        tenant: &str,
        name: &str,
        record: &mut Record,
        secret: &Secret,
    ) -> Result<CredentialInfo, VaultError> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.find(tenant, name)?;
        if previous.is_none() && self.store.credential_count(tenant)? >= MAX_CREDENTIALS {
            return Err(VaultError::Invalid(format!(
                "tenant {tenant:?} has {MAX_CREDENTIALS} credentials, the most a tenant keeps: delete one first"
            )));
        }
        if let Some(previous) = &previous {
            record.version = previous.version.saturating_add(1);
            record.created_ms = previous.created_ms;
        }
        self.seal(tenant, name, record, secret)?;
        self.store.put_credential(tenant, name, &to_json(record))?;
        Ok(record.info(name))
    }

    /// Replaces a credential's secret, keeping its kind and origins.
    pub fn rotate(
        &self,
        tenant: &str,
        name: &str,
        secret: Secret,
    ) -> Result<CredentialInfo, VaultError> {
        // A renewal writing tokens meanwhile would be lost, or lose these.
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut record = self.existing(tenant, name)?;
        let sealed = if record.oauth2.is_some() {
            // An OAuth2 credential's secret is its client secret.
            let mut tokens = self.tokens(tenant, name, &record)?;
            CredentialKind::Bearer {
                token: secret.clone(),
            }
            .check()
            .map_err(|e| VaultError::Invalid(format!("credential {name:?}: {e}")))?;
            tokens.client_secret = secret.expose().to_owned();
            if let Some(state) = &mut record.oauth2 {
                state.unhealthy = None;
            }
            token_secret(&tokens)
        } else {
            let kind = kind_of(&record, secret).map_err(|reason| VaultError::Corrupt {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                reason,
            })?;
            kind.check()
                .map_err(|e| VaultError::Invalid(format!("credential {name:?}: {e}")))?;
            kind.secret().clone()
        };
        record.version = record.version.saturating_add(1);
        record.updated_ms = now_ms();
        self.seal(tenant, name, &mut record, &sealed)?;
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
        self.opened(tenant, name, &record).map(Some)
    }

    /// A stored record as the credential it is: an OAuth2 one as its
    /// current access token.
    fn opened(&self, tenant: &str, name: &str, record: &Record) -> Result<Credential, VaultError> {
        if record.oauth2.is_some() {
            return self.bearer(tenant, name, record);
        }
        let secret = self.unseal(tenant, name, record)?;
        let kind = kind_of(record, secret).map_err(|reason| VaultError::Corrupt {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            reason,
        })?;
        Ok(Credential::of(kind, origins_of(tenant, name, record)?))
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

    /// [`Vault::find`], with no such credential an error.
    fn existing(&self, tenant: &str, name: &str) -> Result<Record, VaultError> {
        self.find(tenant, name)?
            .ok_or_else(|| VaultError::NotFound {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
            })
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

/// OAuth2 credentials: set, authorize, and tokens renewed on use.
impl Vault {
    /// Lets the vault renew OAuth2 tokens through `client` (whose egress
    /// policy applies to token endpoints). Set once; later calls are
    /// ignored.
    pub fn renew_with(&self, client: http::Client) {
        let _ = self.http.set(client);
    }

    /// OAuth2 credentials that went unhealthy, as it happens.
    pub fn unrenewable(&self) -> tokio::sync::broadcast::Receiver<Unrenewable> {
        self.unrenewable.subscribe()
    }

    /// Stores (or replaces) a tenant's OAuth2 credential. It holds no
    /// access token yet: the first use gets one (the authorization code
    /// grant needs [`Vault::authorize`] first).
    pub fn set_oauth2(
        &self,
        tenant: &str,
        name: &str,
        setup: &OAuth2Setup,
        origins: &[String],
        allow_http: bool,
    ) -> Result<CredentialInfo, VaultError> {
        CredentialName::new(name.to_owned())
            .map_err(|e| VaultError::Invalid(format!("credential name {name:?}: {e}")))?;
        setup
            .check(allow_http)
            .map_err(|e| VaultError::Invalid(format!("credential {name:?}: {e}")))?;
        let origins = checked_origins(name, origins, allow_http)?;
        // Replaced, it keeps its callback: the provider knows that URI.
        let callback_id = match setup.grant {
            oauth2::Grant::AuthorizationCode => Some(
                match self
                    .find(tenant, name)?
                    .and_then(|r| r.oauth2)
                    .and_then(|s| s.callback_id)
                {
                    Some(id) => id,
                    None => oauth2::random_text(&self.random, 16).map_err(VaultError::Key)?,
                },
            ),
            _ => None,
        };
        let mut record = Record::unsealed("oauth2", Some(setup.client_id.clone()), origins);
        record.oauth2 = Some(OAuth2State {
            token_url: setup.token_url.clone(),
            client_id: setup.client_id.clone(),
            scopes: setup.scopes.clone(),
            client_auth: setup.client_auth,
            grant: setup.grant,
            authorize_url: setup.authorize_url.clone(),
            expires_ms: None,
            renewals: 0,
            renewed_ms: None,
            unhealthy: None,
            pending: None,
            callback_id,
        });
        let tokens = TokenSet {
            client_secret: setup.client_secret.expose().to_owned(),
            access_token: None,
            refresh_token: setup.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        };
        self.store_new(tenant, name, &mut record, &token_secret(&tokens))
    }

    /// Starts the authorization code flow of an OAuth2 credential: the URL
    /// the user opens, whose redirect URI is the credential's own under
    /// `callback_base`. Its `state` is good for one callback within
    /// [`oauth2::AUTHORIZATION_WINDOW`]; a new authorization replaces it.
    pub fn authorize(
        &self,
        tenant: &str,
        name: &str,
        callback_base: &str,
    ) -> Result<String, VaultError> {
        let state_param = format!(
            "{}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tenant}\0{name}")),
            oauth2::new_state(&self.random).map_err(VaultError::Key)?
        );
        let expires_ms = now_ms().saturating_add(
            u64::try_from(oauth2::AUTHORIZATION_WINDOW.as_millis()).unwrap_or(u64::MAX),
        );
        let mut url = None;
        self.update_oauth2(tenant, name, None, |state, _| {
            let Some(redirect_uri) = state
                .redirect_uri(callback_base)
                .filter(|_| state.authorize_url.is_some())
            else {
                return Err(VaultError::Invalid(format!(
                    "credential {name:?} uses the {} grant, which needs no authorization",
                    state.grant.as_str()
                )));
            };
            let redirect_uri = redirect_uri.as_str();
            state.pending = Some(Pending {
                state_sha256: oauth2::sha256_hex(state_param.as_bytes()),
                redirect_uri: redirect_uri.to_owned(),
                expires_ms,
            });
            url = Some(
                oauth2::authorization_url(state, redirect_uri, &state_param)
                    .map_err(VaultError::Invalid)?,
            );
            Ok(())
        })?;
        Ok(url.expect("set when the update succeeds"))
    }

    /// Finishes an authorization: the callback's `state` and `code`. The
    /// state is used up whether or not the code gets tokens. Returns the
    /// tenant and name of the credential authorized.
    pub async fn complete_authorization(
        &self,
        callback_id: &str,
        state_param: &str,
        code: &str,
    ) -> Result<(String, String), VaultError> {
        let unknown = || {
            VaultError::Invalid(
                "this authorization is unknown, used or expired: start it again".to_owned(),
            )
        };
        let (encoded, random) = state_param.split_once('.').ok_or_else(unknown)?;
        // What `authorize` makes: 32 bytes, base64url without padding.
        if random.len() != 43 || encoded.len() > 1024 {
            return Err(unknown());
        }
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(unknown)?;
        let (tenant, name) = decoded.split_once('\0').ok_or_else(unknown)?;
        if code.is_empty() || code.len() > 4096 || code.chars().any(char::is_control) {
            return Err(VaultError::Invalid(
                "the callback's code is empty, longer than 4096 bytes or holds control characters"
                    .into(),
            ));
        }
        let hash = oauth2::sha256_hex(state_param.as_bytes());
        let mut redirect_uri = String::new();
        self.update_oauth2(tenant, name, None, |state, _| {
            // The code came to another credential's callback: not ours.
            if state.callback_id.as_deref() != Some(callback_id) {
                return Err(unknown());
            }
            let pending = state.pending.take().ok_or_else(unknown)?;
            if pending.state_sha256 != hash || pending.expires_ms < now_ms() {
                // A wrong guess does not spend the real one.
                if pending.expires_ms >= now_ms() {
                    state.pending = Some(pending);
                }
                return Err(unknown());
            }
            redirect_uri = pending.redirect_uri;
            Ok(())
        })
        .map_err(|e| match e {
            VaultError::NotFound { .. } => unknown(),
            other => other,
        })?;
        let record = self.find(tenant, name)?.ok_or_else(unknown)?;
        let tokens = self.tokens(tenant, name, &record)?;
        let state = record.oauth2.clone().ok_or_else(unknown)?;
        let ask = Ask::Code {
            code,
            redirect_uri: &redirect_uri,
        };
        self.grant(tenant, name, &record, &state, &tokens, ask)
            .await?;
        Ok((tenant.to_owned(), name.to_owned()))
    }

    /// The credential to send now: for OAuth2, an access token renewed if
    /// it expires within [`oauth2::RENEW_BEFORE`], or if it is the one
    /// `rejected` names (its SHA-256, hex: a 401 came back for it) and is
    /// still the current one. Concurrent
    /// callers share one renewal. Other kinds are returned as stored.
    pub async fn access(
        &self,
        tenant: &str,
        name: &str,
        rejected: Option<&str>,
    ) -> Result<Option<Credential>, VaultError> {
        let Some(record) = self.find(tenant, name)? else {
            return Ok(None);
        };
        if record.oauth2.is_none() {
            return self.opened(tenant, name, &record).map(Some);
        }
        if let Some(credential) = self.usable(tenant, name, &record, rejected)? {
            return Ok(Some(credential));
        }
        let key = (tenant.to_owned(), name.to_owned());
        let flight = {
            let mut flights = self
                .flights
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            flights.entry(key.clone()).or_default().clone()
        };
        // However this call ends (an error, a cancelled future), the last
        // one out removes the credential's entry.
        let _leave = Leave {
            flights: &self.flights,
            key,
            flight: &flight,
        };
        let _turn = flight.lock().await;
        // Whoever held the turn before may have renewed it.
        let Some(record) = self.find(tenant, name)? else {
            return Ok(None);
        };
        match self.usable(tenant, name, &record, rejected)? {
            Some(credential) => Ok(Some(credential)),
            None => self.renew(tenant, name, &record).await.map(Some),
        }
    }

    /// The stored token, if it may be sent as it is.
    fn usable(
        &self,
        tenant: &str,
        name: &str,
        record: &Record,
        rejected: Option<&str>,
    ) -> Result<Option<Credential>, VaultError> {
        let state = record.oauth2.as_ref().expect("an OAuth2 record");
        if let Some(unhealthy) = state.unhealthy.as_ref().filter(|u| u.permanent) {
            return Err(VaultError::Unusable {
                name: name.to_owned(),
                reason: unhealthy.reason.clone(),
            });
        }
        let renew_before = u64::try_from(oauth2::RENEW_BEFORE.as_millis()).unwrap_or(u64::MAX);
        let fresh = state
            .expires_ms
            .is_none_or(|expires| expires > now_ms().saturating_add(renew_before));
        let tokens = self.tokens(tenant, name, record)?;
        let Some(access) = tokens.access_token.filter(|_| fresh) else {
            return Ok(None);
        };
        if rejected.is_some_and(|r| r == oauth2::sha256_hex(access.as_bytes())) {
            return Ok(None);
        }
        bearer_of(tenant, name, record, access).map(Some)
    }

    /// Gets a new access token with the credential's refresh token, or its
    /// client credentials.
    async fn renew(
        &self,
        tenant: &str,
        name: &str,
        record: &Record,
    ) -> Result<Credential, VaultError> {
        let state = record.oauth2.clone().expect("an OAuth2 record");
        let tokens = self.tokens(tenant, name, record)?;
        let refresh = tokens.refresh_token.clone();
        let ask = match (state.grant, &refresh) {
            (oauth2::Grant::ClientCredentials, _) => Ask::ClientCredentials,
            (_, Some(token)) => Ask::Refresh(token),
            (_, None) => {
                return Err(VaultError::Unusable {
                    name: name.to_owned(),
                    reason: "it has not been authorized yet: open the URL `isoflowctl credentials authorize` prints".to_owned(),
                });
            }
        };
        self.grant(tenant, name, record, &state, &tokens, ask).await
    }

    /// Asks the token endpoint, and stores what it answers: the new tokens,
    /// or that the credential is unhealthy.
    async fn grant(
        &self,
        tenant: &str,
        name: &str,
        record: &Record,
        state: &OAuth2State,
        tokens: &TokenSet,
        ask: Ask<'_>,
    ) -> Result<Credential, VaultError> {
        let Some(client) = self.http.get() else {
            return Err(VaultError::Unusable {
                name: name.to_owned(),
                reason: "this node cannot reach token endpoints".to_owned(),
            });
        };
        let answer =
            oauth2::request_tokens(client, tenant, state, &tokens.client_secret, ask).await;
        let version = record.version;
        self.renewed(answer.is_ok());
        match answer {
            Ok(got) => {
                let now = now_ms();
                self.update_oauth2(tenant, name, Some(version), |state, stored| {
                    stored.access_token = Some(got.access_token.clone());
                    if let Some(refresh) = &got.refresh_token {
                        // A rotating endpoint invalidates the old one.
                        stored.refresh_token = Some(refresh.clone());
                    }
                    state.expires_ms = got.expires_in.map(|d| {
                        now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    });
                    state.renewals = state.renewals.saturating_add(1);
                    state.renewed_ms = Some(now);
                    state.unhealthy = None;
                    Ok(())
                })?;
                tracing::info!(tenant, credential = name, "OAuth2 access token renewed");
                let record = self.existing(tenant, name)?;
                self.bearer(tenant, name, &record)
            }
            Err(error) => {
                let reason = format!("cannot renew its access token: {error}");
                let mut newly = false;
                let permanent = error.permanent;
                self.update_oauth2(tenant, name, Some(version), |state, _| {
                    newly = state.unhealthy.is_none();
                    state.unhealthy = Some(Unhealthy {
                        reason: reason.clone(),
                        since_ms: state.unhealthy.as_ref().map_or_else(now_ms, |u| u.since_ms),
                        permanent,
                    });
                    Ok(())
                })?;
                tracing::warn!(
                    tenant,
                    credential = name,
                    "OAuth2 credential unhealthy: {reason}"
                );
                if newly {
                    let _ = self.unrenewable.send(Unrenewable {
                        tenant: tenant.to_owned(),
                        name: name.to_owned(),
                        reason: reason.clone(),
                    });
                }
                Err(VaultError::Unusable {
                    name: name.to_owned(),
                    reason,
                })
            }
        }
    }

    /// Changes an OAuth2 record and its tokens under the write lock, and
    /// reseals it. With `version`, only if the credential was not set again
    /// since (a renewal that raced a replacement is dropped).
    fn update_oauth2(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
        change: impl FnOnce(&mut OAuth2State, &mut TokenSet) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut record = self.existing(tenant, name)?;
        if version.is_some_and(|v| v != record.version) {
            return Ok(());
        }
        let mut tokens = self.tokens(tenant, name, &record)?;
        let Some(state) = record.oauth2.as_mut() else {
            return Err(VaultError::Invalid(format!(
                "credential {name:?} is a {} credential, not OAuth2",
                record.kind
            )));
        };
        change(state, &mut tokens)?;
        record.updated_ms = now_ms();
        self.seal(tenant, name, &mut record, &token_secret(&tokens))?;
        self.store.put_credential(tenant, name, &to_json(&record))?;
        Ok(())
    }

    /// An OAuth2 record's sealed tokens.
    fn tokens(&self, tenant: &str, name: &str, record: &Record) -> Result<TokenSet, VaultError> {
        let secret = self.unseal(tenant, name, record)?;
        serde_json::from_str(secret.expose()).map_err(|_| VaultError::Corrupt {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            reason: "its sealed tokens are not a token set".to_owned(),
        })
    }

    /// An OAuth2 record's access token as a bearer credential.
    fn bearer(&self, tenant: &str, name: &str, record: &Record) -> Result<Credential, VaultError> {
        let access = self
            .tokens(tenant, name, record)?
            .access_token
            .ok_or_else(|| VaultError::Unusable {
                name: name.to_owned(),
                reason: "it holds no access token yet".to_owned(),
            })?;
        bearer_of(tenant, name, record, access)
    }
}

/// An OAuth2 record's `access` token as a renewable bearer credential.
fn bearer_of(
    tenant: &str,
    name: &str,
    record: &Record,
    access: String,
) -> Result<Credential, VaultError> {
    let mut credential = Credential::of(
        CredentialKind::Bearer {
            token: Secret::new(access),
        },
        origins_of(tenant, name, record)?,
    );
    credential.renewable = true;
    Ok(credential)
}

/// A record's origins, parsed.
fn origins_of(tenant: &str, name: &str, record: &Record) -> Result<Vec<Origin>, VaultError> {
    record
        .origins
        .iter()
        .map(|o| o.parse::<Origin>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| VaultError::Corrupt {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            reason,
        })
}

/// Removes a credential's renewal turn from the map when the last caller
/// that holds it is done.
struct Leave<'a> {
    flights: &'a std::sync::Mutex<HashMap<(String, String), Flight>>,
    key: (String, String),
    flight: &'a Flight,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's and this caller's: nobody else holds or waits for it.
        if Arc::strong_count(self.flight) == 2 {
            flights.remove(&self.key);
        }
    }
}

fn token_secret(tokens: &TokenSet) -> Secret {
    Secret::new(serde_json::to_string(tokens).expect("strings always serialise"))
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
        Box::pin(async move {
            self.access(tenant, name, None)
                .await
                .map_err(|e| CredentialError(e.to_string()))
        })
    }

    fn renewed<'a>(
        &'a self,
        tenant: &'a str,
        _run_id: &'a str,
        name: &'a str,
        rejected: &'a Secret,
    ) -> CredentialFuture<'a> {
        Box::pin(async move {
            let rejected = oauth2::sha256_hex(rejected.expose().as_bytes());
            self.access(tenant, name, Some(&rejected))
                .await
                .map_err(|e| CredentialError(e.to_string()))
        })
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

#[cfg(test)]
mod oauth2_tests {
    use std::time::Duration;

    use isoflow_testkit::oauth2::{CLIENT_ID, CLIENT_SECRET, Provider};

    use super::*;
    use crate::action::egress::EgressPolicy;
    use crate::credential::oauth2::{ClientAuth, Grant};
    use crate::store::StoreConfig;

    fn vault(dir: &tempfile::TempDir) -> (Arc<Store>, Arc<Vault>) {
        vault_with(dir, &EgressPolicy::anywhere())
    }

    fn vault_with(dir: &tempfile::TempDir, egress: &EgressPolicy) -> (Arc<Store>, Arc<Vault>) {
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("a store"));
        let vault = Vault::open(
            store.clone(),
            Keyring::new(Key::new("k1", &[7; KEY_BYTES]).expect("a key")),
        )
        .expect("a vault");
        vault.renew_with(http::Client::new(egress).expect("a client"));
        (store, Arc::new(vault))
    }

    /// A tenant's token URL is reached as any step's request is: under the
    /// node's egress policy, which refuses private and loopback addresses
    /// (loopback here, so nothing can leave the machine).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_url_the_egress_policy_refuses_is_never_asked() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (_store, vault) = vault_with(&dir, &EgressPolicy::public_only());
        let provider = Provider::start(3600);
        vault
            .set_oauth2(
                "acme",
                "crm",
                &setup(&provider, Grant::ClientCredentials),
                &origins(&provider),
                true,
            )
            .expect("stored");
        let error = token(&vault, None).await.expect_err("refused");
        assert!(error.to_string().contains("refused"), "{error}");
        assert!(provider.grants().is_empty(), "nothing reached the endpoint");
    }

    fn setup(provider: &Provider, grant: Grant) -> OAuth2Setup {
        OAuth2Setup {
            token_url: provider.url("/token"),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(CLIENT_SECRET),
            scopes: vec!["orders".into()],
            client_auth: ClientAuth::Basic,
            grant,
            refresh_token: None,
            authorize_url: None,
        }
    }

    fn origins(provider: &Provider) -> Vec<String> {
        vec![provider.url("/api/")]
    }

    async fn token(vault: &Vault, rejected: Option<&str>) -> Result<String, VaultError> {
        let credential = vault
            .access("acme", "crm", rejected)
            .await?
            .expect("the credential exists");
        assert!(credential.renewable);
        Ok(credential.kind.secret().expose().to_owned())
    }

    fn sha(token: &str) -> String {
        oauth2::sha256_hex(token.as_bytes())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_is_renewed_before_it_expires_once_for_all_who_wait_and_after_a_401() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (store, vault) = vault(&dir);
        // Lives 30 s: inside the renewal margin, so the next use renews it.
        let provider = Provider::start(30);
        vault
            .set_oauth2(
                "acme",
                "crm",
                &setup(&provider, Grant::ClientCredentials),
                &origins(&provider),
                true,
            )
            .expect("stored");
        assert_eq!(token(&vault, None).await.expect("a token"), "at-1");
        assert_eq!(provider.grants(), ["client_credentials"]);

        // Ten users of the expiring token at once, the endpoint slow: one
        // renewal, one new token for all.
        provider.set_lifetime(3600);
        provider.set_delay(Duration::from_millis(300));
        let users: Vec<_> = (0..10)
            .map(|_| {
                let vault = vault.clone();
                tokio::spawn(async move { token(&vault, None).await })
            })
            .collect();
        for user in users {
            assert_eq!(user.await.expect("joined").expect("a token"), "at-2");
        }
        assert_eq!(provider.grants().len(), 2, "{:?}", provider.grants());
        assert_eq!(token(&vault, None).await.expect("fresh"), "at-2");
        assert_eq!(provider.grants().len(), 2);

        // A 401 for the current token renews it; a late 401 for the old one
        // does not renew again.
        provider.set_delay(Duration::ZERO);
        assert_eq!(
            token(&vault, Some(&sha("at-2"))).await.expect("renewed"),
            "at-3"
        );
        assert_eq!(
            token(&vault, Some(&sha("at-2"))).await.expect("current"),
            "at-3"
        );
        assert_eq!(provider.grants().len(), 3);

        // Nothing of it is on disk in the clear.
        let raw = store
            .credential("acme", "crm")
            .expect("read")
            .expect("stored");
        let raw = String::from_utf8_lossy(&raw);
        assert!(
            !raw.contains("at-3") && !raw.contains(CLIENT_SECRET),
            "{raw}"
        );
        let listed = vault.list("acme").expect("listed");
        let state = listed[0].oauth2.as_ref().expect("OAuth2 state");
        assert_eq!((listed[0].kind.as_str(), state.renewals), ("oauth2", 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotated_refresh_tokens_are_kept_and_a_revoked_one_makes_the_credential_unhealthy() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (_store, vault) = vault(&dir);
        let provider = Provider::start(3600);
        provider.add_refresh_token("rt-0");
        let mut refreshing = setup(&provider, Grant::RefreshToken);
        refreshing.refresh_token = Some(Secret::new("rt-0"));
        refreshing.client_auth = ClientAuth::Post;
        vault
            .set_oauth2("acme", "crm", &refreshing, &origins(&provider), true)
            .expect("stored");
        let mut unhealthy = vault.unrenewable();
        assert_eq!(token(&vault, None).await.expect("a token"), "at-1");
        // rt-0 is spent; the renewal after a 401 uses the rotated rt-1.
        assert_eq!(
            token(&vault, Some(&sha("at-1"))).await.expect("renewed"),
            "at-2"
        );
        assert_eq!(provider.grants(), ["refresh_token", "refresh_token"]);

        provider.revoke_refresh_tokens();
        let error = token(&vault, Some(&sha("at-2")))
            .await
            .expect_err("revoked");
        assert!(
            error.to_string().contains("invalid_grant"),
            "the sentence says what the endpoint said: {error}"
        );
        let event = unhealthy.try_recv().expect("one unhealthy event");
        assert_eq!(
            (event.tenant.as_str(), event.name.as_str()),
            ("acme", "crm")
        );
        let state = vault.list("acme").expect("listed")[0]
            .oauth2
            .clone()
            .expect("OAuth2 state");
        assert!(state.unhealthy.as_ref().is_some_and(|u| u.permanent));
        // Until someone acts, the endpoint is not asked again.
        token(&vault, None).await.expect_err("still unusable");
        assert_eq!(provider.grants().len(), 3);
        assert!(unhealthy.try_recv().is_err(), "one event per transition");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_authorization_code_flow_takes_one_callback_with_its_state() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (_store, vault) = vault(&dir);
        let provider = Provider::start(3600);
        let mut code_flow = setup(&provider, Grant::AuthorizationCode);
        code_flow.authorize_url = Some(provider.url("/authorize"));
        vault
            .set_oauth2("acme", "crm", &code_flow, &origins(&provider), true)
            .expect("stored");
        let before = token(&vault, None).await.expect_err("not authorized yet");
        assert!(
            before.to_string().contains("not been authorized"),
            "{before}"
        );

        let base = "https://isoflow.example.com/oauth/callback";
        let url = vault.authorize("acme", "crm", base).expect("a URL");
        let url = reqwest::Url::parse(&url).expect("a URL");
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .expect("the parameter")
        };
        let (state, redirect) = (param("state"), param("redirect_uri"));
        // The credential's own callback, under the base.
        let callback_id = redirect
            .strip_prefix(&format!("{base}/"))
            .expect("under the base")
            .to_owned();
        assert_eq!(callback_id.len(), 22, "16 random bytes: {redirect}");
        let code = provider.issue_code(&redirect);

        // A forged state (right credential, wrong secret part), or the
        // right one at another credential's callback, is refused and does
        // not spend the real one.
        let (prefix, _) = state.split_once('.').expect("prefix.random");
        let forged = format!("{prefix}.{}", "A".repeat(43));
        vault
            .complete_authorization(&callback_id, &forged, &code)
            .await
            .expect_err("forged");
        vault
            .complete_authorization("another-credentials-id", &state, &code)
            .await
            .expect_err("another callback");
        let (tenant, name) = vault
            .complete_authorization(&callback_id, &state, &code)
            .await
            .expect("authorized");
        assert_eq!((tenant.as_str(), name.as_str()), ("acme", "crm"));
        assert_eq!(token(&vault, None).await.expect("a token"), "at-2");
        // Used once.
        let replay = vault
            .complete_authorization(&callback_id, &state, &code)
            .await
            .expect_err("replayed");
        assert!(
            replay.to_string().contains("unknown, used or expired"),
            "{replay}"
        );
        // The refresh token it got renews the next one.
        assert_eq!(
            token(&vault, Some(&sha("at-2"))).await.expect("renewed"),
            "at-3"
        );
        assert_eq!(provider.grants(), ["authorization_code", "refresh_token"]);
    }
}
