//! Tenants created through the admin API (`isoflow.v1.Admin`), their
//! issued API tokens and their quotas, over the store's `tenants` and
//! `tokens` column families.
//!
//! The coordinator reads these on every call (is the token one we issued?
//! is its tenant disabled? what is its payload limit?), so they are cached
//! in memory: this node is the only writer of its store, and every change
//! goes through here, store first, then the cache. Tokens are kept and
//! looked up by their SHA-256 hash only; the token itself is in the
//! `IssueToken` answer and nowhere else. Tenants named only by the
//! configuration's `auth.tokens` have no record: they are enabled and take
//! the node's defaults until an admin creates them.
//!
//! Where to look next: `admin.rs` (the service over this), `auth.rs` (the
//! checks on each call), `hooks.rs` (webhook quotas), `retention.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use isoflow_engine::store::{Store, StoreError, TenantQuotas, TenantRecord, TokenRecord, now_ms};
use ring::rand::SecureRandom;

/// What a token starts with, so that one found in a log or a repository is
/// recognisable.
pub const TOKEN_PREFIX: &str = "ifl_";

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make a random token: the system's random source failed")]
    Random,
}

#[derive(Debug, Default)]
struct Cache {
    records: HashMap<String, TenantRecord>,
    /// SHA-256 of a token → its tenant.
    tokens: HashMap<Vec<u8>, String>,
}

/// The tenants of this node's store. See the module docs.
pub struct Tenants {
    store: Arc<Store>,
    /// The node's `max_payload_bytes`: no tenant gets more.
    max_payload_bytes: u64,
    cache: RwLock<Cache>,
    /// Held by each change, so that a check and its write are one step.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants").finish_non_exhaustive()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SHA-256 of a token: what the store keeps.
pub fn hash(token: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tenant name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_name(name: &str) -> Result<(), TenantError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(TenantError::Invalid(format!(
            "tenant name {name:?} is not valid: use 1 to 63 lowercase letters, digits and \
             dashes, starting with a letter or digit"
        )))
    }
}

impl Tenants {
    /// Reads every tenant and token from `store`.
    pub fn load(store: Arc<Store>, max_payload_bytes: u64) -> Result<Arc<Tenants>, StoreError> {
        let mut cache = Cache::default();
        for record in store.tenants()? {
            cache.records.insert(record.name.clone(), record);
        }
        for (hash, record) in store.tokens()? {
            cache.tokens.insert(hash, record.tenant);
        }
        Ok(Arc::new(Tenants {
            store,
            max_payload_bytes,
            cache: RwLock::new(cache),
            writing: Mutex::new(()),
        }))
    }

    /// The tenant an issued token names, looked up by its hash.
    pub fn tenant_of_token(&self, token: &[u8]) -> Option<String> {
        read(&self.cache).tokens.get(&hash(token)).cloned()
    }

    pub fn is_disabled(&self, tenant: &str) -> bool {
        read(&self.cache)
            .records
            .get(tenant)
            .is_some_and(|r| r.disabled)
    }

    pub fn record(&self, tenant: &str) -> Option<TenantRecord> {
        read(&self.cache).records.get(tenant).cloned()
    }

    pub fn records(&self) -> Vec<TenantRecord> {
        let mut records: Vec<_> = read(&self.cache).records.values().cloned().collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }

    fn quotas(&self, tenant: &str) -> TenantQuotas {
        self.record(tenant).map(|r| r.quotas).unwrap_or_default()
    }

    /// The largest input a run of `tenant` may take: its quota, never more
    /// than the node's limit.
    pub fn payload_limit(&self, tenant: &str) -> u64 {
        self.quotas(tenant)
            .max_payload_bytes
            .map_or(self.max_payload_bytes, |q| q.min(self.max_payload_bytes))
    }

    /// Runs webhooks may start per minute; `None`: no limit.
    pub fn webhook_runs_per_minute(&self, tenant: &str) -> Option<u32> {
        self.quotas(tenant)
            .webhook_runs_per_minute
            .filter(|n| *n > 0)
    }

    /// How long the tenant's finished runs are kept: its quota, else
    /// `default`; `None`: forever.
    pub fn retention(&self, tenant: &str, default: Option<Duration>) -> Option<Duration> {
        match self.quotas(tenant).retention_seconds {
            Some(0) => None,
            Some(seconds) => Some(Duration::from_secs(seconds)),
            None => default.filter(|d| !d.is_zero()),
        }
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates a tenant; ALREADY_EXISTS if one of that name was created.
    pub fn create(&self, name: &str, quotas: TenantQuotas) -> Result<TenantRecord, TenantError> {
        check_name(name)?;
        let _one = self.lock_writes();
        if self.store.tenant(name)?.is_some() {
            return Err(TenantError::AlreadyExists(format!(
                "tenant {name:?} already exists"
            )));
        }
        let record = TenantRecord {
            name: name.to_owned(),
            disabled: false,
            created_at_ms: now_ms(),
            quotas,
        };
        self.store.put_tenant(&record)?;
        write(&self.cache)
            .records
            .insert(name.to_owned(), record.clone());
        Ok(record)
    }

    /// Changes a created tenant's record with `change`.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut TenantRecord),
    ) -> Result<TenantRecord, TenantError> {
        check_name(name)?;
        let _one = self.lock_writes();
        let Some(mut record) = self.store.tenant(name)? else {
            return Err(not_created(name));
        };
        change(&mut record);
        self.store.put_tenant(&record)?;
        write(&self.cache)
            .records
            .insert(name.to_owned(), record.clone());
        Ok(record)
    }

    /// A new random token for a created tenant: the token (shown once) and
    /// its record. Only its hash is stored.
    pub fn issue_token(
        &self,
        tenant: &str,
        label: &str,
    ) -> Result<(String, TokenRecord), TenantError> {
        check_name(tenant)?;
        if label.len() > 200 || label.chars().any(char::is_control) {
            return Err(TenantError::Invalid(
                "a token's label is at most 200 characters, none of them control characters"
                    .to_owned(),
            ));
        }
        let _one = self.lock_writes();
        if self.store.tenant(tenant)?.is_none() {
            return Err(not_created(tenant));
        }
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TenantError::Random)?;
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        let hash = hash(token.as_bytes());
        let record = TokenRecord {
            token_id: hex(&hash[..8]),
            tenant: tenant.to_owned(),
            label: label.to_owned(),
            created_at_ms: now_ms(),
        };
        self.store.put_token(&hash, &record)?;
        write(&self.cache).tokens.insert(hash, tenant.to_owned());
        Ok((token, record))
    }

    /// Issued tokens, of one tenant or all, oldest first.
    pub fn tokens(&self, tenant: Option<&str>) -> Result<Vec<TokenRecord>, TenantError> {
        let mut records: Vec<TokenRecord> = self
            .store
            .tokens()?
            .into_iter()
            .map(|(_, record)| record)
            .filter(|record| tenant.is_none_or(|t| record.tenant == t))
            .collect();
        records.sort_by(|a, b| (a.created_at_ms, &a.token_id).cmp(&(b.created_at_ms, &b.token_id)));
        Ok(records)
    }

    /// Revokes a token: from the next call on, it is refused.
    pub fn revoke_token(&self, token_id: &str) -> Result<TokenRecord, TenantError> {
        let _one = self.lock_writes();
        let Some((hash, record)) = self.store.delete_token(token_id)? else {
            return Err(TenantError::NotFound(format!(
                "there is no token with id {token_id:?}"
            )));
        };
        write(&self.cache).tokens.remove(&hash);
        Ok(record)
    }
}

fn not_created(name: &str) -> TenantError {
    TenantError::NotFound(format!(
        "tenant {name:?} does not exist: create it first (isoflowctl admin tenants create {name})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use isoflow_engine::store::StoreConfig;

    #[test]
    fn issued_tokens_name_their_tenant_until_revoked_and_quotas_fall_back_to_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("store"));
        let tenants = Tenants::load(store.clone(), 1000).expect("load");
        assert!(matches!(
            tenants.issue_token("acme", ""),
            Err(TenantError::NotFound(_))
        ));
        tenants
            .create(
                "acme",
                TenantQuotas {
                    max_payload_bytes: Some(5000),
                    retention_seconds: Some(0),
                    ..TenantQuotas::default()
                },
            )
            .expect("created");
        assert!(matches!(
            tenants.create("acme", TenantQuotas::default()),
            Err(TenantError::AlreadyExists(_))
        ));
        for bad in ["", "Acme", "-a", "a_b", &"a".repeat(64)] {
            assert!(
                matches!(check_name(bad), Err(TenantError::Invalid(_))),
                "{bad:?}"
            );
        }
        let (token, record) = tenants.issue_token("acme", "ci").expect("issued");
        assert!(
            token.starts_with(TOKEN_PREFIX) && token.len() == 4 + 64,
            "{token}"
        );
        assert_eq!(
            tenants.tenant_of_token(token.as_bytes()).as_deref(),
            Some("acme")
        );
        assert_eq!(tenants.tenant_of_token(b"ifl_wrong"), None);
        // The store holds the hash, never the token.
        let stored = store.tokens().expect("tokens");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, hash(token.as_bytes()));
        assert!(!format!("{stored:?}").contains(&token[4..]));
        // A reloaded registry knows it too.
        let again = Tenants::load(store.clone(), 1000).expect("load");
        assert_eq!(
            again.tenant_of_token(token.as_bytes()).as_deref(),
            Some("acme")
        );

        assert_eq!(tenants.payload_limit("acme"), 1000, "never over the node's");
        assert_eq!(tenants.payload_limit("other"), 1000);
        let week = Some(Duration::from_secs(7 * 86_400));
        assert_eq!(tenants.retention("acme", week), None, "0: forever");
        assert_eq!(tenants.retention("other", week), week);
        assert_eq!(tenants.retention("other", None), None);

        tenants
            .update("acme", |r| r.disabled = true)
            .expect("disabled");
        assert!(tenants.is_disabled("acme") && !tenants.is_disabled("other"));
        assert!(matches!(
            tenants.update("nobody", |r| r.disabled = true),
            Err(TenantError::NotFound(_))
        ));

        assert_eq!(
            tenants.revoke_token(&record.token_id).expect("revoked"),
            record
        );
        assert_eq!(tenants.tenant_of_token(token.as_bytes()), None);
        assert!(matches!(
            tenants.revoke_token(&record.token_id),
            Err(TenantError::NotFound(_))
        ));
    }
}
