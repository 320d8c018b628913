//! `isoflow serve`'s configuration: one serde tree, filled in layers:
//! defaults → TOML file (`--config`) → environment → command-line flags.
//! `main` reads the environment once and passes it here as a map, so tests
//! never touch the process environment.
//!
//! Every key of the file can be set in the two later layers by its path:
//! `ISOFLOW__ETCD__LEASE_TTL=5s` (after `ISOFLOW__`, the path's parts in
//! capitals joined by `__`) and `--set etcd.lease_ttl=5s`, the value
//! written as in TOML (`16`, `true`, `["a", "b"]`) or as plain text for a
//! string. They are merged into the file's table before it is read (the
//! environment's first, then the flags'), so a key has one meaning and one
//! set of checks whichever layer sets it. The named variables and flags
//! (`ISOFLOW_LISTEN`, then `--listen`, ...) are shorthands applied after
//! every path.
//!
//! Every key, with what it means: `deploy/isoflow.example.toml`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use isoflow_engine::action::egress::{Allowed, EgressPolicy};
use isoflow_engine::credential::vault::{self, Keyring};
use isoflow_engine::model::{self, ByteSize};
use isoflow_engine::sandbox::{MemoryCap, Program, SandboxConfig};
use serde::Deserialize;

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Owns the run store, serves the API, assigns runs to workers.
    Coordinator,
    /// Runs what the coordinator assigns; keeps no state.
    Worker,
    /// Everything in one process, no etcd: the embedded default.
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub role: Role,
    /// This node's name in the cluster [default: the host name and process id].
    pub node_id: Option<String>,
    /// The run store's folder (coordinator and all).
    pub data_dir: Option<PathBuf>,
    pub api: Api,
    pub http: Http,
    pub tls: Tls,
    pub auth: Auth,
    pub etcd: Etcd,
    pub cluster: Cluster,
    pub worker: Worker,
    pub sandbox: Sandbox,
    pub egress: Egress,
    pub limits: Limits,
    pub vault: Vault,
    pub retention: Retention,
    pub smtp: Smtp,
    pub telemetry: Telemetry,
    pub log: Log,
    /// Refused with a sentence: credentials of a node live in its vault.
    credentials: Vec<toml::Value>,
    /// The largest payload a run may take or produce.
    pub max_payload_bytes: u64,
    /// The vault's keys, read by `load` from `vault`'s files or variables.
    #[serde(skip)]
    pub keyring: Option<Arc<Keyring>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::All,
            node_id: None,
            data_dir: None,
            api: Api::default(),
            http: Http::default(),
            tls: Tls::default(),
            auth: Auth::default(),
            etcd: Etcd::default(),
            cluster: Cluster::default(),
            worker: Worker::default(),
            sandbox: Sandbox::default(),
            egress: Egress::default(),
            limits: Limits::default(),
            vault: Vault::default(),
            retention: Retention::default(),
            smtp: Smtp::default(),
            telemetry: Telemetry::default(),
            log: Log::default(),
            credentials: Vec::new(),
            max_payload_bytes: 1 << 30,
            keyring: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Where the gRPC server listens (coordinator and all).
    pub listen: SocketAddr,
    /// The address other nodes reach this one at [default: http://<listen>,
    /// or https:// with [tls]].
    pub advertise: Option<String>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            advertise: None,
        }
    }
}

/// The node's HTTP listener: `/metrics`, `/healthz` and `/readyz` on every
/// role; webhooks, the OAuth2 callback and the console on a coordinator or
/// all node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Where it listens, e.g. 127.0.0.1:7701 [default: no listener].
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token `GET /metrics` must present
    /// [default: none, and /metrics answers anyone who reaches the
    /// listener]. The metrics name tenants and integrations.
    pub metrics_token_file: Option<PathBuf>,
    /// The token read from `metrics_token_file` by `load`.
    #[serde(skip)]
    pub metrics_token: Option<Password>,
    /// The address users' browsers reach the listener at, e.g.
    /// `https://isoflow.example.com`: OAuth2 providers send users back to
    /// `<public_url>/oauth/callback/<id>` [default: none, and no OAuth2
    /// authorization code flow].
    pub public_url: Option<String>,
    /// The web console under `/console` (sign-in with a tenant's API
    /// token) [default: true].
    pub console: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: None,
            metrics_token_file: None,
            metrics_token: None,
            public_url: None,
            console: true,
        }
    }
}

impl Http {
    /// The base of the OAuth2 callbacks' URLs (each credential's adds its
    /// id), if there is a public URL.
    pub fn oauth_callback(&self) -> Option<String> {
        self.public_url
            .as_deref()
            .map(|url| format!("{}/oauth/callback", url.trim_end_matches('/')))
    }
}

/// Traces: OpenTelemetry over OTLP/gRPC, off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317` [default: none,
    /// and no traces].
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0 to 1; a run started inside a
    /// caller's trace follows the caller's decision.
    pub sampling_ratio: f64,
    /// `service.name` of every span.
    pub service_name: String,
    /// More resource attributes (`deployment.environment = "prod"`);
    /// `service.instance.id` (the node id) and `isoflow.role` are always
    /// set.
    pub resource: std::collections::BTreeMap<String, String>,
    /// How often finished spans are sent (at most; a full batch goes at
    /// once). A killed process loses the spans of its last interval.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: "isoflow".to_owned(),
            resource: std::collections::BTreeMap::new(),
            export_interval: Duration::from_secs(2),
        }
    }
}

/// How `isoflow serve` writes its log (stderr).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line, a run's `run_id` and `trace_id` at the top.
    Json,
}

/// TLS on the gRPC listener (coordinator and all), which the public API and
/// the workers' API share. On when `cert` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The node's certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
    /// The CA that signs workers' client certificates (PEM). A coordinator
    /// with TLS needs it: the workers' API then takes only workers that
    /// present a certificate it signed, naming the worker's id.
    pub client_ca: Option<PathBuf>,
}

impl Tls {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// What http steps may connect to besides public addresses: networks
/// (`10.1.0.0/16`) and host names (`erp.internal`), for every tenant or
/// for one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Egress {
    pub allow: Vec<String>,
    pub tenants: Vec<TenantEgress>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEgress {
    pub tenant: String,
    pub allow: Vec<String>,
}

impl Egress {
    /// The engine's policy; an entry that is neither a network, an address
    /// nor a host name is an error naming it.
    pub fn policy(&self) -> anyhow::Result<EgressPolicy> {
        let parse = |entries: &[String], key: &str| {
            entries
                .iter()
                .map(|entry| {
                    entry
                        .parse::<Allowed>()
                        .map_err(|why| anyhow::anyhow!("{key}: {why}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let mut policy = EgressPolicy::public_only().allow(parse(&self.allow, "egress.allow")?);
        for tenant in &self.tenants {
            let key = format!("egress.tenants (tenant {:?}).allow", tenant.tenant);
            policy = policy.allow_tenant(tenant.tenant.clone(), parse(&tenant.allow, &key)?);
        }
        Ok(policy)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Public API tokens. With none, role `all` serves every caller as
    /// tenant `local`; a coordinator refuses to start without one.
    pub tokens: Vec<ApiToken>,
    /// The token workers present to the coordinator (required in a cluster).
    pub cluster_token: Option<String>,
    /// A file holding the admin token (`isoflow.v1.Admin`: tenants, their
    /// tokens and quotas), only its owner may read it. Without it (or
    /// `ISOFLOW_ADMIN_TOKEN`) admin calls are refused. With it, every API
    /// caller needs a token, even with none in `tokens`.
    pub admin_token_file: Option<PathBuf>,
    /// The admin token, read by `load` from `ISOFLOW_ADMIN_TOKEN` or
    /// `admin_token_file`.
    #[serde(skip)]
    pub admin_token: Option<Password>,
}

/// How long finished runs are kept (coordinator and all).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Finished runs are deleted this long after they ended, with their
    /// input, steps, outputs and logs (e.g. "30days"); a tenant's own
    /// setting beats it. Unset or 0: kept forever.
    #[serde(with = "humantime_serde")]
    pub keep: Option<Duration>,
    /// How often the coordinator looks for runs to delete.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: None,
            sweep_interval: Duration::from_secs(60 * 60),
        }
    }
}

impl Auth {
    /// The admin token: `ISOFLOW_ADMIN_TOKEN`, else the content of
    /// `admin_token_file` (its trailing line break dropped), which only its
    /// owner may read.
    fn read_admin_token(&self, env: &HashMap<String, String>) -> anyhow::Result<Option<Password>> {
        if let Some(token) = env.get("ISOFLOW_ADMIN_TOKEN").filter(|t| !t.is_empty()) {
            return Ok(Some(Password(token.clone())));
        }
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        use std::os::unix::fs::PermissionsExt;
        let cannot = || format!("auth.admin_token_file {}: cannot read it", path.display());
        let file = std::fs::File::open(path).with_context(cannot)?;
        let mode = file.metadata().with_context(cannot)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "auth.admin_token_file {} may be read by others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, 4096), &mut text)
            .with_context(cannot)?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            bail!("auth.admin_token_file {} is empty", path.display());
        }
        Ok(Some(Password(token.to_owned())))
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub tenant: String,
    pub token: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Etcd {
    /// `http://` or, with `ca`, `https://` URLs.
    pub endpoints: Vec<String>,
    /// The CA that signs etcd's server certificate (PEM); needed for
    /// https:// endpoints.
    pub ca: Option<PathBuf>,
    /// This node's client certificate and key (PEM), for an etcd that
    /// requires them (`--client-cert-auth`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The etcd user (with etcd's authentication on), and a file holding
    /// its password.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The password itself, from `ISOFLOW_ETCD_PASSWORD` only (it beats
    /// `password_file`).
    #[serde(skip)]
    pub password: Option<Password>,
    /// Where this cluster's keys live, so clusters can share an etcd.
    pub prefix: String,
    /// How long a node's registration outlives its last keep-alive: a
    /// killed worker's runs move to another worker after about this long
    /// (or at once, when its connection to the coordinator drops).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            password: None,
            prefix: "/isoflow".to_owned(),
            lease_ttl: Duration::from_secs(3),
        }
    }
}

impl Etcd {
    /// True when the endpoints are reached over TLS.
    pub fn tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The user and password to authenticate as, if any: the password from
    /// `ISOFLOW_ETCD_PASSWORD`, or else read from `password_file` now (its
    /// trailing line break dropped).
    pub fn credentials(&self) -> anyhow::Result<Option<(String, Password)>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        if let Some(password) = &self.password {
            return Ok(Some((user.clone(), password.clone())));
        }
        let Some(path) = &self.password_file else {
            bail!("etcd.user is {user:?} but there is no password: set etcd.password_file");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read etcd.password_file {}", path.display()))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            bail!("etcd.password_file {} is empty", path.display());
        }
        Ok(Some((user.clone(), Password(password.to_owned()))))
    }
}

/// A secret that debug output does not show.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// How often workers and coordinator tell each other they are there.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence after which the other side is taken for gone.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Runs one tenant may have assigned to workers at once (coordinator
    /// and all); its other runs wait while other tenants' runs go. 0, the
    /// default, is no limit beyond the workers' capacity: a node does not
    /// know how many tenants will share it, and any fixed number would
    /// leave slots idle while one tenant is alone. Tenants are served in
    /// turn either way, so a flood delays another tenant's run by one turn
    /// at most once a slot frees; a limit keeps some slots free for the
    /// others when runs are long (runs that wait on slow APIs for minutes).
    pub tenant_runs_in_flight: u32,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(2),
            tenant_runs_in_flight: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Worker {
    /// Runs a worker (or an `all` node) runs at once; more wait in order.
    pub capacity: u32,
    /// The coordinator's address; without it, the elected leader in etcd.
    pub coordinator: Option<String>,
    pub tls: WorkerTls,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            capacity: 16,
            coordinator: None,
            tls: WorkerTls::default(),
        }
    }
}

/// How a worker reaches a coordinator that uses TLS. On when `ca` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerTls {
    /// The CA that signs the coordinator's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This worker's client certificate and key (PEM). The certificate's
    /// common name (or one of its DNS names) must be this node's id.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the coordinator's certificate must carry [default: the
    /// host in the coordinator's address].
    pub server_name: Option<String>,
}

impl WorkerTls {
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }
}

/// The sandbox processes code steps run in (see the engine's `sandbox`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sandbox {
    /// Code steps that run at once [default: twice the number of cores].
    pub concurrency: Option<usize>,
    /// Code steps one tenant may run at once [default: one fewer than
    /// `concurrency`].
    pub tenant_concurrency: Option<usize>,
    /// Sandbox processes kept, idle and busy; each serves one tenant.
    pub processes: Option<usize>,
    /// Processes started ahead of need.
    pub spare: usize,
    /// Steps a process runs before a fresh one replaces it.
    pub steps_per_process: u32,
    /// The user and group sandbox processes run as when the node is root.
    pub uid: u32,
    pub gid: u32,
    /// Network and mount namespaces for each process, where the machine
    /// allows them.
    pub namespaces: bool,
    /// V8 without its JIT: much slower steps, far less of V8 reachable.
    pub jitless: bool,
    /// How a process's memory is capped: auto, cgroup or address-space.
    pub memory: MemoryCapSetting,
    /// What a process may use beyond a step's heap limit and input, in MiB.
    pub memory_margin_mb: usize,
}

impl Default for Sandbox {
    fn default() -> Self {
        let engine = SandboxConfig::default();
        Sandbox {
            concurrency: None,
            tenant_concurrency: None,
            processes: None,
            spare: engine.spare,
            steps_per_process: engine.steps_per_process,
            uid: engine.lockdown.uid,
            gid: engine.lockdown.gid,
            namespaces: engine.lockdown.namespaces,
            jitless: engine.jitless,
            memory: MemoryCapSetting::Auto,
            memory_margin_mb: engine.memory_margin >> 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryCapSetting {
    Auto,
    Cgroup,
    AddressSpace,
}

impl Sandbox {
    /// The engine's sandbox settings: processes are this very binary, run
    /// as `isoflow sandbox-process`.
    pub fn engine_config(&self) -> SandboxConfig {
        let mut config = SandboxConfig {
            program: Program::this_executable(&[crate::SANDBOX_SUBCOMMAND]),
            spare: self.spare,
            steps_per_process: self.steps_per_process,
            jitless: self.jitless,
            memory: match self.memory {
                MemoryCapSetting::Auto => MemoryCap::Auto,
                MemoryCapSetting::Cgroup => MemoryCap::Cgroup,
                MemoryCapSetting::AddressSpace => MemoryCap::AddressSpace,
            },
            memory_margin: self.memory_margin_mb << 20,
            ..SandboxConfig::default()
        };
        if let Some(concurrency) = self.concurrency {
            config.concurrency = concurrency;
        }
        if let Some(processes) = self.processes {
            config.processes = processes;
        }
        config.tenant_concurrency = self.tenant_concurrency;
        config.lockdown.uid = self.uid;
        config.lockdown.gid = self.gid;
        config.lockdown.namespaces = self.namespaces;
        config
    }
}

/// What this node accepts in a definition (coordinator and all: checked at
/// deploy, with the file and line).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The longest `timeout` a step or loop may set (at most 24h).
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// The largest `heap` a code step may set (8MiB to 16GiB; a step
    /// without one gets the sandbox's 128MiB).
    pub step_heap: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            step_timeout: Duration::from_secs(60 * 60),
            step_heap: ByteSize(1 << 30),
        }
    }
}

impl Limits {
    pub fn model(&self) -> isoflow_engine::model::Limits {
        isoflow_engine::model::Limits {
            step_timeout: self.step_timeout,
            step_heap: self.step_heap,
        }
    }
}

/// The credential vault's keys (coordinator and all): credentials set
/// through the API are sealed with `key`; `previous` keys still open what
/// they sealed, and at start everything under one is resealed with `key`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Vault {
    pub key: Option<VaultKey>,
    pub previous: Vec<VaultKey>,
}

/// A key: 32 random bytes in base64 (`head -c 32 /dev/urandom | base64`),
/// in a file only its owner may read, or in an `ISOFLOW_` variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKey {
    /// Stored beside every secret it seals.
    pub id: String,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl VaultKey {
    fn load(&self, key: &str, env: &HashMap<String, String>) -> anyhow::Result<vault::Key> {
        let text = match (&self.file, &self.env) {
            (Some(path), None) => read_private_file(&format!("{key}.file"), path)?,
            (None, Some(name)) => {
                if !name.starts_with("ISOFLOW_") {
                    bail!("{key}.env is {name:?}: it must name an ISOFLOW_ variable");
                }
                env.get(name)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("{key}.env names {name}, which is not set"))?
            }
            _ => bail!("{key} (id {:?}) needs either file or env", self.id),
        };
        vault::Key::from_base64(&self.id, &text).map_err(|e| anyhow::anyhow!("{key}: {e}"))
    }
}

/// A secret's file (its first 4 KiB): one that only its owner, this
/// node's user or root, may read. `what` names the setting in messages.
/// One key set by its path in the environment or a flag.
#[derive(Debug, Clone)]
struct Override {
    /// `ISOFLOW__ETCD__LEASE_TTL` or `--set etcd.lease_ttl=5s`.
    source: String,
    path: Vec<String>,
    /// As written.
    raw: String,
    /// As TOML, or the text as a string when it is not a TOML value.
    value: toml::Value,
}

impl Override {
    fn new(source: String, path: Vec<String>, raw: &str) -> Override {
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        Override {
            source,
            path,
            raw: raw.to_owned(),
            value,
        }
    }

    fn error(&self, why: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{} ({} = {:?}): {why}",
            self.source,
            self.path.join("."),
            self.raw
        )
    }
}

/// The `ISOFLOW__<PATH>` variables, sorted by name so that the outcome does
/// not depend on the environment's order.
fn env_overrides(env: &HashMap<String, String>) -> anyhow::Result<Vec<Override>> {
    let mut overrides = Vec::new();
    for (name, value) in env {
        let Some(path) = name.strip_prefix("ISOFLOW__") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        if parts.iter().any(|p| !is_key(p)) {
            bail!(
                "{name}: a configuration path is ISOFLOW__ then keys in capitals joined by __ \
                 (ISOFLOW__ETCD__LEASE_TTL)"
            );
        }
        overrides.push(Override::new(name.clone(), parts, value));
    }
    overrides.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(overrides)
}

/// `--set etcd.lease_ttl=5s`.
fn flag_override(set: &str) -> anyhow::Result<Override> {
    let Some((path, value)) = set.split_once('=') else {
        bail!("--set {set:?}: write KEY=VALUE, e.g. --set etcd.lease_ttl=5s");
    };
    let parts: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
    if parts.iter().any(|p| !is_key(p)) {
        bail!("--set {set:?}: {path:?} is not a key path (etcd.lease_ttl)");
    }
    Ok(Override::new(format!("--set {path}"), parts, value))
}

fn is_key(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Sets `path` in `table`, making the tables on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("an empty path")?;
    let mut at = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = at
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a section", path[..=i].join(".")))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

fn read_private_file(what: &str, path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Opened once; the mode and owner checked are the open file's.
    let cannot = || format!("{what} {}: cannot read it", path.display());
    let file = std::fs::File::open(path).with_context(cannot)?;
    let meta = file.metadata().with_context(cannot)?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{what} {} may be read by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    // /proc/self belongs to this process's effective user.
    let me = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "{what} {} belongs to user {}, neither this node's user nor root",
            path.display(),
            meta.uid()
        );
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .with_context(cannot)?;
    Ok(text)
}

/// The SMTP server that alert emails go through (coordinator and all). On
/// when `host` is set; without it, an alert's `email` is not sent (each
/// such alert logs a warning).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    pub host: Option<String>,
    /// [default: 587 with starttls, 25 without]
    pub port: Option<u16>,
    /// The sender: `alerts@example.com` or `Isoflow <alerts@example.com>`.
    pub from: Option<String>,
    /// Upgrade the connection with STARTTLS and refuse a server that does
    /// not offer it. Off only for a relay on this machine.
    pub starttls: bool,
    /// Log in as this user, with the password in `password_file` (only its
    /// owner may read it) or `ISOFLOW_SMTP_PASSWORD`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The password, from `ISOFLOW_SMTP_PASSWORD` or read by `load` from
    /// `password_file`.
    #[serde(skip)]
    pub password: Option<Password>,
    /// The longest one message may take to send (connecting included).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            host: None,
            port: None,
            from: None,
            starttls: true,
            username: None,
            password_file: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Smtp {
    /// The port: set, or the usual one for the connection's kind.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.starttls { 587 } else { 25 })
    }

    /// Reads the password file, when there is one and no password from the
    /// environment.
    fn load_password(&mut self) -> anyhow::Result<()> {
        if self.password.is_some() {
            return Ok(());
        }
        if let Some(path) = &self.password_file {
            let text = read_private_file("smtp.password_file", path)?;
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                bail!("smtp.password_file {} is empty", path.display());
            }
            self.password = Some(Password(password.to_owned()));
        }
        Ok(())
    }

    fn check(&self, role: Role) -> anyhow::Result<()> {
        let Some(host) = &self.host else {
            if self.from.is_some()
                || self.username.is_some()
                || self.password_file.is_some()
                || self.password.is_some()
            {
                bail!("[smtp] is set without smtp.host: say which server sends alert emails");
            }
            return Ok(());
        };
        if role == Role::Worker {
            bail!("a worker sends no alerts: [smtp] belongs on the coordinator");
        }
        if host.is_empty() {
            bail!("smtp.host is empty");
        }
        if self.port == Some(0) {
            bail!("smtp.port is 0");
        }
        let Some(from) = &self.from else {
            bail!("smtp.host is set without smtp.from, the address alert emails come from");
        };
        if let Err(e) = from.parse::<lettre::message::Mailbox>() {
            bail!("smtp.from is {from:?}, not an email address: {e}");
        }
        let password = self.password.is_some() || self.password_file.is_some();
        match (&self.username, password) {
            (Some(_), false) => bail!(
                "smtp.username is set but there is no password: set smtp.password_file \
                 (or ISOFLOW_SMTP_PASSWORD)"
            ),
            (None, true) => bail!("an SMTP password is set without smtp.username"),
            _ => {}
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if self.username.is_some() && !self.starttls && !loopback {
            bail!(
                "smtp.username is set but smtp.starttls is false: the password would cross \
                 the network to {host} in clear"
            );
        }
        if self.timeout.is_zero() {
            bail!("smtp.timeout must be more than 0");
        }
        Ok(())
    }
}

impl Vault {
    /// The keyring; `None` without `vault.key`.
    pub fn keyring(&self, env: &HashMap<String, String>) -> anyhow::Result<Option<Keyring>> {
        let Some(current) = &self.key else {
            if !self.previous.is_empty() {
                bail!("vault.previous is set, but vault.key is not: new secrets need a key");
            }
            return Ok(None);
        };
        let mut keyring = Keyring::new(current.load("vault.key", env)?);
        for previous in &self.previous {
            keyring = keyring
                .with_previous(previous.load("vault.previous", env)?)
                .map_err(|e| anyhow::anyhow!("vault.previous: {e}"))?;
        }
        Ok(Some(keyring))
    }
}

/// `serve`'s flags: the last layer.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// A TOML configuration file
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// coordinator, worker or all [default: all]
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Where the gRPC server listens, e.g. 127.0.0.1:7700
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// etcd endpoints, comma-separated
    #[arg(long, value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    #[arg(long)]
    pub node_id: Option<String>,
    /// The run store's folder
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Any key of the configuration file by its path, e.g.
    /// `--set etcd.lease_ttl=5s` (repeatable; after the environment)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl Config {
    /// Builds the configuration from its layers; `env` is the process
    /// environment (only `ISOFLOW_*` variables are read).
    pub fn load(flags: &Flags, env: &HashMap<String, String>) -> anyhow::Result<Config> {
        let (mut config, table) = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => (Config::default(), toml::Table::new()),
        };
        // Paths: the environment's, then the flags', set in the file's
        // table; then the named shorthands.
        let mut paths = env_overrides(env)?;
        for set in &flags.set {
            paths.push(flag_override(set)?);
        }
        if !paths.is_empty() {
            config = config.with_overrides(table, &paths)?;
        }
        config.apply_env(env)?;
        if let Some(role) = flags.role {
            config.role = role;
        }
        if let Some(listen) = flags.listen {
            config.api.listen = listen;
        }
        if let Some(endpoints) = &flags.etcd {
            config.etcd.endpoints.clone_from(endpoints);
        }
        if let Some(id) = &flags.node_id {
            config.node_id = Some(id.clone());
        }
        if let Some(dir) = &flags.data_dir {
            config.data_dir = Some(dir.clone());
        }
        config.auth.admin_token = config.auth.read_admin_token(env)?;
        config.check()?;
        config.keyring = config.vault.keyring(env)?.map(Arc::new);
        config.smtp.load_password()?;
        if let Some(path) = &config.http.metrics_token_file {
            let token = read_private_file("http.metrics_token_file", path)?;
            let token = token.trim();
            if token.len() < 16 {
                bail!(
                    "http.metrics_token_file {}: the token is shorter than 16 characters",
                    path.display()
                );
            }
            config.http.metrics_token = Some(Password(token.to_owned()));
        }
        Ok(config)
    }

    /// This configuration read again from `table`, the file's (empty
    /// without a file), with `overrides` set in it, in order. An override
    /// that makes the configuration invalid is named in the error.
    fn with_overrides(
        self,
        mut table: toml::Table,
        overrides: &[Override],
    ) -> anyhow::Result<Config> {
        let mut config = self;
        for o in overrides {
            let mut typed = table.clone();
            set_path(&mut typed, &o.path, o.value.clone()).map_err(|why| o.error(&why))?;
            match Config::deserialize(typed.clone()) {
                Ok(c) => {
                    config = c;
                    table = typed;
                }
                // `node_id = 123` from `ISOFLOW__NODE_ID=123`: the text was
                // meant as a string.
                Err(typed_error) => {
                    let mut text = table.clone();
                    set_path(&mut text, &o.path, toml::Value::String(o.raw.clone()))
                        .map_err(|why| o.error(&why))?;
                    match Config::deserialize(text.clone()) {
                        Ok(c) if !matches!(o.value, toml::Value::String(_)) => {
                            config = c;
                            table = text;
                        }
                        _ => return Err(o.error(typed_error.message())),
                    }
                }
            }
        }
        Ok(config)
    }

    /// The file's configuration, and its table for the path overrides:
    /// the file is read once.
    fn from_file(path: &Path) -> anyhow::Result<(Config, toml::Table)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let in_file = |e: toml::de::Error| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(":{line}")
                })
                .unwrap_or_default();
            anyhow::anyhow!("{}{at}: {}", path.display(), e.message())
        };
        let config = toml::from_str(&text).map_err(in_file)?;
        let table = toml::from_str::<toml::Table>(&text).map_err(in_file)?;
        Ok((config, table))
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> anyhow::Result<()> {
        let get = |name: &str| env.get(name).filter(|v| !v.is_empty());
        if let Some(role) = get("ISOFLOW_ROLE") {
            self.role = match role.as_str() {
                "coordinator" => Role::Coordinator,
                "worker" => Role::Worker,
                "all" => Role::All,
                other => bail!("ISOFLOW_ROLE is {other:?}: it must be coordinator, worker or all"),
            };
        }
        if let Some(id) = get("ISOFLOW_NODE_ID") {
            self.node_id = Some(id.clone());
        }
        if let Some(dir) = get("ISOFLOW_DATA_DIR") {
            self.data_dir = Some(PathBuf::from(dir));
        }
        if let Some(listen) = get("ISOFLOW_LISTEN") {
            self.api.listen = listen
                .parse()
                .with_context(|| format!("ISOFLOW_LISTEN is {listen:?}: not host:port"))?;
        }
        if let Some(advertise) = get("ISOFLOW_ADVERTISE") {
            self.api.advertise = Some(advertise.clone());
        }
        if let Some(endpoints) = get("ISOFLOW_ETCD_ENDPOINTS") {
            self.etcd.endpoints = endpoints.split(',').map(str::to_owned).collect();
        }
        if let Some(token) = get("ISOFLOW_CLUSTER_TOKEN") {
            self.auth.cluster_token = Some(token.clone());
        }
        if let Some(tokens) = get("ISOFLOW_API_TOKENS") {
            // tenant=token,tenant=token
            for pair in tokens.split(',') {
                let Some((tenant, token)) = pair.split_once('=') else {
                    bail!("ISOFLOW_API_TOKENS must be tenant=token pairs separated by commas");
                };
                self.auth.tokens.push(ApiToken {
                    tenant: tenant.to_owned(),
                    token: token.to_owned(),
                });
            }
        }
        if let Some(id) = get("ISOFLOW_VAULT_KEY_ID") {
            self.vault.key = Some(VaultKey {
                id: id.clone(),
                file: None,
                env: Some("ISOFLOW_VAULT_KEY".to_owned()),
            });
        }
        if let Some(listen) = get("ISOFLOW_HTTP_LISTEN") {
            self.http.listen =
                Some(listen.parse().with_context(|| {
                    format!("ISOFLOW_HTTP_LISTEN is {listen:?}: not host:port")
                })?);
        }
        if let Some(coordinator) = get("ISOFLOW_COORDINATOR") {
            self.worker.coordinator = Some(coordinator.clone());
        }
        let path = |name: &str| get(name).map(PathBuf::from);
        for (name, value) in [
            ("ISOFLOW_TLS_CERT", &mut self.tls.cert),
            ("ISOFLOW_TLS_KEY", &mut self.tls.key),
            ("ISOFLOW_TLS_CLIENT_CA", &mut self.tls.client_ca),
            ("ISOFLOW_WORKER_TLS_CA", &mut self.worker.tls.ca),
            ("ISOFLOW_WORKER_TLS_CERT", &mut self.worker.tls.cert),
            ("ISOFLOW_WORKER_TLS_KEY", &mut self.worker.tls.key),
            ("ISOFLOW_ETCD_CA", &mut self.etcd.ca),
            ("ISOFLOW_ETCD_CERT", &mut self.etcd.cert),
            ("ISOFLOW_ETCD_KEY", &mut self.etcd.key),
            ("ISOFLOW_ETCD_PASSWORD_FILE", &mut self.etcd.password_file),
        ] {
            if let Some(path) = path(name) {
                *value = Some(path);
            }
        }
        if let Some(name) = get("ISOFLOW_WORKER_TLS_SERVER_NAME") {
            self.worker.tls.server_name = Some(name.clone());
        }
        if let Some(user) = get("ISOFLOW_ETCD_USER") {
            self.etcd.user = Some(user.clone());
        }
        if let Some(password) = get("ISOFLOW_ETCD_PASSWORD") {
            self.etcd.password = Some(Password(password.clone()));
        }
        if let Some(capacity) = get("ISOFLOW_WORKER_CAPACITY") {
            self.worker.capacity = capacity.parse().with_context(|| {
                format!("ISOFLOW_WORKER_CAPACITY is {capacity:?}: not a whole number")
            })?;
        }
        if let Some(host) = get("ISOFLOW_SMTP_HOST") {
            self.smtp.host = Some(host.clone());
        }
        if let Some(port) = get("ISOFLOW_SMTP_PORT") {
            self.smtp.port = Some(
                port.parse()
                    .with_context(|| format!("ISOFLOW_SMTP_PORT is {port:?}: not a port"))?,
            );
        }
        if let Some(from) = get("ISOFLOW_SMTP_FROM") {
            self.smtp.from = Some(from.clone());
        }
        if let Some(username) = get("ISOFLOW_SMTP_USERNAME") {
            self.smtp.username = Some(username.clone());
        }
        if let Some(path) = get("ISOFLOW_SMTP_PASSWORD_FILE") {
            self.smtp.password_file = Some(PathBuf::from(path));
        }
        if let Some(password) = get("ISOFLOW_SMTP_PASSWORD") {
            self.smtp.password = Some(Password(password.clone()));
        }
        if let Some(endpoint) = get("ISOFLOW_OTLP_ENDPOINT") {
            self.telemetry.otlp_endpoint = Some(endpoint.clone());
        }
        if let Some(ratio) = get("ISOFLOW_TRACE_SAMPLING_RATIO") {
            self.telemetry.sampling_ratio = ratio.parse().with_context(|| {
                format!("ISOFLOW_TRACE_SAMPLING_RATIO is {ratio:?}: not a number from 0 to 1")
            })?;
        }
        if let Some(name) = get("ISOFLOW_SERVICE_NAME") {
            self.telemetry.service_name = name.clone();
        }
        if let Some(pairs) = get("ISOFLOW_RESOURCE_ATTRIBUTES") {
            // key=value,key=value, as OTEL_RESOURCE_ATTRIBUTES
            for pair in pairs.split(',') {
                let Some((key, value)) = pair.split_once('=') else {
                    bail!(
                        "ISOFLOW_RESOURCE_ATTRIBUTES must be key=value pairs separated by commas"
                    );
                };
                self.telemetry
                    .resource
                    .insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
        if let Some(interval) = get("ISOFLOW_TRACE_EXPORT_INTERVAL") {
            self.telemetry.export_interval =
                humantime::parse_duration(interval).with_context(|| {
                    format!("ISOFLOW_TRACE_EXPORT_INTERVAL is {interval:?}: not a duration like 2s")
                })?;
        }
        if let Some(format) = get("ISOFLOW_LOG_FORMAT") {
            self.log.format = match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("ISOFLOW_LOG_FORMAT is {other:?}: it must be text or json"),
            };
        }
        if let Some(path) = get("ISOFLOW_METRICS_TOKEN_FILE") {
            self.http.metrics_token_file = Some(PathBuf::from(path));
        }
        if let Some(limit) = get("ISOFLOW_TENANT_RUNS_IN_FLIGHT") {
            self.cluster.tenant_runs_in_flight = limit.parse().with_context(|| {
                format!("ISOFLOW_TENANT_RUNS_IN_FLIGHT is {limit:?}: not a whole number")
            })?;
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.worker.capacity == 0 {
            bail!("worker.capacity is 0: a node must take at least one run at a time");
        }
        if [
            self.sandbox.concurrency,
            self.sandbox.processes,
            self.sandbox.tenant_concurrency,
        ]
        .contains(&Some(0))
        {
            bail!(
                "sandbox.concurrency, sandbox.tenant_concurrency and sandbox.processes must be at least 1"
            );
        }
        if self.sandbox.uid == 0 || self.sandbox.gid == 0 {
            bail!("sandbox.uid and sandbox.gid must not be 0: customer code never runs as root");
        }
        self.egress.policy()?;
        self.check_telemetry()?;
        if let Some(url) = &self.http.public_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("http.public_url {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.query().is_some()
                || parsed.fragment().is_some()
            {
                bail!(
                    "http.public_url {url:?} must be an http or https URL without query or fragment, like https://isoflow.example.com"
                );
            }
        }
        if self.limits.step_timeout.is_zero()
            || self.limits.step_timeout > isoflow_engine::model::LONGEST_DURATION
        {
            bail!("limits.step_timeout must be more than 0 and at most 24h");
        }
        let heap = self.limits.step_heap;
        if heap < model::SMALLEST_HEAP || heap > model::LARGEST_HEAP {
            bail!(
                "limits.step_heap is {heap}, must be at least {} and at most {}",
                model::SMALLEST_HEAP,
                model::LARGEST_HEAP
            );
        }
        if !self.credentials.is_empty() {
            bail!(
                "[[credentials]] is read by the local `isoflow run` only: a node keeps credentials \
                 sealed in its vault; set them with `isoflowctl credentials set` (vault.key must be configured)"
            );
        }
        if self.role == Role::Worker
            && (self.vault.key.is_some() || !self.vault.previous.is_empty())
        {
            bail!("a worker has no vault: vault keys belong on the coordinator only");
        }
        if self.cluster.heartbeat_timeout <= self.cluster.heartbeat_interval {
            bail!("cluster.heartbeat_timeout must be longer than cluster.heartbeat_interval");
        }
        if self.role != Role::All {
            if self.auth.cluster_token.as_deref().is_none_or(str::is_empty) {
                bail!(
                    "a {} needs auth.cluster_token (or ISOFLOW_CLUSTER_TOKEN): every call between nodes is authenticated",
                    self.role_name()
                );
            }
            if self.etcd.endpoints.is_empty() && self.worker.coordinator.is_none() {
                bail!("etcd.endpoints is empty: a cluster node needs etcd");
            }
        }
        if let Some(admin) = &self.auth.admin_token {
            if admin.0.len() < 16 {
                bail!("the admin token is shorter than 16 characters");
            }
            if self.auth.tokens.iter().any(|t| t.token == admin.0)
                || self.auth.cluster_token.as_deref() == Some(admin.0.as_str())
            {
                bail!("the admin token is also an API or cluster token: give it its own");
            }
        }
        if self.retention.sweep_interval.is_zero() {
            bail!("retention.sweep_interval must be more than 0");
        }
        if self.role == Role::Coordinator
            && self.auth.tokens.is_empty()
            && self.auth.admin_token.is_none()
        {
            bail!(
                "a coordinator needs at least one API token (auth.tokens or ISOFLOW_API_TOKENS) or an admin token to issue them (auth.admin_token_file): every API call in a cluster is authenticated"
            );
        }
        let mut tenant_of = HashMap::new();
        for token in &self.auth.tokens {
            if token.token.len() < 16 {
                bail!(
                    "the API token of tenant {:?} is shorter than 16 characters",
                    token.tenant
                );
            }
            if let Some(other) = tenant_of.insert(token.token.as_str(), token.tenant.as_str()) {
                bail!(
                    "tenants {other:?} and {:?} have the same API token: each caller must be one tenant",
                    token.tenant
                );
            }
        }
        if self
            .auth
            .cluster_token
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t.len() < 16)
        {
            bail!("auth.cluster_token is shorter than 16 characters");
        }
        self.check_tls()?;
        self.check_etcd()?;
        self.smtp.check(self.role)?;
        if self.role == Role::All
            && self.auth.tokens.is_empty()
            && self.auth.admin_token.is_none()
            && !self.api.listen.ip().is_loopback()
        {
            bail!(
                "api.listen is {}, but with no API tokens (auth.tokens) an all node serves anyone \
                 who reaches it as tenant \"local\": listen on loopback, or set tokens",
                self.api.listen
            );
        }
        Ok(())
    }

    /// No setting that would leave a connection open that looks closed.
    fn check_tls(&self) -> anyhow::Result<()> {
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            bail!("tls.cert and tls.key go together: set both, or neither");
        }
        if tls.client_ca.is_some() && !tls.enabled() {
            bail!(
                "tls.client_ca is set without tls.cert and tls.key: the listener would not use TLS"
            );
        }
        if self.role == Role::Coordinator && tls.enabled() && tls.client_ca.is_none() {
            bail!(
                "a coordinator with [tls] needs tls.client_ca, the CA that signs workers' \
                 certificates: without it, the workers' API would take any worker that has \
                 the cluster token"
            );
        }
        if self.role == Role::Coordinator {
            match self.api.advertise.as_deref() {
                Some(address) if tls.enabled() && address.starts_with("http://") => bail!(
                    "api.advertise is {address}, but the API uses TLS: advertise an https:// address"
                ),
                Some(address) if !tls.enabled() && address.starts_with("https://") => bail!(
                    "api.advertise is {address}, but [tls] is not set: the API does not use TLS"
                ),
                _ => {}
            }
        }
        let worker = &self.worker.tls;
        let any = worker.ca.is_some()
            || worker.cert.is_some()
            || worker.key.is_some()
            || worker.server_name.is_some();
        if worker.cert.is_some() != worker.key.is_some() {
            bail!("worker.tls.cert and worker.tls.key go together: set both, or neither");
        }
        if any && !worker.enabled() {
            bail!("[worker.tls] needs ca, the CA that signs the coordinator's certificate");
        }
        if worker.enabled() && worker.cert.is_none() {
            bail!(
                "worker.tls.ca is set without worker.tls.cert and worker.tls.key: a coordinator \
                 with TLS takes only workers that present a certificate"
            );
        }
        if let Some(address) = &self.worker.coordinator {
            if worker.enabled() && address.starts_with("http://") {
                bail!(
                    "worker.coordinator is {address}, but [worker.tls] is set: \
                     give the coordinator's https:// address"
                );
            }
            if !worker.enabled() && address.starts_with("https://") {
                bail!(
                    "worker.coordinator is {address}, which uses TLS: set [worker.tls] \
                     (ca, cert and key)"
                );
            }
        }
        Ok(())
    }

    fn check_telemetry(&self) -> anyhow::Result<()> {
        let telemetry = &self.telemetry;
        if !(0.0..=1.0).contains(&telemetry.sampling_ratio) {
            bail!(
                "telemetry.sampling_ratio is {}: it must be from 0 (no new trace) to 1 (every one)",
                telemetry.sampling_ratio
            );
        }
        if telemetry.export_interval.is_zero() {
            bail!("telemetry.export_interval must be more than 0");
        }
        if telemetry.service_name.trim().is_empty() {
            bail!("telemetry.service_name is empty");
        }
        if let Some(endpoint) = &telemetry.otlp_endpoint {
            let parsed = reqwest::Url::parse(endpoint).ok();
            if !parsed
                .as_ref()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            {
                bail!(
                    "telemetry.otlp_endpoint {endpoint:?} is not an http:// or https:// URL of an \
                     OTLP/gRPC collector, like http://127.0.0.1:4317"
                );
            }
        }
        for key in telemetry.resource.keys() {
            if key.is_empty()
                || ["service.name", "service.instance.id", "isoflow.role"].contains(&key.as_str())
            {
                bail!(
                    "telemetry.resource has {key:?}: set service.name with telemetry.service_name; \
                     service.instance.id and isoflow.role are the node's own"
                );
            }
        }
        Ok(())
    }

    fn check_etcd(&self) -> anyhow::Result<()> {
        let etcd = &self.etcd;
        if etcd.cert.is_some() != etcd.key.is_some() {
            bail!("etcd.cert and etcd.key go together: set both, or neither");
        }
        if etcd.cert.is_some() && !etcd.tls() {
            bail!("etcd.cert is set without etcd.ca: a client certificate needs TLS");
        }
        for endpoint in &etcd.endpoints {
            if etcd.tls() && endpoint.starts_with("http://") {
                bail!(
                    "etcd.ca is set, but the etcd endpoint {endpoint} is not https://: \
                     the connection would not use TLS"
                );
            }
            if !etcd.tls() && endpoint.starts_with("https://") {
                bail!(
                    "the etcd endpoint {endpoint} uses TLS: set etcd.ca, the CA that signs \
                     etcd's certificate"
                );
            }
        }
        let password = etcd.password.is_some() || etcd.password_file.is_some();
        match (&etcd.user, password) {
            (Some(user), false) => bail!(
                "etcd.user is {user:?} but there is no password: set etcd.password_file \
                 (or ISOFLOW_ETCD_PASSWORD)"
            ),
            (None, true) => bail!("an etcd password is set without etcd.user"),
            (Some(user), true) if user.is_empty() => bail!("etcd.user is empty"),
            _ => {}
        }
        Ok(())
    }

    pub fn role_name(&self) -> &'static str {
        match self.role {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::All => "all-in-one node",
        }
    }

    /// The role's one word: `coordinator`, `worker` or `all`.
    pub fn role_name_short(&self) -> &'static str {
        match self.role {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::All => "all",
        }
    }

    /// This node's id: configured, or host name and process id.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "node".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// How other nodes reach this one.
    pub fn advertise(&self) -> String {
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        self.api
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.api.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("isoflow.toml");
        std::fs::write(
            &file,
            "role = \"worker\"\nnode_id = \"from-file\"\n[auth]\ncluster_token = \"file-cluster-token-0123\"\n[worker]\ncapacity = 4\n[cluster]\nheartbeat_interval = \"250ms\"\ntenant_runs_in_flight = 3\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(file),
            node_id: Some("from-flag".into()),
            ..Flags::default()
        };
        let config = Config::load(
            &flags,
            &env(&[
                ("ISOFLOW_WORKER_CAPACITY", "8"),
                ("ISOFLOW_NODE_ID", "from-env"),
                ("ISOFLOW_TENANT_RUNS_IN_FLIGHT", "5"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            config.cluster.tenant_runs_in_flight, 5,
            "env beats the file"
        );
        let from_file = Config::load(
            &Flags {
                config: flags.config.clone(),
                ..Flags::default()
            },
            &HashMap::new(),
        )
        .expect("valid");
        assert_eq!(from_file.cluster.tenant_runs_in_flight, 3);
        assert_eq!(
            Config::default().cluster.tenant_runs_in_flight,
            0,
            "no limit"
        );
        assert_eq!(config.role, Role::Worker);
        assert_eq!(config.worker.capacity, 8, "env beats the file");
        assert_eq!(
            config.node_id.as_deref(),
            Some("from-flag"),
            "flags beat env"
        );
        assert_eq!(
            config.cluster.heartbeat_interval,
            Duration::from_millis(250)
        );
        assert_eq!(
            config.auth.cluster_token.as_deref(),
            Some("file-cluster-token-0123")
        );
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/isoflow.example.toml"
        );
        let flags = Flags {
            config: Some(PathBuf::from(example)),
            ..Flags::default()
        };
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let config = Config::load(
            &flags,
            &env(&[
                ("ISOFLOW_VAULT_KEY", key),
                ("ISOFLOW_VAULT_KEY_2026_05", key),
                ("ISOFLOW_SMTP_PASSWORD", "from-the-environment"),
            ]),
        )
        .expect("the example loads");
        assert_eq!(
            (
                config.smtp.host.as_deref(),
                config.smtp.port(),
                config.smtp.starttls
            ),
            (Some("smtp.example.com"), 587, true)
        );
        assert_eq!(
            config.smtp.password,
            Some(Password("from-the-environment".into())),
            "the variable beats the file"
        );
        assert_eq!(config.role, Role::Coordinator);
        assert_eq!(config.etcd.lease_ttl, Duration::from_secs(3));
        let keyring = config
            .keyring
            .as_ref()
            .expect("the example has a vault key");
        assert_eq!(keyring.current_id(), "2026-11");
        assert_eq!(config.cluster.tenant_runs_in_flight, 12);
        assert_eq!(
            config.http.oauth_callback().as_deref(),
            Some("https://isoflow.example.com/oauth/callback")
        );
        assert_eq!(
            config.retention.keep,
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(config.retention.sweep_interval, Duration::from_secs(3600));
        assert_eq!(config.advertise(), "https://10.0.0.5:7700");
        assert_eq!(
            config.tls.client_ca.as_deref(),
            Some(Path::new("/etc/isoflow/ca.pem"))
        );
        assert_eq!(
            config.worker.tls.server_name.as_deref(),
            Some("coordinator.isoflow.internal")
        );
        assert_eq!(
            (config.etcd.user.as_deref(), config.etcd.tls()),
            (Some("isoflow"), true)
        );
        let sandbox = config.sandbox.engine_config();
        assert_eq!(
            (sandbox.concurrency, sandbox.processes, sandbox.spare),
            (4, 16, 2)
        );
        assert_eq!(sandbox.tenant_concurrency, Some(3));
        assert_eq!((sandbox.lockdown.uid, sandbox.lockdown.gid), (65534, 65534));
        assert_eq!(sandbox.memory_margin, 64 << 20);
        assert_eq!(sandbox.program.args, ["sandbox-process"]);
        let egress = config.egress.policy().expect("the example's egress policy");
        assert_eq!(
            egress,
            EgressPolicy::public_only().allow_tenant(
                "acme",
                [
                    "10.20.0.0/16".parse().expect("a network"),
                    "erp.acme.internal".parse().expect("a host"),
                ]
            )
        );
    }

    #[test]
    fn any_key_is_settable_by_its_path_from_the_environment_and_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("isoflow.toml");
        std::fs::write(
            &file,
            "role = \"worker\"\n[auth]\ncluster_token = \"file-cluster-token-0123\"\n\
             [etcd]\nprefix = \"/from-file\"\nlease_ttl = \"3s\"\n\
             [cluster]\nheartbeat_interval = \"250ms\"\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(file.clone()),
            set: vec![
                "etcd.lease_ttl=9s".into(),
                "worker.capacity=7".into(),
                "egress.allow=[\"10.1.2.3\", \"erp.internal\"]".into(),
            ],
            ..Flags::default()
        };
        let config = Config::load(
            &flags,
            &env(&[
                // Nested keys, a top-level key, a number meant as text.
                ("ISOFLOW__ETCD__LEASE_TTL", "5s"),
                ("ISOFLOW__ETCD__PREFIX", "/from-env"),
                ("ISOFLOW__CLUSTER__HEARTBEAT_TIMEOUT", "4s"),
                ("ISOFLOW__MAX_PAYLOAD_BYTES", "1048576"),
                ("ISOFLOW__NODE_ID", "1234"),
                ("ISOFLOW_WORKER_CAPACITY", "9"),
            ]),
        )
        .expect("loads");
        // The file's keys stay unless a later layer sets them; a flag
        // beats the environment; a named shorthand comes last.
        assert_eq!(config.role, Role::Worker);
        assert_eq!(config.etcd.prefix, "/from-env");
        assert_eq!(config.etcd.lease_ttl, Duration::from_secs(9));
        assert_eq!(
            config.cluster.heartbeat_interval,
            Duration::from_millis(250)
        );
        assert_eq!(config.cluster.heartbeat_timeout, Duration::from_secs(4));
        assert_eq!(config.max_payload_bytes, 1_048_576);
        assert_eq!(config.node_id.as_deref(), Some("1234"));
        assert_eq!(config.worker.capacity, 9);
        assert_eq!(config.egress.allow, ["10.1.2.3", "erp.internal"]);

        // Each mistake names its variable or flag, the key and the value.
        let error = |flags: &Flags, pairs: &[(&str, &str)]| {
            Config::load(flags, &env(pairs))
                .expect_err("refused")
                .to_string()
        };
        let plain = Flags {
            config: Some(file),
            ..Flags::default()
        };
        let e = error(&plain, &[("ISOFLOW__ETCD__LEASE_TTL", "soon")]);
        assert!(
            e.starts_with("ISOFLOW__ETCD__LEASE_TTL (etcd.lease_ttl = \"soon\"): "),
            "{e}"
        );
        let e = error(&plain, &[("ISOFLOW__ETCD__LEASE_TIME", "5s")]);
        assert!(
            e.contains("ISOFLOW__ETCD__LEASE_TIME") && e.contains("lease_time"),
            "{e}"
        );
        let e = error(&plain, &[("ISOFLOW__ETCD__", "5s")]);
        assert!(e.contains("ISOFLOW__ETCD__LEASE_TTL"), "{e}");
        let e = error(&plain, &[("ISOFLOW__ROLE__X", "1")]);
        assert!(e.contains("role is not a section"), "{e}");
        let bad_flag = Flags {
            set: vec!["worker.capacity".into()],
            ..Flags::default()
        };
        assert!(error(&bad_flag, &[]).contains("KEY=VALUE"));
        let bad_flag = Flags {
            set: vec!["worker.capacity=lots".into()],
            ..Flags::default()
        };
        let e = error(&bad_flag, &[]);
        assert!(
            e.starts_with("--set worker.capacity (worker.capacity = \"lots\"): "),
            "{e}"
        );
    }

    /// The configuration a file with `text` gives.
    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("isoflow.toml");
        std::fs::write(&file, text).expect("write");
        let flags = Flags {
            config: Some(file),
            ..Flags::default()
        };
        Config::load(&flags, &HashMap::new())
    }

    #[test]
    fn credentials_in_a_node_configuration_and_loose_vault_keys_are_refused() {
        let error =
            load_text("[[credentials]]\ntenant = \"acme\"\nname = \"erp\"\ntoken = \"t\"\n")
                .expect_err("a node keeps credentials in its vault")
                .to_string();
        assert!(error.contains("isoflowctl credentials set"), "{error}");

        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("vault.key");
        std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").expect("write");
        let with_key = format!("[vault.key]\nid = \"k1\"\nfile = \"{}\"\n", key.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = load_text(&with_key)
            .expect_err("others may read it")
            .to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = load_text(&with_key).expect("an owner-only key loads");
        assert_eq!(config.keyring.expect("a keyring").current_id(), "k1");

        std::fs::write(&key, "c2hvcnQ=").expect("write");
        let error = load_text(&with_key).expect_err("8 bytes").to_string();
        assert!(error.contains("a key is 32 bytes"), "{error}");
        let error = load_text("[vault.key]\nid = \"k1\"\nenv = \"ISOFLOW_NOT_SET\"\n")
            .expect_err("unset")
            .to_string();
        assert!(
            error.contains("ISOFLOW_NOT_SET, which is not set"),
            "{error}"
        );
        let error = load_text(&format!(
            "role = \"worker\"\n[auth]\ncluster_token = \"cluster-token-0123456789\"\n\
             [etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n{with_key}"
        ))
        .expect_err("a worker has no vault")
        .to_string();
        assert!(error.contains("a worker has no vault"), "{error}");
    }

    #[test]
    fn an_egress_allowance_that_is_not_one_is_refused_naming_it() {
        let error =
            load_text("[[egress.tenants]]\ntenant = \"acme\"\nallow = [\"http://10.0.0.1/\"]\n")
                .expect_err("a URL is not an allowance")
                .to_string();
        assert_eq!(
            error,
            "egress.tenants (tenant \"acme\").allow: \"http://10.0.0.1/\" is neither a network \
             (10.1.0.0/16), an address (with or without a port) nor a host name"
        );
    }

    #[test]
    fn who_may_call_is_never_ambiguous_or_open() {
        let error = |text: &str| load_text(text).expect_err(text).to_string();
        assert_eq!(
            error(
                "[[auth.tokens]]\ntenant = \"a\"\ntoken = \"0123456789abcdef\"\n\
                 [[auth.tokens]]\ntenant = \"b\"\ntoken = \"0123456789abcdef\"\n"
            ),
            "tenants \"a\" and \"b\" have the same API token: each caller must be one tenant"
        );
        assert_eq!(
            error("[auth]\ncluster_token = \"short\"\n"),
            "auth.cluster_token is shorter than 16 characters"
        );
        assert_eq!(
            error("[api]\nlisten = \"0.0.0.0:7700\"\n"),
            "api.listen is 0.0.0.0:7700, but with no API tokens (auth.tokens) an all node serves \
             anyone who reaches it as tenant \"local\": listen on loopback, or set tokens"
        );
        // Loopback without tokens, or any address with them, is fine.
        load_text("[api]\nlisten = \"127.0.0.1:7700\"\n").expect("loopback");
        load_text(
            "[api]\nlisten = \"0.0.0.0:7700\"\n[[auth.tokens]]\ntenant = \"a\"\n\
             token = \"0123456789abcdef\"\n",
        )
        .expect("with tokens");
    }

    #[test]
    fn an_smtp_server_is_checked_and_its_password_read_like_other_secrets() {
        let error = |text: &str| load_text(text).expect_err(text).to_string();
        let smtp = "[smtp]\nhost = \"smtp.example.com\"\n";
        assert_eq!(
            error(smtp),
            "smtp.host is set without smtp.from, the address alert emails come from"
        );
        assert!(
            error(&format!("{smtp}from = \"not an address\"\n"))
                .starts_with("smtp.from is \"not an address\", not an email address"),
        );
        assert_eq!(
            error("[smtp]\nfrom = \"a@example.com\"\n"),
            "[smtp] is set without smtp.host: say which server sends alert emails"
        );
        let from = format!("{smtp}from = \"Isoflow <a@example.com>\"\n");
        assert_eq!(
            error(&format!("{from}username = \"u\"\n")),
            "smtp.username is set but there is no password: set smtp.password_file \
             (or ISOFLOW_SMTP_PASSWORD)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let password = dir.path().join("smtp-password");
        std::fs::write(&password, "s3cret\n").expect("write");
        let with_password = format!(
            "{from}username = \"u\"\npassword_file = \"{}\"\n",
            password.display()
        );
        assert_eq!(
            error(&format!("{with_password}starttls = false\n")),
            "smtp.username is set but smtp.starttls is false: the password would cross the \
             network to smtp.example.com in clear"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            error(&with_password),
            format!(
                "smtp.password_file {} may be read by others (mode 644): chmod 600 it",
                password.display()
            )
        );
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = load_text(&with_password).expect("an owner-only password file");
        assert_eq!(config.smtp.password, Some(Password("s3cret".into())));
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "no secret in debug output"
        );
        // A relay on this machine may go without TLS; a worker sends no mail.
        let local =
            load_text("[smtp]\nhost = \"127.0.0.1\"\nfrom = \"a@example.com\"\nstarttls = false\n")
                .expect("a local relay");
        assert_eq!(local.smtp.port(), 25);
        assert_eq!(
            error(&format!(
                "role = \"worker\"\n[auth]\ncluster_token = \"cluster-token-0123456789\"\n{from}"
            )),
            "a worker sends no alerts: [smtp] belongs on the coordinator"
        );
    }

    #[test]
    fn insecure_transport_settings_are_refused_in_one_sentence() {
        let error = |text: &str| load_text(text).expect_err(text).to_string();
        let coordinator = "role = \"coordinator\"\n[auth]\ncluster_token = \"cluster-token-0123456789\"\n\
                           [[auth.tokens]]\ntenant = \"a\"\ntoken = \"0123456789abcdef\"\n";
        assert_eq!(
            error(&format!(
                "{coordinator}[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
            )),
            "a coordinator with [tls] needs tls.client_ca, the CA that signs workers' \
             certificates: without it, the workers' API would take any worker that has the \
             cluster token"
        );
        let with_tls = load_text(&format!(
            "{coordinator}[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n"
        ))
        .expect("TLS with a client CA");
        assert_eq!(with_tls.advertise(), "https://127.0.0.1:7700");
        assert_eq!(
            error(&format!(
                "{coordinator}[api]\nadvertise = \"http://10.0.0.5:7700\"\n\
                 [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n"
            )),
            "api.advertise is http://10.0.0.5:7700, but the API uses TLS: advertise an https:// address"
        );
        // Without [tls] a coordinator still serves, over plain HTTP.
        assert_eq!(
            load_text(coordinator).expect("plain").advertise(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(
            error("[tls]\ncert = \"c.pem\"\n"),
            "tls.cert and tls.key go together: set both, or neither"
        );
        assert_eq!(
            error("[tls]\nclient_ca = \"ca.pem\"\n"),
            "tls.client_ca is set without tls.cert and tls.key: the listener would not use TLS"
        );
        load_text("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n")
            .expect("an all node needs no client CA");

        let worker = "role = \"worker\"\n[auth]\ncluster_token = \"cluster-token-0123456789\"\n";
        assert_eq!(
            error(&format!("{worker}[worker.tls]\nca = \"ca.pem\"\n")),
            "worker.tls.ca is set without worker.tls.cert and worker.tls.key: a coordinator \
             with TLS takes only workers that present a certificate"
        );
        assert_eq!(
            error(&format!(
                "{worker}[worker.tls]\ncert = \"w.pem\"\nkey = \"k.pem\"\n"
            )),
            "[worker.tls] needs ca, the CA that signs the coordinator's certificate"
        );
        let tls = "[worker.tls]\nca = \"ca.pem\"\ncert = \"w.pem\"\nkey = \"k.pem\"\n";
        assert_eq!(
            error(&format!(
                "{worker}[worker]\ncoordinator = \"http://10.0.0.5:7700\"\n{tls}"
            )),
            "worker.coordinator is http://10.0.0.5:7700, but [worker.tls] is set: give the \
             coordinator's https:// address"
        );
        assert_eq!(
            error(&format!(
                "{worker}[worker]\ncoordinator = \"https://10.0.0.5:7700\"\n"
            )),
            "worker.coordinator is https://10.0.0.5:7700, which uses TLS: set [worker.tls] \
             (ca, cert and key)"
        );
        load_text(&format!(
            "{worker}[worker]\ncoordinator = \"https://10.0.0.5:7700\"\n{tls}"
        ))
        .expect("mutual TLS to a fixed coordinator");

        assert_eq!(
            error("[etcd]\nendpoints = [\"https://10.0.0.9:2379\"]\n"),
            "the etcd endpoint https://10.0.0.9:2379 uses TLS: set etcd.ca, the CA that signs \
             etcd's certificate"
        );
        assert_eq!(
            error("[etcd]\nca = \"ca.pem\"\n"),
            "etcd.ca is set, but the etcd endpoint http://127.0.0.1:2379 is not https://: the \
             connection would not use TLS"
        );
        assert_eq!(
            error("[etcd]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
            "etcd.cert is set without etcd.ca: a client certificate needs TLS"
        );
        assert_eq!(
            error("[etcd]\nuser = \"isoflow\"\n"),
            "etcd.user is \"isoflow\" but there is no password: set etcd.password_file \
             (or ISOFLOW_ETCD_PASSWORD)"
        );
        assert_eq!(
            error("[etcd]\npassword_file = \"p\"\n"),
            "an etcd password is set without etcd.user"
        );
    }

    #[test]
    fn the_etcd_password_comes_from_the_environment_or_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("password");
        std::fs::write(&file, "from-the-file\n").expect("write");
        let config = dir.path().join("isoflow.toml");
        std::fs::write(
            &config,
            format!(
                "[etcd]\nuser = \"isoflow\"\npassword_file = \"{}\"\n",
                file.display()
            ),
        )
        .expect("write");
        let flags = Flags {
            config: Some(config),
            ..Flags::default()
        };
        let from_file = Config::load(&flags, &HashMap::new()).expect("valid");
        let (user, password) = from_file
            .etcd
            .credentials()
            .expect("readable")
            .expect("a user");
        assert_eq!(
            (user.as_str(), password.0.as_str()),
            ("isoflow", "from-the-file")
        );
        assert!(
            !format!("{from_file:?}").contains("from-the"),
            "no secret in debug output"
        );

        let from_env = Config::load(
            &flags,
            &env(&[
                ("ISOFLOW_ETCD_USER", "other"),
                ("ISOFLOW_ETCD_PASSWORD", "from-the-env"),
            ]),
        )
        .expect("valid");
        let (user, password) = from_env
            .etcd
            .credentials()
            .expect("readable")
            .expect("a user");
        assert_eq!(
            (user.as_str(), password.0.as_str()),
            ("other", "from-the-env")
        );

        std::fs::write(&file, "\n").expect("write");
        let error = from_file.etcd.credentials().expect_err("empty").to_string();
        assert_eq!(
            error,
            format!("etcd.password_file {} is empty", file.display())
        );
    }

    #[test]
    fn the_admin_token_comes_from_its_file_or_the_environment_and_is_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "admin-token-0123456789\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = format!("[auth]\nadmin_token_file = \"{}\"\n", file.display());
        let error = load_text(&text)
            .expect_err("others may read it")
            .to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = load_text(&text).expect("valid");
        assert_eq!(
            config.auth.admin_token,
            Some(Password("admin-token-0123456789".into()))
        );
        // With an admin token, a coordinator needs no API token in its file,
        // and an all node may listen beyond loopback: every call needs a
        // token.
        load_text(&format!(
            "role = \"coordinator\"\n[api]\nlisten = \"0.0.0.0:7700\"\n{text}cluster_token = \"cluster-token-0123456789\"\n"
        ))
        .expect("a coordinator with an admin token");
        let error = load_text(&format!(
            "{text}[[auth.tokens]]\ntenant = \"a\"\ntoken = \"admin-token-0123456789\"\n"
        ))
        .expect_err("the same token")
        .to_string();
        assert_eq!(
            error,
            "the admin token is also an API or cluster token: give it its own"
        );
        let from_env = Config::load(&Flags::default(), &env(&[("ISOFLOW_ADMIN_TOKEN", "short")]))
            .expect_err("short")
            .to_string();
        assert_eq!(from_env, "the admin token is shorter than 16 characters");
        let error = load_text("[retention]\nkeep = \"forever\"\n")
            .expect_err("not a duration")
            .to_string();
        assert!(error.contains("isoflow.toml:2"), "{error}");
    }

    #[test]
    fn telemetry_keys_layer_and_bad_values_name_their_key() {
        let config = load_text(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.25\n\
             [telemetry.resource]\nregion = \"eu\"\n[log]\nformat = \"json\"\n",
        )
        .expect("loads");
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert!((config.telemetry.sampling_ratio - 0.25).abs() < f64::EPSILON);
        assert_eq!(config.telemetry.service_name, "isoflow");
        assert_eq!(config.log.format, LogFormat::Json);
        let from_env = Config::load(
            &Flags::default(),
            &env(&[
                ("ISOFLOW_OTLP_ENDPOINT", "https://collector.example:4317"),
                ("ISOFLOW_TRACE_SAMPLING_RATIO", "0.5"),
                ("ISOFLOW_SERVICE_NAME", "isoflow-eu"),
                (
                    "ISOFLOW_RESOURCE_ATTRIBUTES",
                    "region=eu, team=integrations",
                ),
                ("ISOFLOW_LOG_FORMAT", "json"),
                ("ISOFLOW_TRACE_EXPORT_INTERVAL", "500ms"),
            ]),
        )
        .expect("loads");
        assert_eq!(from_env.telemetry.service_name, "isoflow-eu");
        assert_eq!(from_env.telemetry.resource["team"], "integrations");
        assert_eq!(
            from_env.telemetry.export_interval,
            Duration::from_millis(500)
        );
        assert_eq!(from_env.log.format, LogFormat::Json);
        for (text, says) in [
            (
                "[telemetry]\nsampling_ratio = 1.5\n",
                "telemetry.sampling_ratio is 1.5",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4317\"\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "[telemetry.resource]\n\"service.name\" = \"x\"\n",
                "telemetry.resource",
            ),
            ("[log]\nformat = \"xml\"\n", "unknown variant"),
        ] {
            let error = load_text(text).expect_err(text).to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
        let error = Config::load(&Flags::default(), &env(&[("ISOFLOW_LOG_FORMAT", "xml")]))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("ISOFLOW_LOG_FORMAT"), "{error}");
        let dir = tempfile::tempdir().expect("a temp dir");
        let token = dir.path().join("metrics.token");
        std::fs::write(&token, "short").expect("write");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let error = load_text(&format!("[http]\nmetrics_token_file = {:?}\n", token))
            .expect_err("a short token")
            .to_string();
        assert!(error.contains("http.metrics_token_file"), "{error}");
    }

    #[test]
    fn the_largest_step_heap_is_a_size_in_range() {
        let config = load_text("[limits]\nstep_heap = \"512MiB\"\n").expect("a size");
        assert_eq!(config.limits.model().step_heap, ByteSize(512 << 20));
        assert_eq!(
            load_text("").expect("defaults").limits.model().step_heap,
            ByteSize(1 << 30)
        );
        for (text, says) in [
            (
                "\"4MiB\"",
                "limits.step_heap is 4MiB, must be at least 8MiB and at most 16GiB",
            ),
            (
                "\"32GiB\"",
                "limits.step_heap is 32GiB, must be at least 8MiB and at most 16GiB",
            ),
            ("\"lots\"", "invalid size \"lots\""),
        ] {
            let error = format!(
                "{:#}",
                load_text(&format!("[limits]\nstep_heap = {text}\n")).expect_err(text)
            );
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn a_sandbox_never_runs_as_root() {
        let error = load_text("[sandbox]\nuid = 0\n")
            .expect_err("uid 0")
            .to_string();
        assert!(
            error.contains("customer code never runs as root"),
            "{error}"
        );
    }

    #[test]
    fn bad_files_and_values_say_what_and_where() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("isoflow.toml");
        std::fs::write(&file, "role = \"all\"\n\n[worker]\ncapacty = 4\n").expect("write");
        let flags = Flags {
            config: Some(file),
            ..Flags::default()
        };
        let error = Config::load(&flags, &HashMap::new())
            .expect_err("unknown field")
            .to_string();
        assert!(
            error.contains("isoflow.toml:4: unknown field `capacty`"),
            "{error}"
        );

        let error = Config::load(&Flags::default(), &env(&[("ISOFLOW_ROLE", "boss")]))
            .expect_err("bad role")
            .to_string();
        assert!(error.contains("ISOFLOW_ROLE is \"boss\""), "{error}");

        let error = Config::load(
            &Flags::default(),
            &env(&[("ISOFLOW_TENANT_RUNS_IN_FLIGHT", "-1")]),
        )
        .expect_err("negative")
        .to_string();
        assert_eq!(
            error,
            "ISOFLOW_TENANT_RUNS_IN_FLIGHT is \"-1\": not a whole number"
        );

        let error = Config::load(
            &Flags::default(),
            &env(&[
                ("ISOFLOW_ROLE", "coordinator"),
                ("ISOFLOW_CLUSTER_TOKEN", "x"),
            ]),
        )
        .expect_err("no api token")
        .to_string();
        assert!(error.contains("at least one API token"), "{error}");
    }
}
