//! Durable run state: runs, step checkpoints, payloads and logs in
//! RocksDB, one column family each, with large payloads in files beside it.
//!
//! # Layout
//!
//! A store is a folder: `db/` is the RocksDB database, `payloads/` holds
//! payloads of [`FILE_PAYLOAD_BYTES`] and more, one file each. Every key
//! starts with the tenant id, so one tenant's data is one key range and no
//! listing can cross into another's:
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `runs` | tenant · run id | [`RunRecord`] (JSON) |
//! | `active` | tenant · run id | empty: present while the run is unfinished |
//! | `steps` | tenant · run id · step key | [`StepRecord`] (JSON) |
//! | `blobs` | tenant · run id · step key, `#input`, `#output` or `#definition` | a payload: its JSON, or the name of its file |
//! | `logs` | tenant · run id · step key · attempt · sequence | [`LogRecord`] (JSON) |
//! | `integrations` | tenant · name · version (big-endian `u32`) | [`IntegrationRecord`] (JSON) |
//! | `requests` | tenant · scope · key | the run id a request key started (a webhook's `Idempotency-Key`) |
//! | `credentials` | tenant · name | a sealed credential ([`crate::credential::vault`]: JSON, its secret encrypted) |
//! | `tenants` | tenant | [`TenantRecord`] (JSON): created through the admin API, with its quotas |
//! | `tokens` | SHA-256 of an API token (32 bytes) | [`TokenRecord`] (JSON): the tenant it names; the token itself is never stored |
//!
//! `·` is a 0 byte, which tenant ids, run ids and step keys cannot contain;
//! attempt and sequence are big-endian `u32`s. Run ids are UUIDv7,
//! time-ordered, so a tenant's runs list in creation order without an index.
//!
//! # Durability
//!
//! Each write method is one `WriteBatch`: a step's record, its output and
//! its logs land together or not at all. With [`StoreConfig::sync`] (the
//! default) every batch is fsynced through the write-ahead log before the
//! method returns, so a checkpoint that was acknowledged survives `kill -9`
//! and power loss; without it, it survives a process crash but not a machine
//! crash. A payload file is written and fsynced (with its folder) before the
//! batch that names it, so a committed checkpoint never points at a missing
//! or partial file. Payloads from 64 KiB to the file threshold go to
//! RocksDB's blob files (BlobDB), so they are not rewritten by compaction.
//!
//! # Retention
//!
//! [`Store::expired_runs`] finds finished runs that ended before a cutoff
//! (per tenant); [`Store::delete_runs`] deletes each with its record,
//! steps, payloads, logs and request keys in one write (`delete_range` over
//! the run's contiguous keys), then its payload files; [`Store::compact`]
//! flushes and compacts every column family so that the space (blob files
//! included) comes back. An unfinished run is never deleted.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Payloads this large or larger are written to their own file.
pub const FILE_PAYLOAD_BYTES: usize = 1024 * 1024;

const RUNS: &str = "runs";
const ACTIVE: &str = "active";
const STEPS: &str = "steps";
const BLOBS: &str = "blobs";
const LOGS: &str = "logs";
const INTEGRATIONS: &str = "integrations";
const CREDENTIALS: &str = "credentials";
const REQUESTS: &str = "requests";
const TENANTS: &str = "tenants";
const TOKENS: &str = "tokens";
const FAMILIES: [&str; 10] = [
    RUNS,
    ACTIVE,
    STEPS,
    BLOBS,
    LOGS,
    INTEGRATIONS,
    CREDENTIALS,
    REQUESTS,
    TENANTS,
    TOKENS,
];

/// Where and how durably to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Fsync the write-ahead log on every write (see the module docs).
    #[serde(default = "yes")]
    pub sync: bool,
}

fn yes() -> bool {
    true
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            sync: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("store {operation} failed: {source}")]
    Db {
        operation: &'static str,
        source: rocksdb::Error,
    },
    #[error("cannot write or read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidKey {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    /// The status as stored and shown: `pending`, `running`, `succeeded`,
    /// `failed`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A run's summary, updated as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub tenant: String,
    pub run_id: String,
    pub integration: String,
    pub version: u32,
    pub status: RunStatus,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Why the run failed: the failing step's error, one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What started the run; `None` for runs stored before runs recorded
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RunTrigger>,
    /// The failed run this one runs again ([`Store::create_rerun`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// A rerun's first step run again: the step the old run failed in. The
    /// steps before it were copied from the old run as checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<String>,
    /// A rerun with another version of the integration (a fixed step): the
    /// version the failed run ran. The steps before `from_step` are that
    /// version's; `version` runs from `from_step` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<u32>,
    /// The W3C `traceparent` of the run's own span, chosen when the run
    /// was created: every node that executes the run, resumed ones too,
    /// puts its spans under it, so a run is one trace. `None`: not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The span id (hex) of the span the run was started in (a webhook's,
    /// an API call's), the parent of the run's span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_caller: Option<String>,
}

impl RunRecord {
    /// A new pending run with a fresh time-ordered id, no trigger recorded.
    pub fn new(tenant: &str, integration: &str, version: u32) -> Self {
        let now = now_ms();
        RunRecord {
            tenant: tenant.to_owned(),
            run_id: uuid::Uuid::now_v7().to_string(),
            integration: integration.to_owned(),
            version,
            status: RunStatus::Pending,
            created_at_ms: now,
            updated_at_ms: now,
            error: None,
            trigger: None,
            rerun_of: None,
            from_step: None,
            from_version: None,
            traceparent: None,
            trace_caller: None,
        }
    }

    /// The run, recorded as started by `trigger`.
    pub fn started_by(mut self, trigger: RunTrigger) -> Self {
        self.trigger = Some(trigger);
        self
    }
}

/// What started a run, stored and shown as text: `api`, `webhook:<id>`,
/// `cron:<id>`, `rerun`, or `cli` (the local `isoflow run`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RunTrigger {
    /// The API's StartRun.
    Api,
    /// A webhook trigger of the integration, by its id.
    Webhook(String),
    /// A cron trigger of the integration, by its id.
    Cron(String),
    /// The API's RerunRun: a failed run run again.
    Rerun,
    /// `isoflow run` on the command line, with no server.
    Cli,
}

impl std::fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunTrigger::Api => f.write_str("api"),
            RunTrigger::Webhook(id) => write!(f, "webhook:{id}"),
            RunTrigger::Cron(id) => write!(f, "cron:{id}"),
            RunTrigger::Rerun => f.write_str("rerun"),
            RunTrigger::Cli => f.write_str("cli"),
        }
    }
}

impl std::str::FromStr for RunTrigger {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "api" => Ok(RunTrigger::Api),
            None if text == "rerun" => Ok(RunTrigger::Rerun),
            None if text == "cli" => Ok(RunTrigger::Cli),
            Some(("webhook", id)) if !id.is_empty() => Ok(RunTrigger::Webhook(id.to_owned())),
            Some(("cron", id)) if !id.is_empty() => Ok(RunTrigger::Cron(id.to_owned())),
            _ => Err(format!(
                "unknown run trigger {text:?} (api, webhook:<id>, cron:<id>, rerun or cli)"
            )),
        }
    }
}

impl From<RunTrigger> for String {
    fn from(trigger: RunTrigger) -> String {
        trigger.to_string()
    }
}

impl TryFrom<String> for RunTrigger {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// How a step attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
}

/// A step's checkpoint: written once the step finished (all attempts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's id, or `loop/index/step` for a step inside a loop item.
    pub step_key: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// Size of the output blob (stored under the step key), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node that ran it (a worker's id, or the `all` node's), as its
    /// coordinator recorded it; `None` in records stored before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One captured log line of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step_key: String,
    /// The attempt of the step that wrote it, from 1.
    #[serde(default)]
    pub attempt: u32,
    pub level: String,
    pub message: String,
    pub time_ms: u64,
}

/// A deployed version of an integration: what runs of it run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationRecord {
    pub name: String,
    pub version: u32,
    pub deployed_at_ms: u64,
    /// The definition with its code inlined, as JSON.
    pub definition: Value,
}

/// A tenant's own limits; each one unset takes the node's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuotas {
    /// Runs on workers at once; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_in_flight: Option<u32>,
    /// The largest run input, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
    /// Runs webhooks may start per minute; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_runs_per_minute: Option<u32>,
    /// How long finished runs are kept, in seconds; 0: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_seconds: Option<u64>,
}

/// A tenant created through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    #[serde(default)]
    pub disabled: bool,
    pub created_at_ms: u64,
    #[serde(default)]
    pub quotas: TenantQuotas,
}

/// An issued API token, stored under its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The first 8 bytes of the hash, in hex: names the token in lists.
    pub token_id: String,
    pub tenant: String,
    #[serde(default)]
    pub label: String,
    pub created_at_ms: u64,
}

/// Which runs [`Store::runs_page`] lists; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub integration: Option<String>,
    pub version: Option<u32>,
    pub status: Option<RunStatus>,
    /// Created at or after (ms since 1970).
    pub created_from_ms: Option<u64>,
    /// Created before (ms since 1970).
    pub created_to_ms: Option<u64>,
    /// Started this way: a kind (`webhook`) or one trigger
    /// (`webhook:orders`), as [`RunTrigger`] displays.
    pub trigger: Option<String>,
}

impl RunFilter {
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.integration
            .as_ref()
            .is_none_or(|name| *name == run.integration)
            && self.version.is_none_or(|v| v == run.version)
            && self.status.is_none_or(|s| s == run.status)
            && self.created_from_ms.is_none_or(|t| run.created_at_ms >= t)
            && self.created_to_ms.is_none_or(|t| run.created_at_ms < t)
            && self.trigger.as_deref().is_none_or(|wanted| {
                run.trigger.as_ref().is_some_and(|trigger| {
                    let shown = trigger.to_string();
                    shown == wanted
                        || shown
                            .split_once(':')
                            .is_some_and(|(kind, _)| kind == wanted)
                })
            })
    }
}

/// One page of [`Store::runs_page`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunsPage {
    pub runs: Vec<RunRecord>,
    /// Where the next page starts (a run id, passed back as `before`);
    /// `None` when nothing older can match.
    pub next: Option<String>,
}

/// How far apart a run's id time and its `created_at_ms` may be: they are
/// read from the clock one after the other.
const ID_CLOCK_SLACK_MS: u64 = 1_000;

/// The creation time (ms) a UUIDv7 run id carries in its first 48 bits.
fn id_time_ms(run_id: &str) -> Option<u64> {
    let hex: String = run_id.get(..13)?.chars().filter(|c| *c != '-').collect();
    if hex.len() != 12 {
        return None;
    }
    u64::from_str_radix(&hex, 16).ok()
}

/// The prefix every run id created at `ms` or later is greater than or
/// equal to (UUIDv7 ids in lowercase hex order by time).
fn id_prefix_at(ms: u64) -> String {
    let ms = ms.min((1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// What [`Store::put_integration`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deployed {
    /// The version is new and now stored.
    Created(IntegrationRecord),
    /// The same definition was deployed before under this version.
    Unchanged(IntegrationRecord),
    /// Another definition holds this version; nothing was stored.
    Conflict(IntegrationRecord),
}

/// The run store. Cheap to share behind an `Arc`; RocksDB is thread-safe.
pub struct Store {
    db: DB,
    sync: bool,
    payloads: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .field("sync", &self.sync)
            .finish()
    }
}

/// Milliseconds since the Unix epoch.
/// A payload as the store holds it.
enum Stored {
    /// The stored value: the [`INLINE`] tag, then the JSON.
    Inline(Vec<u8>),
    InFile(PathBuf),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in the folder `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: config.path.clone(),
            source,
        };
        let payloads = config.path.join("payloads");
        std::fs::create_dir_all(&payloads).map_err(|e| StoreError::Io {
            path: payloads.clone(),
            source: e,
        })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            // Step outputs are JSON, which LZ4 shrinks at little CPU (a
            // seed run's 90 KB of payloads take 27 KB once compacted,
            // docs/benchmarks.md); the WAL stays as written (RocksDB
            // compresses it only with zstd).
            cf.set_compression_type(DBCompressionType::Lz4);
            if *name == BLOBS {
                cf.set_enable_blob_files(true);
                cf.set_min_blob_size(64 * 1024);
                cf.set_blob_compression_type(DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&options, config.path.join("db"), families)
            .map_err(open_error)?;
        Ok(Store {
            db,
            sync: config.sync,
            payloads,
        })
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        self.payloads.parent().unwrap_or(&self.payloads)
    }

    /// Stores a new run with the definition it runs and its input, and marks
    /// it unfinished.
    pub fn create_run(
        &self,
        run: &RunRecord,
        definition: &Value,
        input: &Value,
    ) -> Result<(), StoreError> {
        let key = run_key(&run.tenant, &run.run_id)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(RUNS), &key, to_json(run));
        batch.put_cf(self.cf(ACTIVE), &key, []);
        self.put_payload(&mut batch, run, DEFINITION_BLOB, definition)?;
        self.put_payload(&mut batch, run, INPUT_BLOB, input)?;
        self.write(batch, "create_run")
    }

    /// [`Store::create_run`], remembering that request `key` in `scope`
    /// started it, in the same write. Callers check [`Store::requested_run`]
    /// first, under one lock, so that a key starts one run.
    pub fn create_requested_run(
        &self,
        run: &RunRecord,
        definition: &Value,
        input: &Value,
        scope: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let run_key = run_key(&run.tenant, &run.run_id)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(RUNS), &run_key, to_json(run));
        batch.put_cf(self.cf(ACTIVE), &run_key, []);
        self.put_payload(&mut batch, run, DEFINITION_BLOB, definition)?;
        self.put_payload(&mut batch, run, INPUT_BLOB, input)?;
        batch.put_cf(
            self.cf(REQUESTS),
            request_key(&run.tenant, scope, key)?,
            run.run_id.as_bytes(),
        );
        self.write(batch, "create_run")
    }

    /// Stores `run`, a new run that runs run `old` of the same tenant
    /// again: with `old`'s definition and input, and a copy of `old`'s
    /// checkpoints `steps` (their records and outputs, not their logs),
    /// marked unfinished, in one durable write. The copied checkpoints are
    /// what a resumed run finds ([`crate::run::Journal::restored`]), so
    /// those steps are not run again.
    ///
    /// `definition`: the definition the new run runs instead of `old`'s
    /// (another version of the integration).
    pub fn create_rerun(
        &self,
        run: &RunRecord,
        old: &str,
        steps: &[StepRecord],
        definition: Option<&Value>,
    ) -> Result<(), StoreError> {
        let key = run_key(&run.tenant, &run.run_id)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(RUNS), &key, to_json(run));
        batch.put_cf(self.cf(ACTIVE), &key, []);
        match definition {
            Some(definition) => {
                self.put_payload(&mut batch, run, DEFINITION_BLOB, definition)?;
            }
            None => self.copy_payload(&mut batch, old, run, DEFINITION_BLOB)?,
        }
        self.copy_payload(&mut batch, old, run, INPUT_BLOB)?;
        for record in steps {
            if record.output_bytes.is_some() {
                self.copy_payload(&mut batch, old, run, &record.step_key)?;
            }
            batch.put_cf(
                self.cf(STEPS),
                child_key(&key, &record.step_key)?,
                to_json(record),
            );
        }
        self.write(batch, "create_rerun")
    }

    /// Adds to `batch` a copy of payload `name` of run `from` (of `to`'s
    /// tenant) as `to`'s: the stored bytes as they are, or a copy of the
    /// file that holds them, durable before this returns. No payload:
    /// nothing copied.
    fn copy_payload(
        &self,
        batch: &mut WriteBatch,
        from: &str,
        to: &RunRecord,
        name: &str,
    ) -> Result<(), StoreError> {
        let key = child_key(&run_key(&to.tenant, &to.run_id)?, name)?;
        match self.stored_payload(&to.tenant, from, name)? {
            None => {}
            Some(Stored::Inline(stored)) => batch.put_cf(self.cf(BLOBS), key, stored),
            Some(Stored::InFile(source)) => {
                let relative = payload_file_name(&to.tenant, &to.run_id, name);
                let target = self.payloads.join(&relative);
                let io = |path: &Path| {
                    let path = path.to_owned();
                    move |source| StoreError::Io { path, source }
                };
                let dir = target.parent().unwrap_or(&self.payloads);
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                // A copy, not a link: a file is the one run's, to replace
                // or delete without touching the other's.
                std::fs::copy(&source, &target).map_err(io(&source))?;
                File::open(&target)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&target))?;
                sync_dir(dir)?;
                let mut reference = vec![IN_FILE];
                reference.extend_from_slice(relative.as_bytes());
                batch.put_cf(self.cf(BLOBS), key, reference);
            }
        }
        Ok(())
    }

    /// The run request `key` in `scope` started, if one did.
    pub fn requested_run(
        &self,
        tenant: &str,
        scope: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(REQUESTS, &request_key(tenant, scope, key)?)?
            .map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    /// The greatest request key in `scope` and the run it started (empty:
    /// none, the key was only marked).
    pub fn last_request(
        &self,
        tenant: &str,
        scope: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let prefix = prefix(&[tenant, scope])?;
        let mut end = prefix.clone();
        *end.last_mut().expect("prefix ends with a separator") = 1;
        let mut iter = self.db.iterator_cf(
            self.cf(REQUESTS),
            IteratorMode::From(&end, Direction::Reverse),
        );
        match iter.next() {
            Some(Ok((key, value))) if key.starts_with(&prefix) => Ok(Some((
                String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ))),
            Some(Err(source)) => Err(StoreError::Db {
                operation: "read requests",
                source,
            }),
            _ => Ok(None),
        }
    }

    /// Records request `key` in `scope` as seen, starting no run (a cron
    /// tick skipped, or the point a schedule counts from).
    pub fn mark_request(&self, tenant: &str, scope: &str, key: &str) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(REQUESTS), request_key(tenant, scope, key)?, []);
        self.write(batch, "mark_request")
    }

    /// Pauses (or resumes) what `scope` names for `tenant` (a cron
    /// trigger's requests); kept beside the requests themselves.
    pub fn set_paused(&self, tenant: &str, scope: &str, paused: bool) -> Result<(), StoreError> {
        let key = request_key(tenant, PAUSED_SCOPE, scope)?;
        let mut batch = WriteBatch::default();
        if paused {
            batch.put_cf(self.cf(REQUESTS), key, []);
        } else {
            batch.delete_cf(self.cf(REQUESTS), key);
        }
        self.write(batch, "set_paused")
    }

    /// Whether [`Store::set_paused`] paused `scope`.
    pub fn paused(&self, tenant: &str, scope: &str) -> Result<bool, StoreError> {
        Ok(self
            .get(REQUESTS, &request_key(tenant, PAUSED_SCOPE, scope)?)?
            .is_some())
    }

    /// The latest version of every tenant's integrations, as (tenant,
    /// name, version), read from the keys alone: what the cron triggers
    /// look at several times a second, without parsing a definition.
    pub fn latest_versions(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        let mut latest: Vec<(String, String, u32)> = Vec::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(INTEGRATIONS));
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            // tenant \0 name \0 version (4 bytes, big-endian)
            let mut parts = key.splitn(3, |b| *b == 0);
            if let (Some(tenant), Some(name), Some(version)) =
                (parts.next(), parts.next(), parts.next())
                && let Ok(version) = <[u8; 4]>::try_from(version)
            {
                let (tenant, name) = (
                    String::from_utf8_lossy(tenant).into_owned(),
                    String::from_utf8_lossy(name).into_owned(),
                );
                let version = u32::from_be_bytes(version);
                match latest.last_mut() {
                    Some((t, n, v)) if *t == tenant && *n == name => *v = version,
                    _ => latest.push((tenant, name, version)),
                }
            }
            iter.next();
        }
        iter.status().map_err(|source| StoreError::Db {
            operation: "list integrations",
            source,
        })?;
        Ok(latest)
    }

    /// Checkpoints finished steps (usually one; a loop element's last step
    /// and the element itself go together): their records, their outputs,
    /// the logs of their last attempts and the run's updated summary, in one
    /// durable write. Each record's `output_bytes` is set here.
    pub fn checkpoint(
        &self,
        run: &RunRecord,
        steps: Vec<(StepRecord, Option<&Value>)>,
        logs: &[LogRecord],
    ) -> Result<(), StoreError> {
        self.write_run(run, steps, logs, None, "checkpoint")
    }

    /// [`Store::checkpoint`] and [`Store::update_run`] in one durable write:
    /// a run's last checkpoints together with its end.
    pub fn finish_run(
        &self,
        run: &RunRecord,
        steps: Vec<(StepRecord, Option<&Value>)>,
        logs: &[LogRecord],
        output: Option<&Value>,
    ) -> Result<(), StoreError> {
        self.write_run(run, steps, logs, output, "finish_run")
    }

    fn write_run(
        &self,
        run: &RunRecord,
        steps: Vec<(StepRecord, Option<&Value>)>,
        logs: &[LogRecord],
        output: Option<&Value>,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        let key = run_key(&run.tenant, &run.run_id)?;
        let mut batch = WriteBatch::default();
        for (mut record, output) in steps {
            if let Some(output) = output {
                record.output_bytes =
                    Some(self.put_payload(&mut batch, run, &record.step_key, output)?);
            }
            let step_key = child_key(&key, &record.step_key)?;
            batch.put_cf(self.cf(STEPS), &step_key, to_json(&record));
        }
        self.put_logs(&mut batch, &key, logs)?;
        batch.put_cf(self.cf(RUNS), &key, to_json(run));
        if run.status.is_finished() {
            batch.delete_cf(self.cf(ACTIVE), &key);
        }
        if let Some(output) = output {
            self.put_payload(&mut batch, run, OUTPUT_BLOB, output)?;
        }
        self.write(batch, operation)
    }

    /// Stores the logs of an attempt that did not finish its step (it failed
    /// and will be retried). Not fsynced: losing them in a machine crash
    /// loses no result.
    pub fn append_logs(&self, run: &RunRecord, logs: &[LogRecord]) -> Result<(), StoreError> {
        let key = run_key(&run.tenant, &run.run_id)?;
        let mut batch = WriteBatch::default();
        self.put_logs(&mut batch, &key, logs)?;
        self.db.write(batch).map_err(|source| StoreError::Db {
            operation: "append_logs",
            source,
        })
    }

    /// Records a run's new status; a finished run leaves the unfinished
    /// index, with its output if it has one.
    pub fn update_run(&self, run: &RunRecord, output: Option<&Value>) -> Result<(), StoreError> {
        self.write_run(run, Vec::new(), &[], output, "update_run")
    }

    pub fn run(&self, tenant: &str, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let key = run_key(tenant, run_id)?;
        self.get(RUNS, &key)?
            .map(|bytes| from_json(&bytes, "run record"))
            .transpose()
    }

    /// A tenant's runs, newest first.
    pub fn runs(&self, tenant: &str, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.runs_before(tenant, None, limit)
    }

    /// A tenant's runs older than run `before` (all, given `None`), newest
    /// first: one page of a listing.
    pub fn runs_before(
        &self,
        tenant: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let prefix = prefix(&[tenant])?;
        let start = match before {
            Some(run_id) => run_key(tenant, run_id)?,
            None => {
                // The first key after every "tenant\0..." key.
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix ends with a separator") = 1;
                end
            }
        };
        let iter = self.db.iterator_cf(
            self.cf(RUNS),
            IteratorMode::From(&start, Direction::Reverse),
        );
        let mut runs = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "list runs",
                source,
            })?;
            if !key.starts_with(&prefix) || runs.len() >= limit {
                break;
            }
            if key[..] == start[..] {
                continue;
            }
            runs.push(from_json(&value, "run record")?);
        }
        Ok(runs)
    }

    /// Every unfinished run of every tenant: what to resume after a restart.
    pub fn unfinished_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = Vec::new();
        for item in self.db.iterator_cf(self.cf(ACTIVE), IteratorMode::Start) {
            let (key, _) = item.map_err(|source| StoreError::Db {
                operation: "list unfinished runs",
                source,
            })?;
            let value = self.get(RUNS, &key)?.ok_or_else(|| StoreError::Corrupt {
                what: "unfinished-run index".into(),
                reason: format!("no run record for {}", String::from_utf8_lossy(&key)),
            })?;
            runs.push(from_json(&value, "run record")?);
        }
        Ok(runs)
    }

    /// One page of a tenant's runs that match `filter`, newest first,
    /// older than run `before` (from the newest, given `None`): at most
    /// `limit` runs, examining at most `max_scan` stored runs. A page cut
    /// short by `max_scan` has `next` set even with fewer than `limit`
    /// runs, so that a filter that matches nothing reads a bounded amount
    /// per call. A time range seeks by run id (UUIDv7, time-ordered)
    /// instead of reading the runs outside it.
    pub fn runs_page(
        &self,
        tenant: &str,
        filter: &RunFilter,
        before: Option<&str>,
        limit: usize,
        max_scan: usize,
    ) -> Result<RunsPage, StoreError> {
        debug_assert!(max_scan > 0, "a call reads at least one run");
        let prefix = prefix(&[tenant])?;
        let mut start = match before {
            Some(run_id) => run_key(tenant, run_id)?,
            None => {
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix ends with a separator") = 1;
                end
            }
        };
        if let Some(to) = filter.created_to_ms {
            let mut bound = prefix.clone();
            bound.extend_from_slice(id_prefix_at(to.saturating_add(ID_CLOCK_SLACK_MS)).as_bytes());
            if bound < start {
                start = bound;
            }
        }
        let oldest_id_ms = filter
            .created_from_ms
            .map(|from| from.saturating_sub(ID_CLOCK_SLACK_MS));
        let iter = self.db.iterator_cf(
            self.cf(RUNS),
            IteratorMode::From(&start, Direction::Reverse),
        );
        let mut page = RunsPage::default();
        let mut scanned = 0;
        let mut last_seen = None;
        for item in iter {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "list runs",
                source,
            })?;
            if !key.starts_with(&prefix) {
                return Ok(page);
            }
            if key[..] == start[..] {
                continue;
            }
            let run_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let (Some(oldest), Some(at)) = (oldest_id_ms, id_time_ms(&run_id))
                && at < oldest
            {
                return Ok(page);
            }
            if scanned == max_scan {
                page.next = last_seen;
                return Ok(page);
            }
            scanned += 1;
            let run: RunRecord = from_json(&value, "run record")?;
            if filter.matches(&run) {
                if page.runs.len() == limit {
                    page.next = page.runs.last().map(|r| r.run_id.clone());
                    return Ok(page);
                }
                page.runs.push(run);
            }
            last_seen = Some(run_id);
        }
        Ok(page)
    }

    /// Finished runs that ended before their tenant's cutoff (ms since
    /// 1970; `cutoff` answers `None` for a tenant whose runs are kept
    /// forever), as (tenant, run id), at most `max`. Per tenant it reads
    /// from the oldest run up to the first created after the cutoff: a run
    /// created later cannot have ended before it.
    pub fn expired_runs(
        &self,
        cutoff: impl Fn(&str) -> Option<u64>,
        max: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut expired = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        'tenants: loop {
            let first = self
                .db
                .iterator_cf(self.cf(RUNS), IteratorMode::From(&from, Direction::Forward))
                .next();
            let Some(first) = first else {
                return Ok(expired);
            };
            let (key, _) = first.map_err(|source| StoreError::Db {
                operation: "find expired runs",
                source,
            })?;
            let Some(end) = key.iter().position(|b| *b == 0) else {
                return Err(StoreError::Corrupt {
                    what: "run key".into(),
                    reason: "it has no tenant".into(),
                });
            };
            let tenant = String::from_utf8_lossy(&key[..end]).into_owned();
            let tenant_prefix = key[..=end].to_vec();
            // The next tenant's keys start after "tenant\x01".
            from = tenant_prefix.clone();
            *from.last_mut().expect("a separator") = 1;
            let Some(cutoff) = cutoff(&tenant) else {
                continue;
            };
            let iter = self.db.iterator_cf(
                self.cf(RUNS),
                IteratorMode::From(&tenant_prefix, Direction::Forward),
            );
            for item in iter {
                let (key, value) = item.map_err(|source| StoreError::Db {
                    operation: "find expired runs",
                    source,
                })?;
                if !key.starts_with(&tenant_prefix) {
                    break;
                }
                let run: RunRecord = from_json(&value, "run record")?;
                if run.created_at_ms >= cutoff {
                    break;
                }
                if run.status.is_finished() && run.updated_at_ms < cutoff {
                    expired.push((tenant.clone(), run.run_id));
                    if expired.len() >= max {
                        break 'tenants;
                    }
                }
            }
        }
        Ok(expired)
    }

    /// Deletes a tenant's finished runs with everything stored for them:
    /// record, steps, payloads (and their files), logs and the request keys
    /// that started them, in one write. The last request key of each scope
    /// stays, with no run, so that a cron schedule keeps its place. An
    /// unfinished or unknown run is left alone. Returns how many runs were
    /// deleted; [`Store::compact`] gives the space back.
    pub fn delete_runs(&self, tenant: &str, run_ids: &[String]) -> Result<usize, StoreError> {
        let mut batch = WriteBatch::default();
        let mut deleted = std::collections::HashSet::new();
        for run_id in run_ids {
            let Some(run) = self.run(tenant, run_id)? else {
                continue;
            };
            if !run.status.is_finished() {
                continue;
            }
            let key = run_key(tenant, run_id)?;
            let from = prefix(&[tenant, run_id])?;
            let mut to = from.clone();
            *to.last_mut().expect("prefix ends with a separator") = 1;
            batch.delete_cf(self.cf(RUNS), &key);
            batch.delete_cf(self.cf(ACTIVE), &key);
            for family in [STEPS, BLOBS, LOGS] {
                batch.delete_range_cf(self.cf(family), &from, &to);
            }
            deleted.insert(run_id.as_bytes().to_vec());
        }
        if deleted.is_empty() {
            return Ok(0);
        }
        // Request keys are by scope, not by run: read the tenant's once.
        let tenant_prefix = prefix(&[tenant])?;
        let iter = self.db.iterator_cf(
            self.cf(REQUESTS),
            IteratorMode::From(&tenant_prefix, Direction::Forward),
        );
        let mut previous: Option<(Vec<u8>, Vec<u8>)> = None;
        let scope_of = |key: &[u8]| -> Vec<u8> {
            let rest = &key[tenant_prefix.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            rest[..end].to_vec()
        };
        for item in iter {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "read requests",
                source,
            })?;
            if !key.starts_with(&tenant_prefix) {
                break;
            }
            if let Some((prev_key, prev_value)) = previous.take() {
                let last_of_scope = scope_of(&prev_key) != scope_of(&key);
                if deleted.contains(&prev_value) {
                    if last_of_scope {
                        batch.put_cf(self.cf(REQUESTS), &prev_key, []);
                    } else {
                        batch.delete_cf(self.cf(REQUESTS), &prev_key);
                    }
                }
            }
            previous = Some((key.to_vec(), value.to_vec()));
        }
        if let Some((prev_key, prev_value)) = previous
            && deleted.contains(&prev_value)
        {
            batch.put_cf(self.cf(REQUESTS), &prev_key, []);
        }
        self.write(batch, "delete_runs")?;
        for run_id in &deleted {
            let run_id = String::from_utf8_lossy(run_id);
            let file = payload_file_name(tenant, &run_id, "x");
            let dir = self
                .payloads
                .join(Path::new(&file).parent().unwrap_or(Path::new("")));
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path: dir, source }),
            }
        }
        Ok(deleted.len())
    }

    /// Flushes and fully compacts every column family: deleted data (and
    /// blob files no live key references) leaves the disk.
    pub fn compact(&self) -> Result<(), StoreError> {
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for family in FAMILIES {
            let cf = self.cf(family);
            self.db.flush_cf(cf).map_err(|source| StoreError::Db {
                operation: "flush",
                source,
            })?;
            self.db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &options);
        }
        Ok(())
    }

    /// The bytes the store's folder holds (database and payload files).
    pub fn disk_usage(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.file_type() {
                    Ok(t) if t.is_dir() => walk(&entry.path()),
                    Ok(_) => entry.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(self.path())
    }

    /// Stores a tenant's record (new, or changed).
    pub fn put_tenant(&self, record: &TenantRecord) -> Result<(), StoreError> {
        check("tenant id", &record.name)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(TENANTS), record.name.as_bytes(), to_json(record));
        self.write(batch, "put_tenant")
    }

    pub fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        check("tenant id", name)?;
        self.get(TENANTS, name.as_bytes())?
            .map(|v| from_json(&v, "tenant record"))
            .transpose()
    }

    /// Every tenant created through the admin API, by name.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.scan(TENANTS, &[], "tenant record")
    }

    /// Stores an issued token's record under `hash`, the SHA-256 of the
    /// token.
    pub fn put_token(&self, hash: &[u8], record: &TokenRecord) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(TOKENS), hash, to_json(record));
        self.write(batch, "put_token")
    }

    /// The token whose SHA-256 is `hash`, if one was issued and not revoked.
    pub fn token(&self, hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        self.get(TOKENS, hash)?
            .map(|v| from_json(&v, "token record"))
            .transpose()
    }

    /// Every issued token, as (hash, record), in hash order.
    pub fn tokens(&self) -> Result<Vec<(Vec<u8>, TokenRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(TOKENS), IteratorMode::Start) {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "list tokens",
                source,
            })?;
            out.push((key.to_vec(), from_json(&value, "token record")?));
        }
        Ok(out)
    }

    /// Deletes the token with this id; its hash and record, if there was one.
    pub fn delete_token(
        &self,
        token_id: &str,
    ) -> Result<Option<(Vec<u8>, TokenRecord)>, StoreError> {
        let Some(found) = self
            .tokens()?
            .into_iter()
            .find(|(_, record)| record.token_id == token_id)
        else {
            return Ok(None);
        };
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(TOKENS), &found.0);
        self.write(batch, "delete_token")?;
        Ok(Some(found))
    }

    /// A run's step checkpoints, in key order.
    pub fn steps(&self, tenant: &str, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let prefix = prefix(&[tenant, run_id])?;
        self.scan(STEPS, &prefix, "step record")
    }

    /// A step's checkpoint, if the step finished.
    pub fn step(
        &self,
        tenant: &str,
        run_id: &str,
        step_key: &str,
    ) -> Result<Option<StepRecord>, StoreError> {
        let key = child_key(&run_key(tenant, run_id)?, step_key)?;
        self.get(STEPS, &key)?
            .map(|bytes| from_json(&bytes, "step record"))
            .transpose()
    }

    /// A step's output.
    pub fn step_output(
        &self,
        tenant: &str,
        run_id: &str,
        step_key: &str,
    ) -> Result<Option<Value>, StoreError> {
        self.payload(tenant, run_id, step_key)
    }

    pub fn run_input(&self, tenant: &str, run_id: &str) -> Result<Option<Value>, StoreError> {
        self.payload(tenant, run_id, INPUT_BLOB)
    }

    pub fn run_output(&self, tenant: &str, run_id: &str) -> Result<Option<Value>, StoreError> {
        self.payload(tenant, run_id, OUTPUT_BLOB)
    }

    /// The definition the run was started with, as given to [`Store::create_run`].
    pub fn run_definition(&self, tenant: &str, run_id: &str) -> Result<Option<Value>, StoreError> {
        self.payload(tenant, run_id, DEFINITION_BLOB)
    }

    /// A run's logs, ordered by time (then by step and attempt).
    pub fn logs(&self, tenant: &str, run_id: &str) -> Result<Vec<LogRecord>, StoreError> {
        let prefix = prefix(&[tenant, run_id])?;
        let mut logs: Vec<LogRecord> = self.scan(LOGS, &prefix, "log record")?;
        logs.sort_by_key(|l| l.time_ms);
        Ok(logs)
    }

    fn put_logs(
        &self,
        batch: &mut WriteBatch,
        run_key: &[u8],
        logs: &[LogRecord],
    ) -> Result<(), StoreError> {
        for (seq, line) in logs.iter().enumerate() {
            let mut key = child_key(run_key, &line.step_key)?;
            key.push(0);
            key.extend_from_slice(&line.attempt.to_be_bytes());
            key.extend_from_slice(&u32::try_from(seq).unwrap_or(u32::MAX).to_be_bytes());
            batch.put_cf(self.cf(LOGS), key, to_json(line));
        }
        Ok(())
    }

    /// Adds a payload to `batch`, inline or (when large) in a file that is
    /// durable before this returns. Returns its size in bytes.
    fn put_payload(
        &self,
        batch: &mut WriteBatch,
        run: &RunRecord,
        name: &str,
        value: &Value,
    ) -> Result<u64, StoreError> {
        let key = child_key(&run_key(&run.tenant, &run.run_id)?, name)?;
        let relative = payload_file_name(&run.tenant, &run.run_id, name);
        let mut writer = SpillWriter {
            buffer: vec![INLINE],
            file: None,
            path: self.payloads.join(&relative),
            written: 0,
        };
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        serde_json::to_writer(&mut writer, value).map_err(|e| StoreError::Io {
            path: writer.path.clone(),
            source: e.into(),
        })?;
        let size = writer.written;
        match writer.file.take() {
            None => batch.put_cf(self.cf(BLOBS), key, writer.buffer),
            Some(file) => {
                let file = file
                    .into_inner()
                    .map_err(|e| io(&writer.path)(e.into_error()))?;
                file.sync_all().map_err(io(&writer.path))?;
                sync_dir(writer.path.parent().unwrap_or(&self.payloads))?;
                let mut reference = vec![IN_FILE];
                reference.extend_from_slice(relative.as_bytes());
                batch.put_cf(self.cf(BLOBS), key, reference);
            }
        }
        Ok(size)
    }

    /// A run's output as its stored JSON text, read as it is needed: a
    /// large output is streamed from its file, never held whole.
    pub fn run_output_reader(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, StoreError> {
        self.payload_reader(tenant, run_id, OUTPUT_BLOB)
    }

    /// The run's input as JSON text, a piece at a time.
    pub fn run_input_reader(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, StoreError> {
        self.payload_reader(tenant, run_id, INPUT_BLOB)
    }

    /// A checkpointed step's output as JSON text, a piece at a time.
    pub fn step_output_reader(
        &self,
        tenant: &str,
        run_id: &str,
        step_key: &str,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, StoreError> {
        if step_key.starts_with('#') {
            return Ok(None);
        }
        self.payload_reader(tenant, run_id, step_key)
    }

    fn payload_reader(
        &self,
        tenant: &str,
        run_id: &str,
        name: &str,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, StoreError> {
        Ok(match self.stored_payload(tenant, run_id, name)? {
            None => None,
            Some(Stored::Inline(stored)) => {
                let mut json = std::io::Cursor::new(stored);
                json.set_position(1);
                Some(Box::new(json))
            }
            Some(Stored::InFile(path)) => Some(Box::new(
                File::open(&path).map_err(|source| StoreError::Io { path, source })?,
            )),
        })
    }

    fn payload(&self, tenant: &str, run_id: &str, name: &str) -> Result<Option<Value>, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: format!("payload {name} of run {run_id}"),
            reason,
        };
        match self.stored_payload(tenant, run_id, name)? {
            None => Ok(None),
            Some(Stored::Inline(stored)) => serde_json::from_slice(&stored[1..])
                .map(Some)
                .map_err(|e| corrupt(e.to_string())),
            Some(Stored::InFile(path)) => {
                let file = File::open(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_reader(BufReader::with_capacity(1 << 20, file))
                    .map(Some)
                    .map_err(|e| corrupt(format!("{}: {e}", path.display())))
            }
        }
    }

    /// Where payload `name` of a run is: its JSON inline, or the file
    /// holding it.
    fn stored_payload(
        &self,
        tenant: &str,
        run_id: &str,
        name: &str,
    ) -> Result<Option<Stored>, StoreError> {
        let key = child_key(&run_key(tenant, run_id)?, name)?;
        let Some(stored) = self.get(BLOBS, &key)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            what: format!("payload {name} of run {run_id}"),
            reason,
        };
        match stored.split_first() {
            Some((&INLINE, _)) => Ok(Some(Stored::Inline(stored))),
            Some((&IN_FILE, relative)) => {
                let relative = std::str::from_utf8(relative).map_err(|e| corrupt(e.to_string()))?;
                Ok(Some(Stored::InFile(self.payloads.join(relative))))
            }
            _ => Err(corrupt("unknown payload encoding".into())),
        }
    }

    fn scan<T: for<'de> Deserialize<'de>>(
        &self,
        family: &str,
        prefix: &[u8],
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        let iter = self.db.iterator_cf(
            self.cf(family),
            IteratorMode::From(prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "scan",
                source,
            })?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(from_json(&value, what)?);
        }
        Ok(out)
    }

    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(family), key)
            .map_err(|source| StoreError::Db {
                operation: "read",
                source,
            })
    }

    fn write(&self, batch: WriteBatch, operation: &'static str) -> Result<(), StoreError> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(self.sync);
        self.db
            .write_opt(batch, &options)
            .map_err(|source| StoreError::Db { operation, source })
    }

    /// Stores a version of an integration. Versions are immutable: the same
    /// definition again is accepted, another definition is a conflict.
    pub fn put_integration(
        &self,
        tenant: &str,
        record: IntegrationRecord,
    ) -> Result<Deployed, StoreError> {
        let key = integration_key(tenant, &record.name, record.version)?;
        if let Some(existing) = self.get(INTEGRATIONS, &key)? {
            let existing: IntegrationRecord = from_json(&existing, "integration")?;
            return Ok(if existing.definition == record.definition {
                Deployed::Unchanged(existing)
            } else {
                Deployed::Conflict(existing)
            });
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(INTEGRATIONS), &key, to_json(&record));
        self.write(batch, "put_integration")?;
        Ok(Deployed::Created(record))
    }

    /// A version of an integration; its latest when `version` is `None`.
    pub fn integration(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        if let Some(version) = version {
            let key = integration_key(tenant, name, version)?;
            return self
                .get(INTEGRATIONS, &key)?
                .map(|v| from_json(&v, "integration"))
                .transpose();
        }
        Ok(self.integration_versions(tenant, Some(name))?.pop())
    }

    /// The latest version of each of a tenant's integrations, by name.
    pub fn integrations(&self, tenant: &str) -> Result<Vec<IntegrationRecord>, StoreError> {
        let mut latest: Vec<IntegrationRecord> = Vec::new();
        for record in self.integration_versions(tenant, None)? {
            match latest.last_mut() {
                Some(last) if last.name == record.name => *last = record,
                _ => latest.push(record),
            }
        }
        Ok(latest)
    }

    /// Every version of a tenant's integrations (of one, given `name`),
    /// in name and version order.
    fn integration_versions(
        &self,
        tenant: &str,
        name: Option<&str>,
    ) -> Result<Vec<IntegrationRecord>, StoreError> {
        let prefix = match name {
            Some(name) => prefix(&[tenant, name])?,
            None => prefix(&[tenant])?,
        };
        let iter = self.db.iterator_cf(
            self.cf(INTEGRATIONS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut records = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "list integrations",
                source,
            })?;
            if !key.starts_with(&prefix) {
                break;
            }
            records.push(from_json(&value, "integration")?);
        }
        Ok(records)
    }

    /// Stores a sealed credential (the vault encrypts; the store keeps
    /// bytes).
    pub fn put_credential(
        &self,
        tenant: &str,
        name: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let key = credential_key(tenant, name)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CREDENTIALS), &key, sealed);
        self.write(batch, "put_credential")
    }

    pub fn credential(&self, tenant: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(CREDENTIALS, &credential_key(tenant, name)?)
    }

    /// Deletes a credential; whether there was one.
    pub fn delete_credential(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let key = credential_key(tenant, name)?;
        if self.get(CREDENTIALS, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CREDENTIALS), &key);
        self.write(batch, "delete_credential")?;
        Ok(true)
    }

    /// Every stored credential's (tenant, name), keys only.
    pub fn credential_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut names = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CREDENTIALS), IteratorMode::Start)
        {
            let (key, _) = item.map_err(|source| StoreError::Db {
                operation: "list credentials",
                source,
            })?;
            let text = String::from_utf8_lossy(&key);
            if let Some((tenant, name)) = text.split_once('\0') {
                names.push((tenant.to_owned(), name.to_owned()));
            }
        }
        Ok(names)
    }

    /// How many credentials a tenant has.
    pub fn credential_count(&self, tenant: &str) -> Result<usize, StoreError> {
        let prefix = prefix(&[tenant])?;
        let mut count = 0;
        for item in self.db.iterator_cf(
            self.cf(CREDENTIALS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, _) = item.map_err(|source| StoreError::Db {
                operation: "count credentials",
                source,
            })?;
            if !key.starts_with(&prefix) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// A tenant's sealed credentials by name (every tenant's, as
    /// (tenant, name, sealed), when `tenant` is `None`), in name order.
    pub fn credentials(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let prefix = match tenant {
            Some(tenant) => prefix(&[tenant])?,
            None => Vec::new(),
        };
        let iter = self.db.iterator_cf(
            self.cf(CREDENTIALS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|source| StoreError::Db {
                operation: "list credentials",
                source,
            })?;
            if !key.starts_with(&prefix) {
                break;
            }
            let text = String::from_utf8_lossy(&key);
            let Some((tenant, name)) = text.split_once('\0') else {
                return Err(StoreError::Corrupt {
                    what: "credential key".into(),
                    reason: "it has no tenant".into(),
                });
            };
            out.push((tenant.to_owned(), name.to_owned(), value.to_vec()));
        }
        Ok(out)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created by open")
    }
}

/// First byte of a stored payload: the JSON follows, or the name of the
/// file (under `payloads/`) that holds it.
const INLINE: u8 = 0;
const IN_FILE: u8 = 1;

/// Serialises into memory until [`FILE_PAYLOAD_BYTES`], then moves what it
/// has to a file and streams the rest there: a large payload is never held
/// twice in memory.
struct SpillWriter {
    buffer: Vec<u8>,
    file: Option<BufWriter<File>>,
    path: PathBuf,
    written: u64,
}

impl Write for SpillWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.written += data.len() as u64;
        if let Some(file) = &mut self.file {
            file.write_all(data)?;
        } else if self.buffer.len() + data.len() > FILE_PAYLOAD_BYTES {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = BufWriter::with_capacity(1 << 20, File::create(&self.path)?);
            file.write_all(&self.buffer[1..])?;
            file.write_all(data)?;
            self.buffer = Vec::new();
            self.file = Some(file);
        } else {
            self.buffer.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// `payloads/<tenant hex>/<run id hex>/<name hex>.json`: hex keeps any id
/// a safe file name.
fn payload_file_name(tenant: &str, run_id: &str, name: &str) -> String {
    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }
    format!("{}/{}/{}.json", hex(tenant), hex(run_id), hex(name))
}

/// Makes a new file's directory entry durable (and the folders above it,
/// which `create_dir_all` may just have made).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    for dir in dir.ancestors().take(3) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
    }
    Ok(())
}

/// Blob names of a run's own payloads; step keys cannot start with '#'.
/// The request scope that holds paused scopes.
const PAUSED_SCOPE: &str = "paused";
const INPUT_BLOB: &str = "#input";
const OUTPUT_BLOB: &str = "#output";
const DEFINITION_BLOB: &str = "#definition";

fn check(what: &'static str, value: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidKey {
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.bytes().any(|b| b == 0) {
        return Err(invalid("it contains a NUL character"));
    }
    Ok(())
}

/// `a \0 b \0 ... \0`: the prefix of every key under these parts.
fn prefix(parts: &[&str]) -> Result<Vec<u8>, StoreError> {
    let mut key = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        check(if i == 0 { "tenant id" } else { "run id" }, part)?;
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    Ok(key)
}

fn run_key(tenant: &str, run_id: &str) -> Result<Vec<u8>, StoreError> {
    let mut key = prefix(&[tenant, run_id])?;
    key.pop();
    Ok(key)
}

fn integration_key(tenant: &str, name: &str, version: u32) -> Result<Vec<u8>, StoreError> {
    check("integration name", name)?;
    let mut key = prefix(&[tenant, name])?;
    key.extend_from_slice(&version.to_be_bytes());
    Ok(key)
}

fn request_key(tenant: &str, scope: &str, key: &str) -> Result<Vec<u8>, StoreError> {
    check("request scope", scope)?;
    check("request key", key)?;
    let mut bytes = prefix(&[tenant, scope])?;
    bytes.extend_from_slice(key.as_bytes());
    Ok(bytes)
}

fn credential_key(tenant: &str, name: &str) -> Result<Vec<u8>, StoreError> {
    check("credential name", name)?;
    let mut key = prefix(&[tenant])?;
    key.extend_from_slice(name.as_bytes());
    Ok(key)
}

fn child_key(run_key: &[u8], child: &str) -> Result<Vec<u8>, StoreError> {
    check("step key", child)?;
    let mut key = run_key.to_vec();
    key.push(0);
    key.extend_from_slice(child.as_bytes());
    Ok(key)
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data and always serialise")
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}
