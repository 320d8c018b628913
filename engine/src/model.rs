//! The integration model: the data types of an integration definition, the
//! loader that reads one from YAML or JSON and validates it, the expression
//! language that wires data between steps, and the JSON Schema for editors.
//!
//! The user's reference is `docs/integration-format.md`; this module is its
//! implementation. Everything here is pure data and pure functions: no I/O
//! (a code step's `file` is recorded, not read), no async, no execution.
//!
//! # Invariants
//!
//! - [`load`] is the one way in from user text. It reports every problem it
//!   finds, each as one sentence naming the file, the line and the step, or
//!   returns an [`Integration`] in which every reference resolves: each
//!   `steps.<id>.output` names an earlier step that the referring step can
//!   see, and `item`/`index` appear only inside a loop's steps.
//! - Defaults are filled in by the loader (a missing `method` is `GET`, a
//!   missing `timeout` is 30 s, ...), so a stored definition keeps the
//!   meaning it had when it was loaded even if a default changes later.
//! - Serialising an `Integration` (serde, e.g. to JSON for storage) and
//!   loading or deserialising the result gives an equal value. Templates keep
//!   the text the user wrote.
//! - The derived `Deserialize` checks shapes and expression syntax but not
//!   the cross-step rules: it is for definitions this engine stored itself.
//!   Anything a user wrote goes through [`load`].
//!
//! # Where to look next
//!
//! `parse` reads text into nodes that know their line; `decode` turns nodes
//! into these types, field by field; `validate` checks ids and references;
//! [`expr`] and [`template`] are the expression language.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sandbox::Runtime;

mod decode;
pub mod expr;
mod parse;
pub mod template;
mod validate;

pub use expr::{BinaryOp, Expr, Path, Root, Scope, Segment, StepOutputs, StepRef, eval, truthy};
pub use template::{Template, TemplateError, TemplateString};

/// The only `apiVersion` this engine reads.
pub const API_VERSION: &str = "isoflow.dev/v1";

/// Reads and validates an integration definition, YAML or JSON (told apart
/// by content: a text starting with `{` is JSON). `file_name` is used only in
/// messages.
///
/// # Errors
/// Every problem found, sorted by line, each one sentence like
/// `orders.yaml:14: step "post": unknown step "fech" referenced in url`.
pub fn load(file_name: &str, text: &str) -> Result<Integration, LoadErrors> {
    decode::load(file_name, text, &Limits::default())
}

/// [`load`] under a node's limits.
///
/// # Errors
/// As [`load`], and a step whose `timeout` exceeds `limits.step_timeout`.
pub fn load_with(file_name: &str, text: &str, limits: &Limits) -> Result<Integration, LoadErrors> {
    decode::load(file_name, text, limits)
}

/// What a node allows a definition, beyond what every definition must
/// respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The longest `timeout` a step (or loop) may set; at most
    /// [`LONGEST_DURATION`].
    pub step_timeout: Duration,
    /// The largest `heap` a code step may set; at most [`LARGEST_HEAP`].
    pub step_heap: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            step_timeout: LONGEST_DURATION,
            step_heap: LARGEST_HEAP,
        }
    }
}

/// The smallest `heap` a code step may set: below it an engine cannot even
/// start (V8 needs its first pages).
pub const SMALLEST_HEAP: ByteSize = ByteSize(8 << 20);

/// The largest `heap` any definition may set, whatever a node allows.
pub const LARGEST_HEAP: ByteSize = ByteSize(16 << 30);

/// The JSON Schema of a definition (draft 2020-12), for editors. The file
/// `docs/integration.schema.json` is this, pretty-printed.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<Integration>();
    schema.to_value()
}

// ---------------------------------------------------------------------------
// Errors

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file name handed to [`load`].
    pub file: String,
    /// 1-based line of the problem.
    pub line: usize,
    /// The step it is in, as it reads in messages: `step "post"`, or
    /// `step #2` when the step has no usable id.
    pub step: Option<String>,
    /// What is wrong, e.g. `unknown step "fech" referenced in url`.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(step) = &self.step {
            write!(f, "{step}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// Every problem found in a definition, sorted by line. Displays as one
/// problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(Vec<LoadError>);

impl LoadErrors {
    pub(crate) fn new(errors: Vec<LoadError>) -> Self {
        debug_assert!(!errors.is_empty(), "an error list holds at least one error");
        Self(errors)
    }

    /// The problems, sorted by line.
    pub fn errors(&self) -> &[LoadError] {
        &self.0
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

// ---------------------------------------------------------------------------
// The definition

/// The `apiVersion` of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// `isoflow.dev/v1`.
    #[default]
    #[serde(rename = "isoflow.dev/v1")]
    V1,
}

/// An integration: a named, versioned, ordered list of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Isoflow integration")]
pub struct Integration {
    /// Always `isoflow.dev/v1` for now.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    /// The integration's name: 1 to 63 lowercase letters, digits and hyphens,
    /// starting with a letter or digit.
    pub name: IntegrationName,
    /// The definition's version, from 1. A run records the name and version
    /// it ran.
    pub version: std::num::NonZeroU32,
    /// What the integration does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The run's output, a template over the steps' outputs. Without it the
    /// output is the last top-level step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Template>,
    /// The steps, run in order. Ids are unique across the whole integration,
    /// loops' steps included.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
    /// What starts a run besides an API call: webhooks and schedules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Who is told when a run fails or is slow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
}

/// An alert: when a run ends the way `on` says, a signed JSON POST to
/// `webhook`, an email to `email.to`, or both. At least one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub on: AlertOn,
    /// `slow` only: a run that took longer than this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    #[schemars(with = "Option<HumanDuration>")]
    pub threshold: Option<Duration>,
    /// Where the alert is posted (http or https; the node's egress policy
    /// applies). Needs `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// The tenant's credential whose secret signs the webhook's alert
    /// (`X-Isoflow-Signature`, as webhooks are signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<CredentialName>,
    /// Who is mailed the alert, through the node's `[smtp]` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAlert>,
}

/// The most recipients one alert's email may have.
pub const MAX_ALERT_RECIPIENTS: usize = 20;
/// The longest subject prefix an alert's email may set, in characters.
pub const MAX_ALERT_SUBJECT: usize = 200;

/// An alert's email: plain text, to every address in `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailAlert {
    /// 1 to 20 addresses.
    #[schemars(length(min = 1, max = 20))]
    pub to: Vec<EmailAddress>,
    /// Put before the subject the node writes (which names the tenant,
    /// integration, version and cause), e.g. `[ERP]`: one line of at most
    /// 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), regex(pattern = r"^[^\r\n]*$"))]
    pub subject: Option<String>,
}

/// When an alert is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertOn {
    /// The run ended failed (after its retries).
    Failed,
    /// The run took longer than `threshold`, however it ended.
    Slow,
    /// An OAuth2 credential an http step of the integration sends could
    /// not be renewed (it went unhealthy).
    Credential,
}

/// Something that starts a run of the integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Trigger {
    /// `POST /hooks/{tenant}/{integration}/{trigger}` on the node's HTTP
    /// listener starts a run with the request's body as its input.
    Webhook(Webhook),
    /// A schedule: the leading coordinator starts a run at each tick, with
    /// `{"trigger": id, "tick": "<RFC 3339 time>"}` as its input.
    Cron(CronTrigger),
}

impl Trigger {
    /// Unique among the integration's triggers; part of a webhook's URL.
    pub fn id(&self) -> &TriggerId {
        match self {
            Trigger::Webhook(w) => &w.id,
            Trigger::Cron(c) => &c.id,
        }
    }
}

/// A cron trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    pub id: TriggerId,
    /// A cron expression: five fields (minute hour day month weekday), or
    /// six with seconds first; `@hourly` and the like.
    pub schedule: String,
    /// The IANA time zone the schedule is read in (`Europe/Berlin`);
    /// default `UTC`. Daylight saving time is the zone's.
    #[serde(default = "utc")]
    pub timezone: String,
    /// What a tick does while the previous run of this trigger is still
    /// going: `skip` it (default) or `allow` another run.
    #[serde(default)]
    pub overlap: Overlap,
    /// Ticks missed while no coordinator led: `skip` them (default), or run
    /// `once` for the latest of them.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Each tick fires up to this much later (the same delay for a tick
    /// whichever node fires it), so that many schedules on the same minute
    /// do not start together. At most 1h; default none.
    #[serde(default, with = "duration")]
    #[schemars(with = "HumanDuration")]
    pub jitter: Duration,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A cron trigger's policy for a tick while its previous run is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// The tick is recorded and passes without a run.
    #[default]
    Skip,
    /// The latest such tick waits, and runs when the previous run ends.
    Queue,
    /// The tick's run starts beside the previous one.
    Allow,
}

/// A cron trigger's policy for ticks missed while nothing fired them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    Skip,
    Once,
}

/// Parses a cron expression as triggers take it (seconds optional).
///
/// # Errors
/// The parser's reason.
pub fn parse_schedule(text: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| e.to_string().trim_end_matches('.').to_lowercase())
}

/// A webhook trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Unique among the integration's triggers; part of the webhook's URL.
    pub id: TriggerId,
    /// How a caller proves it may start runs.
    pub auth: WebhookAuth,
    /// The tenant's credential whose secret is the path token or the HMAC
    /// key.
    pub secret: CredentialName,
    /// `async` answers 202 with the run id at once; `sync` waits for the
    /// run's output up to `timeout`.
    #[serde(default)]
    pub mode: WebhookMode,
    /// How long a `sync` call waits before answering 202 (default 10s, at
    /// most 60s).
    #[serde(default = "default_webhook_timeout", with = "duration")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
}

/// How a webhook caller proves it may start runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookAuth {
    /// The secret is the last segment of the URL:
    /// `/hooks/{tenant}/{integration}/{trigger}/{secret}`.
    Token,
    /// `X-Isoflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
    /// "<t>.<body>">`, with `t` within 5 minutes of the node's clock.
    Hmac,
}

/// Whether a webhook waits for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookMode {
    #[default]
    Async,
    Sync,
}

/// The default time a `sync` webhook waits for its run.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a `sync` webhook may wait.
pub const LONGEST_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn default_webhook_timeout() -> Duration {
    DEFAULT_WEBHOOK_TIMEOUT
}

impl Integration {
    /// The step with this id, at any depth.
    pub fn find_step(&self, id: &str) -> Option<&Step> {
        fn find<'s>(steps: &'s [Step], id: &str) -> Option<&'s Step> {
            steps.iter().find_map(|s| {
                if s.id().as_str() == id {
                    return Some(s);
                }
                match s {
                    Step::Loop(l) => find(&l.steps, id),
                    _ => None,
                }
            })
        }
        find(&self.steps, id)
    }
}

/// One step. The `type` field says which kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Step {
    /// `type: code`: runs JavaScript in a fresh isolate.
    Code(CodeStep),
    /// `type: http`: one HTTP request, made by the engine.
    Http(HttpStep),
    /// `type: loop`: runs its steps once per element of an array.
    Loop(LoopStep),
}

impl Step {
    /// The step's id.
    pub fn id(&self) -> &StepId {
        match self {
            Step::Code(s) => &s.id,
            Step::Http(s) => &s.id,
            Step::Loop(s) => &s.id,
        }
    }

    /// `code`, `http` or `loop`.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Code(_) => "code",
            Step::Http(_) => "http",
            Step::Loop(_) => "loop",
        }
    }

    /// The condition under which the step runs, if any.
    pub fn when(&self) -> Option<&Template> {
        match self {
            Step::Code(s) => s.when.as_ref(),
            Step::Http(s) => s.when.as_ref(),
            Step::Loop(s) => s.when.as_ref(),
        }
    }

    /// The retry policy, if any (without one, a step runs once).
    pub fn retry(&self) -> Option<&Retry> {
        match self {
            Step::Code(s) => s.retry.as_ref(),
            Step::Http(s) => s.retry.as_ref(),
            Step::Loop(s) => s.retry.as_ref(),
        }
    }

    /// The time limit of one attempt (for a loop: of the whole loop, if set).
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Step::Code(s) => Some(s.timeout),
            Step::Http(s) => Some(s.timeout),
            Step::Loop(s) => s.timeout,
        }
    }
}

/// The default time limit of a code or http step's attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// A code step: the customer's JavaScript, run in a fresh isolate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "CodeStepFields", into = "CodeStepFields")]
pub struct CodeStep {
    /// The step's id.
    pub id: StepId,
    /// The JavaScript engine.
    pub runtime: Runtime,
    /// The module's source, inline or in a file.
    pub code: CodeSource,
    /// The value passed to the module's default export as `input`
    /// (default `"{{ input }}"`, the run's input).
    pub input: Template,
    /// The time limit of one attempt.
    pub timeout: Duration,
    /// The JavaScript heap one attempt may use; `None` takes the node's
    /// default (the sandbox's `heap_bytes`).
    pub heap: Option<ByteSize>,
    /// The retry policy; without one the step runs once.
    pub retry: Option<Retry>,
    /// Run only when this is truthy; otherwise the step is skipped.
    pub when: Option<Template>,
}

/// Where a code step's module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CodeSource {
    /// The source text, written inline.
    Source(String),
    /// A file, relative to the definition's directory, that the caller
    /// reads: the model does no I/O.
    File(PathBuf),
}

/// How a code step is written: `source` and `file` are separate fields,
/// exactly one of which is set.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename = "CodeStep")]
#[schemars(extend("oneOf" = [{"required": ["source"]}, {"required": ["file"]}]))]
struct CodeStepFields {
    /// The step's id: 1 to 63 lowercase letters, digits and underscores,
    /// starting with a letter; unique in the integration.
    id: StepId,
    /// `v8` (default) or `quickjs`.
    #[serde(default)]
    #[schemars(with = "RuntimeSchema")]
    runtime: Runtime,
    /// The module's source: an ES module whose default export is
    /// `function (input, ctx)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    /// A file holding the module's source, relative to the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    /// The module's `input` (default `"{{ input }}"`).
    #[serde(default = "default_code_input")]
    input: Template,
    /// The time limit of one attempt (default 30s).
    #[serde(default = "default_timeout", with = "duration")]
    #[schemars(with = "HumanDuration")]
    timeout: Duration,
    /// The JavaScript heap one attempt may use (default: the node's,
    /// 128MiB unless configured; at least 8MiB, at most the node's
    /// `limits.step_heap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heap: Option<ByteSize>,
    /// Retry policy; without one the step runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<Retry>,
    /// Run only when this is truthy (JavaScript truthiness); else skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    when: Option<Template>,
}

pub(crate) fn default_code_input() -> Template {
    Template::parse("{{ input }}").expect("a valid template")
}

impl TryFrom<CodeStepFields> for CodeStep {
    type Error = &'static str;

    fn try_from(f: CodeStepFields) -> Result<Self, Self::Error> {
        let code = match (f.source, f.file) {
            (Some(source), None) => CodeSource::Source(source),
            (None, Some(file)) => CodeSource::File(file),
            (Some(_), Some(_)) => return Err("a code step takes source or file, not both"),
            (None, None) => return Err("a code step needs source or file"),
        };
        Ok(Self {
            id: f.id,
            runtime: f.runtime,
            code,
            input: f.input,
            timeout: f.timeout,
            heap: f.heap,
            retry: f.retry,
            when: f.when,
        })
    }
}

impl From<CodeStep> for CodeStepFields {
    fn from(s: CodeStep) -> Self {
        let (source, file) = match s.code {
            CodeSource::Source(source) => (Some(source), None),
            CodeSource::File(file) => (None, Some(file)),
        };
        Self {
            id: s.id,
            runtime: s.runtime,
            source,
            file,
            input: s.input,
            timeout: s.timeout,
            heap: s.heap,
            retry: s.retry,
            when: s.when,
        }
    }
}

/// The sandbox's [`Runtime`], as the schema shows it.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Runtime")]
#[allow(dead_code)] // only its schema is used
enum RuntimeSchema {
    /// V8: JIT, `Intl`; the default.
    V8,
    /// QuickJS: starts faster, no JIT, no `Intl`.
    #[serde(rename = "quickjs")]
    QuickJs,
}

/// An HTTP step: one request, made by the engine (never by JavaScript).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// The step's id: 1 to 63 lowercase letters, digits and underscores,
    /// starting with a letter; unique in the integration.
    pub id: StepId,
    /// The request method (default `GET`).
    #[serde(default)]
    pub method: Method,
    /// The URL, `http://` or `https://`; a template string.
    pub url: TemplateString,
    /// Request headers; values are template strings.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, TemplateString>,
    /// Query parameters added to the URL; values are template strings.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub query: IndexMap<String, TemplateString>,
    /// The request body: a template. A body that renders to a string is sent
    /// as text; anything else as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Template>,
    /// The name of a stored credential the engine adds to the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialName>,
    /// The time limit of one attempt (default 30s).
    #[serde(default = "default_timeout", with = "duration")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
    /// The largest response body accepted (default 64MiB).
    #[serde(default)]
    pub max_response_bytes: ByteSize,
    /// Retry policy; without one the step runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Run only when this is truthy (JavaScript truthiness); else skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Template>,
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET`.
    #[default]
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `HEAD`.
    Head,
}

impl Method {
    /// Every method, in the order the documentation lists them.
    pub const ALL: [Method; 6] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Head,
    ];

    /// The method as written: `GET`, `POST`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loop: runs its steps once per element of an array, collecting the
/// last step's output per element, in element order (a skipped one is `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopStep {
    /// The step's id: 1 to 63 lowercase letters, digits and underscores,
    /// starting with a letter; unique in the integration.
    pub id: StepId,
    /// The array to loop over: `"{{ expression }}"` or a literal array.
    pub for_each: Template,
    /// How many elements run at once, 1 to 256 (default 1).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u16,
    /// The steps run for each element; inside them `{{ item }}` and
    /// `{{ index }}` are the element and its index.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
    /// A time limit for the whole loop (default: none).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    #[schemars(with = "Option<HumanDuration>")]
    pub timeout: Option<Duration>,
    /// Retry policy for the loop; elements already done are not run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Run only when this is truthy (JavaScript truthiness); else skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Template>,
}

/// The most elements a loop may run at once.
pub const MAX_CONCURRENCY: u16 = 256;

fn default_concurrency() -> u16 {
    1
}

/// When and how often to retry a failed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included: 1 to 100 (default 3).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// The delays between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Randomise each delay, so that many runs failing together do not
    /// retry together (default true).
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

/// The most attempts a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 100;

fn default_max_attempts() -> u32 {
    3
}

fn default_jitter() -> bool {
    true
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff: Backoff::default(),
            jitter: default_jitter(),
        }
    }
}

/// Exponential backoff: the first delay is `initial`, each next one
/// `multiplier` times the last, never more than `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first delay (default 1s).
    #[serde(default = "default_initial", with = "duration")]
    #[schemars(with = "HumanDuration")]
    pub initial: Duration,
    /// The longest delay (default 30s); at least `initial`.
    #[serde(default = "default_max", with = "duration")]
    #[schemars(with = "HumanDuration")]
    pub max: Duration,
    /// The growth factor, at least 1.0 (default 2.0).
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0))]
    pub multiplier: f64,
}

fn default_initial() -> Duration {
    Duration::from_secs(1)
}

fn default_max() -> Duration {
    Duration::from_secs(30)
}

fn default_multiplier() -> f64 {
    2.0
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            max: default_max(),
            multiplier: default_multiplier(),
        }
    }
}

// ---------------------------------------------------------------------------
// Names

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:ident, $what:literal, $rule:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `name` against the rule.
            ///
            /// # Errors
            /// A sentence naming the rule, e.g.
            #[doc = concat!("`invalid ", $what, " \"X\" (", $rule, ")`.")]
            pub fn new(name: impl Into<String>) -> Result<Self, String> {
                let name = name.into();
                if $check(&name) {
                    Ok(Self(name))
                } else {
                    Err(format!(concat!("invalid ", $what, " \"{}\" (", $rule, ")"), name))
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(name: String) -> Result<Self, String> {
                Self::new(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": $rule,
                    "pattern": $pattern
                })
            }
        }
    };
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

fn is_step_id(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

name_type!(
    /// An integration's name: `[a-z0-9][a-z0-9-]{0,62}`.
    IntegrationName,
    is_name,
    "name",
    "use 1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit",
    "^[a-z0-9][a-z0-9-]{0,62}$"
);

name_type!(
    /// A step's id: `[a-z][a-z0-9_]{0,62}`, unique in its integration.
    StepId,
    is_step_id,
    "step id",
    "use 1 to 63 lowercase letters, digits and underscores, starting with a letter",
    "^[a-z][a-z0-9_]{0,62}$"
);

name_type!(
    /// A trigger's id: `[a-z0-9][a-z0-9-]{0,62}`.
    TriggerId,
    is_name,
    "trigger id",
    "use 1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit",
    "^[a-z0-9][a-z0-9-]{0,62}$"
);

name_type!(
    /// An email address, `local@domain`: a dot-atom local part (no quotes,
    /// no comments, no display name) and a domain of at least two
    /// letter-digit-hyphen labels; at most 254 characters.
    EmailAddress,
    is_email_address,
    "email address",
    "use local@domain, like ops@example.com",
    "^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
);

/// What [`EmailAddress`] accepts: an address every SMTP server and mail
/// library reads the same way, with nothing that could end a header line.
fn is_email_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let atext = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&c);
    let label = |l: &str| {
        let b = l.as_bytes();
        (1..=63).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    };
    s.len() <= 254
        && (1..=64).contains(&local.len())
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atext))
        && domain.split('.').count() >= 2
        && domain.split('.').all(label)
}

name_type!(
    /// The name of a stored credential: `[a-z0-9][a-z0-9-]{0,62}`.
    CredentialName,
    is_name,
    "credential name",
    "use 1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit",
    "^[a-z0-9][a-z0-9-]{0,62}$"
);

// ---------------------------------------------------------------------------
// Sizes and durations

/// A number of bytes, written as an integer or with a unit: `B`, `KiB`,
/// `MiB` or `GiB` (`64MiB`, `512 KiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// An http step's default response limit, 64 MiB.
    pub const DEFAULT_RESPONSE_LIMIT: ByteSize = ByteSize(64 << 20);

    /// Parses `64MiB`, `512 KiB`, `100B` or `1000`.
    ///
    /// # Errors
    /// `invalid size "64MB" (use a whole number of B, KiB, MiB or GiB, like 64MiB)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size \"{text}\" (use a whole number of B, KiB, MiB or GiB, like 64MiB)"
            )
        };
        let t = text.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = t[..digits].parse().map_err(|_| bad())?;
        let shift = match t[digits..].trim_start() {
            "" | "B" => 0,
            "KiB" => 10,
            "MiB" => 20,
            "GiB" => 30,
            _ => return Err(bad()),
        };
        number.checked_mul(1 << shift).map(ByteSize).ok_or_else(bad)
    }
}

impl Default for ByteSize {
    fn default() -> Self {
        Self::DEFAULT_RESPONSE_LIMIT
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(n) if n.is_u64() => {
                Ok(ByteSize(n.as_u64().expect("checked is_u64")))
            }
            serde_json::Value::String(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!("invalid size {other}"))),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of bytes: an integer, or a whole number with a unit B, KiB, MiB or GiB (64MiB).",
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*(B|KiB|MiB|GiB)?\\s*$"}
            ]
        })
    }
}

/// A duration as the schema shows it: text like `30s`, `500ms` or `2m`.
struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: a number with a unit (ms, s, m, h), like 500ms, 30s, 2m or 1m 30s.",
            "type": "string",
            "pattern": "^\\s*[0-9]"
        })
    }
}

/// The longest duration a definition may set (a step's time limit, a
/// backoff): a day. Tenants write definitions; a year-long time limit
/// would hold a runner, and a clock plus a century overflows.
pub const LONGEST_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration like `30s`, `500ms`, `2m` or `1m 30s`.
///
/// # Errors
/// `invalid duration "soon"`, with a hint when a unit is missing.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|_| {
        if !text.trim().is_empty() && text.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            format!(
                "invalid duration \"{text}\" (add a unit: {}s, {}ms, ...)",
                text.trim(),
                text.trim()
            )
        } else {
            format!("invalid duration \"{text}\"")
        }
    })
}

/// serde for durations as humantime text (`30s`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            d: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                Some(text) => super::super::parse_duration(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(IntegrationName::new("orders-to-erp").is_ok());
        assert!(IntegrationName::new("9lives").is_ok());
        assert_eq!(
            IntegrationName::new("Orders").expect_err("uppercase"),
            "invalid name \"Orders\" (use 1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit)"
        );
        assert!(IntegrationName::new("-x").is_err());
        assert!(IntegrationName::new("a".repeat(63)).is_ok());
        assert!(IntegrationName::new("a".repeat(64)).is_err());
        assert!(StepId::new("fetch_2").is_ok());
        assert!(StepId::new("2fetch").is_err());
        assert!(StepId::new("fetch-2").is_err());
        assert!(StepId::new("").is_err());
        assert!(CredentialName::new("erp-prod").is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse(" 512 KiB "), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("100B"), Ok(ByteSize(100)));
        assert_eq!(ByteSize::parse("1000"), Ok(ByteSize(1000)));
        assert_eq!(
            ByteSize::parse("64MB"),
            Err(
                "invalid size \"64MB\" (use a whole number of B, KiB, MiB or GiB, like 64MiB)"
                    .to_owned()
            )
        );
        assert!(ByteSize::parse("1.5MiB").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(
            parse_duration("soon"),
            Err("invalid duration \"soon\"".to_owned())
        );
        assert_eq!(
            parse_duration("10"),
            Err("invalid duration \"10\" (add a unit: 10s, 10ms, ...)".to_owned())
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let e = |line, step: Option<&str>, message: &str| LoadError {
            file: "orders.yaml".into(),
            line,
            step: step.map(str::to_owned),
            message: message.into(),
        };
        let errors = LoadErrors::new(vec![
            e(3, None, "missing field \"version\""),
            e(
                14,
                Some("step \"post\""),
                "unknown step \"fech\" referenced in url",
            ),
        ]);
        assert_eq!(
            errors.to_string(),
            "orders.yaml:3: missing field \"version\"\norders.yaml:14: step \"post\": unknown step \"fech\" referenced in url"
        );
    }
}
