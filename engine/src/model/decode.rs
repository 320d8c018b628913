//! Turning the node tree into the model, field by field.
//!
//! Every field is checked on its own and every problem recorded, so one
//! pass reports them all: a bad field makes its step unusable but does not
//! stop the others from being read. Each step and each expression path is
//! recorded on the way ([`StepInfo`], [`Use`]) for `validate`, which checks
//! the rules that span steps once all ids are known.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;

use super::parse::{self, Key, Kind, Node};
use super::validate;
use super::{
    API_VERSION, ApiVersion, Backoff, ByteSize, CodeSource, CodeStep, CredentialName,
    DEFAULT_TIMEOUT, HttpStep, Integration, IntegrationName, LoadError, LoadErrors, LoopStep,
    MAX_ATTEMPTS, MAX_CONCURRENCY, Method, Retry, Root, Step, StepId, Template, TemplateString,
};
use super::{
    Alert, AlertOn, CatchUp, CronTrigger, DEFAULT_WEBHOOK_TIMEOUT, EmailAddress, EmailAlert,
    LONGEST_WEBHOOK_TIMEOUT, MAX_ALERT_RECIPIENTS, MAX_ALERT_SUBJECT, Overlap, Trigger, TriggerId,
    Webhook, WebhookAuth, WebhookMode,
};
use super::{LARGEST_HEAP, SMALLEST_HEAP};
use crate::sandbox::Runtime;

const INTEGRATION_FIELDS: &[&str] = &[
    "apiVersion",
    "name",
    "version",
    "description",
    "output",
    "steps",
    "triggers",
    "alerts",
];
const ALERT_FIELDS: &[&str] = &["on", "threshold", "webhook", "secret", "email"];
const EMAIL_FIELDS: &[&str] = &["to", "subject"];
const TRIGGER_FIELDS: &[&str] = &["id", "type", "auth", "secret", "mode", "timeout"];
const CRON_FIELDS: &[&str] = &[
    "id", "type", "schedule", "timezone", "overlap", "catch_up", "jitter",
];
const COMMON_FIELDS: &[&str] = &["id", "type", "when", "retry", "timeout"];
const HTTP_FIELDS: &[&str] = &[
    "method",
    "url",
    "headers",
    "query",
    "body",
    "credential",
    "max_response_bytes",
];
const CODE_FIELDS: &[&str] = &["runtime", "source", "file", "input", "heap"];
const LOOP_FIELDS: &[&str] = &["for_each", "concurrency", "steps"];
const RETRY_FIELDS: &[&str] = &["max_attempts", "backoff", "jitter"];
const BACKOFF_FIELDS: &[&str] = &["initial", "max", "multiplier"];

/// A problem, before it is given the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub line: usize,
    pub step: Option<String>,
    pub message: String,
}

/// A step as seen while reading, for the checks across steps.
#[derive(Debug)]
pub(super) struct StepInfo {
    /// The id as written, when it is text (valid or not).
    pub id: Option<String>,
    /// The line of the `id` field (or of the step, without one).
    pub id_line: usize,
    /// The enclosing loop, as an index into the list of steps seen.
    pub parent: Option<usize>,
    /// How messages name the step: `step "post"` or `step #2`.
    pub label: String,
}

/// Who uses an expression: a step (an index into the steps seen), or the
/// integration's `output` (`None`), which comes after every step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Consumer {
    pub step: Option<usize>,
    /// The loop whose steps the consumer is one of.
    pub in_loop: Option<usize>,
}

/// One path in one expression: what it names, and where.
#[derive(Debug)]
pub(super) struct Use {
    pub line: usize,
    pub consumer: Consumer,
    /// The field it is in, as messages name it: `url`, `header "Accept"`.
    pub field: String,
    pub root: Root,
}

/// Reads and checks a definition; the implementation of [`super::load`].
pub(super) fn load(
    file_name: &str,
    text: &str,
    limits: &super::Limits,
) -> Result<Integration, LoadErrors> {
    let (root, issues) = parse::parse(text);
    let mut decoder = Decoder {
        limits: limits.clone(),
        ..Decoder::default()
    };
    decoder.problems.extend(issues.into_iter().map(|i| Problem {
        line: i.line,
        step: None,
        message: i.message,
    }));
    let integration = match &root {
        Some(root) => decoder.integration(root),
        None => {
            if decoder.problems.is_empty() {
                decoder.problem(
                    1,
                    None,
                    "the file is empty; an integration needs apiVersion, name, version and steps"
                        .to_owned(),
                );
            }
            None
        }
    };
    let mut problems = decoder.problems;
    problems.extend(validate::check(&decoder.steps, &decoder.uses));
    if problems.is_empty() {
        if let Some(integration) = integration {
            return Ok(integration);
        }
        debug_assert!(false, "the decoder gave up without saying why");
        problems.push(Problem {
            line: 1,
            step: None,
            message: "could not read this definition (a bug in Isoflow: please report it)"
                .to_owned(),
        });
    }
    problems.sort_by_key(|p| p.line);
    problems.dedup();
    let errors = problems
        .into_iter()
        .map(|p| LoadError {
            file: file_name.to_owned(),
            line: p.line,
            step: p.step,
            message: p.message,
        })
        .collect();
    Err(LoadErrors::new(errors))
}

/// The fields of one mapping, taken one by one; what is left is unknown.
struct Fields<'n> {
    line: usize,
    entries: &'n [(Key, Node)],
    taken: Vec<bool>,
}

impl<'n> Fields<'n> {
    fn new(line: usize, entries: &'n [(Key, Node)]) -> Self {
        Self {
            line,
            entries,
            taken: vec![false; entries.len()],
        }
    }

    /// The field's key and value, null or not.
    fn take(&mut self, name: &str) -> Option<(&'n Key, &'n Node)> {
        let i = self.entries.iter().position(|(k, _)| k.name == name)?;
        self.taken[i] = true;
        let (k, v) = &self.entries[i];
        Some((k, v))
    }

    /// The field's value; `null` counts as absent, as in serde.
    fn optional(&mut self, name: &str) -> Option<&'n Node> {
        self.take(name)
            .map(|(_, v)| v)
            .filter(|v| v.kind != Kind::Null)
    }

    fn peek(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    fn key_line(&self, name: &str) -> usize {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map_or(self.line, |(k, _)| k.line)
    }

    fn untaken(&self) -> impl Iterator<Item = &'n Key> + '_ {
        self.entries
            .iter()
            .zip(&self.taken)
            .filter(|(_, taken)| !**taken)
            .map(|((k, _), _)| k)
    }
}

/// Where the step being read sits: for labels and for its expressions.
#[derive(Clone, Copy)]
struct At<'a> {
    label: Option<&'a str>,
    consumer: Consumer,
}

#[derive(Default)]
struct Decoder {
    limits: super::Limits,
    problems: Vec<Problem>,
    steps: Vec<StepInfo>,
    uses: Vec<Use>,
}

/// `Ok(None)`: absent; `Ok(Some)`: present and valid; `Err`: present and
/// invalid, problem recorded.
type Field<T> = Result<Option<T>, ()>;

/// A required field's value; `Err` when missing or invalid, problem recorded.
type Required<T> = Result<T, ()>;

impl Decoder {
    fn problem(&mut self, line: usize, label: Option<&str>, message: String) {
        self.problems.push(Problem {
            line,
            step: label.map(str::to_owned),
            message,
        });
    }

    fn fail<T>(&mut self, line: usize, label: Option<&str>, message: String) -> Required<T> {
        self.problem(line, label, message);
        Err(())
    }

    fn integration(&mut self, root: &Node) -> Option<Integration> {
        let Kind::Map(entries) = &root.kind else {
            let message = format!(
                "expected a mapping with apiVersion, name, version and steps, found {}",
                root.describe()
            );
            self.problem(root.line, None, message);
            return None;
        };
        let at = At {
            label: None,
            consumer: Consumer {
                step: None,
                in_loop: None,
            },
        };
        let mut f = Fields::new(root.line, entries);
        let api_version = self
            .required(&mut f, "apiVersion", at)
            .and_then(|n| match &n.kind {
                Kind::String(s) if s == API_VERSION => Ok(ApiVersion::V1),
                _ => self.fail(
                    n.line,
                    None,
                    format!(
                        "unsupported apiVersion {} (expected \"{API_VERSION}\")",
                        n.describe()
                    ),
                ),
            });
        let name = self.required(&mut f, "name", at).and_then(|n| {
            let text = self.string(n, "name", at)?;
            IntegrationName::new(text).map_err(|e| self.problem(n.line, None, e))
        });
        let version = self.required(&mut f, "version", at).and_then(|n| {
            let v = self.whole_number(n, "version", at, 1, u64::from(u32::MAX))?;
            let v = u32::try_from(v).expect("checked range");
            Ok(std::num::NonZeroU32::new(v).expect("checked range"))
        });
        let description = self.optional(&mut f, "description", |d, n| {
            d.string(n, "description", at).map(str::to_owned)
        });
        // Steps first: the output's references are checked after all anyway,
        // but reading in this order keeps problems in reading order.
        let steps = self
            .required(&mut f, "steps", at)
            .and_then(|n| self.steps(n, None, at));
        let output = self.optional(&mut f, "output", |d, n| d.template(n, "output", at));
        let triggers = self.optional(&mut f, "triggers", |d, n| d.triggers(n));
        let alerts = self.optional(&mut f, "alerts", |d, n| d.alerts(n));
        self.unknown_fields(&f, None, INTEGRATION_FIELDS, "an integration");
        Some(Integration {
            api_version: api_version.ok()?,
            name: name.ok()?,
            version: version.ok()?,
            description: description.ok()?,
            output: output.ok()?,
            steps: steps.ok()?,
            triggers: triggers.ok()?.unwrap_or_default(),
            alerts: alerts.ok()?.unwrap_or_default(),
        })
    }

    fn alerts(&mut self, node: &Node) -> Required<Vec<Alert>> {
        let top = At {
            label: None,
            consumer: Consumer {
                step: None,
                in_loop: None,
            },
        };
        let Kind::Seq(items) = &node.kind else {
            return self.type_error(node, "alerts", top, "a list of alerts");
        };
        let mut alerts = Vec::new();
        let mut failed = false;
        for (i, item) in items.iter().enumerate() {
            let label = format!("alert #{}", i + 1);
            let at = At {
                label: Some(&label),
                consumer: top.consumer,
            };
            let Kind::Map(entries) = &item.kind else {
                failed = true;
                self.problem(
                    item.line,
                    at.label,
                    format!(
                        "an alert must be a mapping with on and a webhook (with its secret) or an email, found {}",
                        item.describe()
                    ),
                );
                continue;
            };
            let mut f = Fields::new(item.line, entries);
            let on = self.required(&mut f, "on", at).and_then(|n| match &n.kind {
                Kind::String(o) if o == "failed" => Ok(AlertOn::Failed),
                Kind::String(o) if o == "slow" => Ok(AlertOn::Slow),
                Kind::String(o) if o == "credential" => Ok(AlertOn::Credential),
                _ => self.fail(
                    n.line,
                    at.label,
                    format!(
                        "on must be failed, slow or credential, found {}",
                        n.describe()
                    ),
                ),
            });
            let threshold = self.optional(&mut f, "threshold", |d, n| {
                d.positive_duration(n, "threshold", at)
            });
            let webhook = self.optional(&mut f, "webhook", |d, n| {
                let text = d.string(n, "webhook", at)?;
                match reqwest::Url::parse(text) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(text.to_owned()),
                    _ => d.fail(
                        n.line,
                        at.label,
                        format!("webhook {text:?} is not an http or https URL"),
                    ),
                }
            });
            let secret = self.optional(&mut f, "secret", |d, n| {
                let text = d.string(n, "secret", at)?;
                CredentialName::new(text.to_owned()).map_err(|e| d.problem(n.line, at.label, e))
            });
            let email = self.optional(&mut f, "email", |d, n| d.email_alert(n, at));
            self.unknown_fields(&f, at.label, ALERT_FIELDS, "an alert");
            let mut incomplete = false;
            if on == Ok(AlertOn::Slow) && threshold == Ok(None) {
                incomplete = true;
                self.problem(
                    item.line,
                    at.label,
                    "an alert on slow runs needs a threshold".to_owned(),
                );
            }
            // Which channels are there, as written (valid or not): a
            // problem in one is reported once, not again as "missing".
            let has = |name: &str| f.peek(name).is_some_and(|n| n.kind != Kind::Null);
            let channel_problem = match (has("webhook"), has("secret"), has("email")) {
                (false, _, false) => Some("an alert needs a webhook (with its secret) or an email"),
                (true, false, _) => {
                    Some("a webhook alert needs secret, the credential that signs it")
                }
                (false, true, _) => {
                    Some("secret signs a webhook alert, but this alert has no webhook")
                }
                _ => None,
            };
            if let Some(message) = channel_problem {
                incomplete = true;
                self.problem(item.line, at.label, message.to_owned());
            }
            if incomplete {
                failed = true;
                continue;
            }
            match (on, threshold, webhook, secret, email) {
                (Ok(on), Ok(threshold), Ok(webhook), Ok(secret), Ok(email)) => {
                    alerts.push(Alert {
                        on,
                        threshold,
                        webhook,
                        secret,
                        email,
                    });
                }
                _ => failed = true,
            }
        }
        if failed { Err(()) } else { Ok(alerts) }
    }

    /// An alert's `email: {to: [...], subject?}`.
    fn email_alert(&mut self, node: &Node, at: At<'_>) -> Required<EmailAlert> {
        let Kind::Map(entries) = &node.kind else {
            return self.type_error(
                node,
                "email",
                at,
                "a mapping with to and an optional subject",
            );
        };
        let mut f = Fields::new(node.line, entries);
        let to = self.required(&mut f, "to", at).and_then(|n| {
            let Kind::Seq(items) = &n.kind else {
                return self.type_error(n, "email.to", at, "a list of addresses");
            };
            if items.is_empty() {
                return self.fail(n.line, at.label, "email.to is empty: give 1 to 20 addresses".to_owned());
            }
            if items.len() > MAX_ALERT_RECIPIENTS {
                return self.fail(
                    n.line,
                    at.label,
                    format!(
                        "email.to has {} addresses, over the most an alert may mail, {MAX_ALERT_RECIPIENTS}",
                        items.len()
                    ),
                );
            }
            let mut to = Vec::new();
            let mut bad = false;
            for item in items {
                let address = self.string(item, "an email.to entry", at).and_then(|text| {
                    EmailAddress::new(text.to_owned())
                        .map_err(|e| self.problem(item.line, at.label, e))
                });
                match address {
                    Ok(address) if to.contains(&address) => {
                        bad = true;
                        self.problem(
                            item.line,
                            at.label,
                            format!("email address \"{address}\" is listed twice"),
                        );
                    }
                    Ok(address) => to.push(address),
                    Err(()) => bad = true,
                }
            }
            if bad { Err(()) } else { Ok(to) }
        });
        let subject = self.optional(&mut f, "subject", |d, n| {
            let text = d.string(n, "email.subject", at)?;
            if text.contains(['\r', '\n']) {
                return d.fail(n.line, at.label, "email.subject must be one line".to_owned());
            }
            if text.chars().count() > MAX_ALERT_SUBJECT {
                return d.fail(
                    n.line,
                    at.label,
                    format!(
                        "email.subject is {} characters, over the most it may be, {MAX_ALERT_SUBJECT}",
                        text.chars().count()
                    ),
                );
            }
            Ok(text.to_owned())
        });
        self.unknown_fields(&f, at.label, EMAIL_FIELDS, "an alert's email");
        Ok(EmailAlert {
            to: to?,
            subject: subject?,
        })
    }

    fn triggers(&mut self, node: &Node) -> Required<Vec<Trigger>> {
        let at = At {
            label: None,
            consumer: Consumer {
                step: None,
                in_loop: None,
            },
        };
        let Kind::Seq(items) = &node.kind else {
            return self.type_error(node, "triggers", at, "a list of triggers");
        };
        let mut seen: Vec<String> = Vec::new();
        let mut triggers = Vec::new();
        let mut failed = false;
        for (i, item) in items.iter().enumerate() {
            match self.trigger(item, i + 1, &mut seen) {
                Ok(t) => triggers.push(t),
                Err(()) => failed = true,
            }
        }
        if failed { Err(()) } else { Ok(triggers) }
    }

    fn cron(
        &mut self,
        mut f: Fields<'_>,
        at: At<'_>,
        id: Required<TriggerId>,
    ) -> Required<Trigger> {
        let f = &mut f;
        let schedule = self.required(f, "schedule", at).and_then(|n| {
            let text = self.string(n, "schedule", at)?;
            super::parse_schedule(text)
                .map(|_| text.to_owned())
                .map_err(|e| {
                    self.problem(
                        n.line,
                        at.label,
                        format!("schedule {text:?} is not a cron expression: {e}"),
                    )
                })
        });
        let timezone = self.optional(f, "timezone", |d, n| {
            let text = d.string(n, "timezone", at)?;
            text.parse::<chrono_tz::Tz>()
                .map(|_| text.to_owned())
                .map_err(|_| {
                    d.problem(
                        n.line,
                        at.label,
                        format!(
                            "timezone {text:?} is not an IANA time zone like Europe/Berlin or UTC"
                        ),
                    )
                })
        });
        let overlap = self.optional(f, "overlap", |d, n| match &n.kind {
            Kind::String(o) if o == "skip" => Ok(Overlap::Skip),
            Kind::String(o) if o == "allow" => Ok(Overlap::Allow),
            Kind::String(o) if o == "queue" => Ok(Overlap::Queue),
            _ => d.fail(
                n.line,
                at.label,
                format!(
                    "overlap must be skip, queue or allow, found {}",
                    n.describe()
                ),
            ),
        });
        let catch_up = self.optional(f, "catch_up", |d, n| match &n.kind {
            Kind::String(c) if c == "skip" => Ok(CatchUp::Skip),
            Kind::String(c) if c == "once" => Ok(CatchUp::Once),
            _ => d.fail(
                n.line,
                at.label,
                format!("catch_up must be skip or once, found {}", n.describe()),
            ),
        });
        let jitter = self.optional(f, "jitter", |d, n| {
            let j = d.duration(n, "jitter", at)?;
            if j > Duration::from_secs(3600) {
                return d.fail(n.line, at.label, "jitter is at most 1h".to_owned());
            }
            Ok(j)
        });
        self.unknown_fields(f, at.label, CRON_FIELDS, "a cron trigger");
        Ok(Trigger::Cron(CronTrigger {
            id: id?,
            schedule: schedule?,
            timezone: timezone?.unwrap_or_else(|| "UTC".to_owned()),
            overlap: overlap?.unwrap_or_default(),
            catch_up: catch_up?.unwrap_or_default(),
            jitter: jitter?.unwrap_or_default(),
        }))
    }

    fn trigger(
        &mut self,
        node: &Node,
        position: usize,
        seen: &mut Vec<String>,
    ) -> Required<Trigger> {
        let Kind::Map(entries) = &node.kind else {
            let message = format!(
                "a trigger must be a mapping with id and type, found {}",
                node.describe()
            );
            return self.fail(node.line, Some(&format!("trigger #{position}")), message);
        };
        let mut f = Fields::new(node.line, entries);
        let label = match f.peek("id").map(|n| &n.kind) {
            Some(Kind::String(id)) => format!("trigger \"{id}\""),
            _ => format!("trigger #{position}"),
        };
        let at = At {
            label: Some(&label),
            consumer: Consumer {
                step: None,
                in_loop: None,
            },
        };
        let id = self.required(&mut f, "id", at).and_then(|n| {
            let text = self.string(n, "id", at)?;
            let id =
                TriggerId::new(text.to_owned()).map_err(|e| self.problem(n.line, at.label, e))?;
            if seen.iter().any(|s| s == text) {
                return self.fail(
                    n.line,
                    at.label,
                    format!("trigger id \"{text}\" is used twice"),
                );
            }
            seen.push(text.to_owned());
            Ok(id)
        });
        let kind = self
            .required(&mut f, "type", at)
            .and_then(|n| match &n.kind {
                Kind::String(t) if t == "webhook" => Ok(false),
                Kind::String(t) if t == "cron" => Ok(true),
                _ => self.fail(
                    n.line,
                    at.label,
                    format!(
                        "trigger type must be webhook or cron, found {}",
                        n.describe()
                    ),
                ),
            });
        match kind {
            Ok(true) => return self.cron(f, at, id),
            Ok(false) => {}
            // Another type's fields would be judged by the wrong rules.
            Err(()) => return Err(()),
        }
        let auth = self
            .required(&mut f, "auth", at)
            .and_then(|n| match &n.kind {
                Kind::String(a) if a == "token" => Ok(WebhookAuth::Token),
                Kind::String(a) if a == "hmac" => Ok(WebhookAuth::Hmac),
                _ => self.fail(
                    n.line,
                    at.label,
                    format!("auth must be token or hmac, found {}", n.describe()),
                ),
            });
        let secret = self.required(&mut f, "secret", at).and_then(|n| {
            let text = self.string(n, "secret", at)?;
            CredentialName::new(text.to_owned()).map_err(|e| self.problem(n.line, at.label, e))
        });
        let mode = self.optional(&mut f, "mode", |d, n| match &n.kind {
            Kind::String(m) if m == "async" => Ok(WebhookMode::Async),
            Kind::String(m) if m == "sync" => Ok(WebhookMode::Sync),
            _ => d.fail(
                n.line,
                at.label,
                format!("mode must be async or sync, found {}", n.describe()),
            ),
        });
        let timeout = self.optional(&mut f, "timeout", |d, n| {
            let t = d.positive_duration(n, "timeout", at)?;
            if t > LONGEST_WEBHOOK_TIMEOUT {
                return d.fail(
                    n.line,
                    at.label,
                    "a webhook waits for its run at most 60s (timeout)".to_owned(),
                );
            }
            Ok(t)
        });
        self.unknown_fields(&f, at.label, TRIGGER_FIELDS, "a webhook trigger");
        kind?;
        Ok(Trigger::Webhook(Webhook {
            id: id?,
            auth: auth?,
            secret: secret?,
            mode: mode?.unwrap_or_default(),
            timeout: timeout?.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
        }))
    }

    // -- fields in general ---------------------------------------------------

    fn required<'n>(&mut self, f: &mut Fields<'n>, name: &str, at: At<'_>) -> Required<&'n Node> {
        match f.take(name) {
            Some((_, node)) => Ok(node),
            None => self.fail(f.line, at.label, format!("missing field \"{name}\"")),
        }
    }

    fn optional<'n, T>(
        &mut self,
        f: &mut Fields<'n>,
        name: &str,
        read: impl FnOnce(&mut Self, &'n Node) -> Required<T>,
    ) -> Field<T> {
        match f.optional(name) {
            Some(node) => read(self, node).map(Some),
            None => Ok(None),
        }
    }

    fn unknown_fields(&mut self, f: &Fields<'_>, label: Option<&str>, known: &[&str], owner: &str) {
        let unknown: Vec<&Key> = f.untaken().collect();
        for key in unknown {
            let message = match closest(&key.name, known.iter().copied()) {
                Some(near) => format!("unknown field \"{}\" (did you mean \"{near}\"?)", key.name),
                None => format!(
                    "unknown field \"{}\" ({owner} takes: {})",
                    key.name,
                    known.join(", ")
                ),
            };
            self.problem(key.line, label, message);
        }
    }

    fn type_error<T>(
        &mut self,
        node: &Node,
        field: &str,
        at: At<'_>,
        expected: &str,
    ) -> Required<T> {
        self.fail(
            node.line,
            at.label,
            format!("{field} must be {expected}, found {}", node.describe()),
        )
    }

    fn string<'n>(&mut self, node: &'n Node, field: &str, at: At<'_>) -> Required<&'n str> {
        match &node.kind {
            Kind::String(s) => Ok(s),
            _ => self.type_error(node, field, at, "a string"),
        }
    }

    fn whole_number(
        &mut self,
        node: &Node,
        field: &str,
        at: At<'_>,
        min: u64,
        max: u64,
    ) -> Required<u64> {
        match &node.kind {
            Kind::Number(n) if n.as_u64().is_some_and(|v| (min..=max).contains(&v)) => {
                Ok(n.as_u64().expect("checked as_u64"))
            }
            _ => self.type_error(
                node,
                field,
                at,
                &format!("a whole number from {min} to {max}"),
            ),
        }
    }

    fn boolean(&mut self, node: &Node, field: &str, at: At<'_>) -> Required<bool> {
        match node.kind {
            Kind::Bool(b) => Ok(b),
            _ => self.type_error(node, field, at, "true or false"),
        }
    }

    fn duration(&mut self, node: &Node, field: &str, at: At<'_>) -> Required<Duration> {
        let text = match &node.kind {
            Kind::String(s) => s.clone(),
            Kind::Number(n) => n.to_string(),
            _ => return self.type_error(node, field, at, "a duration like 30s"),
        };
        let d = super::parse_duration(&text)
            .map_err(|e| self.problem(node.line, at.label, for_field(&e, field)))?;
        if d > super::LONGEST_DURATION {
            return self.fail(
                node.line,
                at.label,
                format!(
                    "{field} is {}, over the longest a definition may set, 24h",
                    text.trim()
                ),
            );
        }
        Ok(d)
    }

    /// A size: at least `least`, and at most `most` (the node's limit and
    /// the setting that makes it) when there is one.
    fn byte_size(
        &mut self,
        node: &Node,
        field: &str,
        least: ByteSize,
        most: Option<(ByteSize, &str)>,
        at: At<'_>,
    ) -> Required<ByteSize> {
        let size = match &node.kind {
            Kind::Number(num) if num.is_u64() => {
                Ok(ByteSize(num.as_u64().expect("checked is_u64")))
            }
            Kind::String(s) => ByteSize::parse(s),
            _ => Err(format!("invalid size {}", node.describe())),
        };
        match size {
            Err(e) => self.fail(node.line, at.label, for_field(&e, field)),
            Ok(size) if size < least => self.fail(
                node.line,
                at.label,
                format!("{field} must be at least {least}"),
            ),
            Ok(size) => match most {
                Some((most, setting)) if size > most => self.fail(
                    node.line,
                    at.label,
                    format!(
                        "{field} is {size}, over the largest this node allows, {most} ({setting})"
                    ),
                ),
                _ => Ok(size),
            },
        }
    }

    /// A step's `timeout`: positive, and within the node's limit.
    fn step_timeout(&mut self, node: &Node, at: At<'_>) -> Required<Duration> {
        let d = self.positive_duration(node, "timeout", at)?;
        let limit = self.limits.step_timeout;
        if d > limit {
            return self.fail(
                node.line,
                at.label,
                format!(
                    "timeout is {}, over the longest this node allows, {} (limits.step_timeout)",
                    humantime::format_duration(d),
                    humantime::format_duration(limit)
                ),
            );
        }
        Ok(d)
    }

    fn positive_duration(&mut self, node: &Node, field: &str, at: At<'_>) -> Required<Duration> {
        let d = self.duration(node, field, at)?;
        if d.is_zero() {
            return self.fail(node.line, at.label, format!("{field} must be more than 0"));
        }
        Ok(d)
    }

    // -- templates -----------------------------------------------------------

    /// A template string: text, or a number or boolean taken as its text.
    fn template_string(
        &mut self,
        node: &Node,
        field: &str,
        at: At<'_>,
    ) -> Required<TemplateString> {
        let text = match &node.kind {
            Kind::String(s) => s.clone(),
            Kind::Number(n) => n.to_string(),
            Kind::Bool(b) => b.to_string(),
            _ => return self.type_error(node, field, at, "a string"),
        };
        self.parse_template_string(node, &text, field, at)
    }

    fn parse_template_string(
        &mut self,
        node: &Node,
        text: &str,
        field: &str,
        at: At<'_>,
    ) -> Required<TemplateString> {
        match TemplateString::parse(text) {
            Ok(t) => {
                for path in t.paths() {
                    self.uses.push(Use {
                        line: node.line,
                        consumer: at.consumer,
                        field: field.to_owned(),
                        root: path.root.clone(),
                    });
                }
                Ok(t)
            }
            Err(e) => {
                let line = if node.literal_block {
                    node.line + e.line_offset()
                } else {
                    node.line
                };
                self.fail(line, at.label, format!("{e} in {field}"))
            }
        }
    }

    /// A JSON value whose strings are template strings.
    fn template(&mut self, node: &Node, field: &str, at: At<'_>) -> Required<Template> {
        match &node.kind {
            Kind::String(s) => self
                .parse_template_string(node, s, field, at)
                .map(Template::string),
            Kind::Seq(items) => {
                // Read every item before giving up, to report every problem.
                let items: Vec<_> = items.iter().map(|n| self.template(n, field, at)).collect();
                Ok(Template::array(
                    items.into_iter().collect::<Result<_, _>>()?,
                ))
            }
            Kind::Map(entries) => {
                let entries: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| self.template(v, field, at).map(|t| (k.name.clone(), t)))
                    .collect();
                Ok(Template::object(
                    entries.into_iter().collect::<Result<_, _>>()?,
                ))
            }
            _ => Ok(Template::literal(node.to_value())),
        }
    }

    // -- steps ---------------------------------------------------------------

    fn steps(&mut self, node: &Node, parent: Option<usize>, at: At<'_>) -> Required<Vec<Step>> {
        let Kind::Seq(items) = &node.kind else {
            return self.type_error(node, "steps", at, "a list of steps");
        };
        if items.is_empty() {
            return self.fail(
                node.line,
                at.label,
                "steps must list at least one step".to_owned(),
            );
        }
        let steps: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, n)| self.step(n, i + 1, parent))
            .collect();
        steps.into_iter().collect()
    }

    fn step(&mut self, node: &Node, position: usize, parent: Option<usize>) -> Required<Step> {
        let Kind::Map(entries) = &node.kind else {
            let label = self.position_label(position, parent);
            let message = format!(
                "a step must be a mapping with id and type, found {}",
                node.describe()
            );
            return self.fail(node.line, Some(&label), message);
        };
        let mut f = Fields::new(node.line, entries);
        let id_text = match f.peek("id").map(|n| &n.kind) {
            Some(Kind::String(s)) => Some(s.clone()),
            _ => None,
        };
        let label = match &id_text {
            Some(id) => format!("step \"{id}\""),
            None => self.position_label(position, parent),
        };
        let index = self.steps.len();
        self.steps.push(StepInfo {
            id: id_text,
            id_line: f.key_line("id"),
            parent,
            label: label.clone(),
        });
        let at = At {
            label: Some(&label),
            consumer: Consumer {
                step: Some(index),
                in_loop: parent,
            },
        };

        let id = self.required(&mut f, "id", at).and_then(|n| {
            let text = self.string(n, "id", at)?;
            StepId::new(text).map_err(|e| self.problem(n.line, at.label, e))
        });
        let kind = self.required(&mut f, "type", at).and_then(|n| {
            let text = self.string(n, "type", at)?;
            match text {
                "code" | "http" | "loop" => Ok((text, n.line)),
                other => self.fail(
                    n.line,
                    at.label,
                    format!("unknown step type \"{other}\" (expected code, http or loop)"),
                ),
            }
        });
        let when = self.optional(&mut f, "when", |d, n| d.template(n, "when", at));
        let retry = self.optional(&mut f, "retry", |d, n| d.retry(n, at));
        let Ok((kind, type_line)) = kind else {
            // Without a type, the other fields cannot be judged.
            return Err(());
        };
        let step = match kind {
            "http" => self.http_step(&mut f, at, id, when, retry).map(Step::Http),
            "code" => self.code_step(&mut f, at, id, when, retry).map(Step::Code),
            _ => {
                if let Some(outer) = parent {
                    let outer = self.steps[outer].label.replacen("step", "loop", 1);
                    let message = format!("loops cannot be nested, and this one is inside {outer}");
                    self.problem(type_line, at.label, message);
                }
                self.loop_step(&mut f, at, index, id, when, retry)
                    .map(Step::Loop)
            }
        };
        let kind_fields = match kind {
            "http" => HTTP_FIELDS,
            "code" => CODE_FIELDS,
            _ => LOOP_FIELDS,
        };
        let known: Vec<&str> = COMMON_FIELDS.iter().chain(kind_fields).copied().collect();
        let article = if kind == "http" { "an" } else { "a" };
        self.unknown_fields(&f, at.label, &known, &format!("{article} {kind} step"));
        step
    }

    fn position_label(&self, position: usize, parent: Option<usize>) -> String {
        match parent {
            None => format!("step #{position}"),
            Some(p) => format!(
                "step #{position} of {}",
                self.steps[p].label.replacen("step", "loop", 1)
            ),
        }
    }

    fn http_step(
        &mut self,
        f: &mut Fields<'_>,
        at: At<'_>,
        id: Required<StepId>,
        when: Field<Template>,
        retry: Field<Retry>,
    ) -> Required<HttpStep> {
        let method = self.optional(f, "method", |d, n| {
            let text = d.string(n, "method", at)?;
            Method::ALL.into_iter().find(|m| m.as_str() == text).ok_or_else(|| {
                d.problem(
                    n.line,
                    at.label,
                    format!("unknown method \"{text}\" (expected GET, POST, PUT, PATCH, DELETE or HEAD)"),
                )
            })
        });
        let url = self.required(f, "url", at).and_then(|n| {
            let url = self.template_string(n, "url", at)?;
            check_url(&url).map_err(|e| self.problem(n.line, at.label, e))?;
            Ok(url)
        });
        let headers = self.optional(f, "headers", |d, n| d.string_map(n, "header", at, true));
        let query = self.optional(f, "query", |d, n| d.string_map(n, "query", at, false));
        let body = self.optional(f, "body", |d, n| d.template(n, "body", at));
        let credential = self.optional(f, "credential", |d, n| {
            let text = d.string(n, "credential", at)?;
            CredentialName::new(text).map_err(|e| d.problem(n.line, at.label, e))
        });
        let timeout = self.optional(f, "timeout", |d, n| d.step_timeout(n, at));
        let max_response_bytes = self.optional(f, "max_response_bytes", |d, n| {
            d.byte_size(n, "max_response_bytes", ByteSize(1), None, at)
        });
        Ok(HttpStep {
            id: id?,
            method: method?.unwrap_or_default(),
            url: url?,
            headers: headers?.unwrap_or_default(),
            query: query?.unwrap_or_default(),
            body: body?,
            credential: credential?,
            timeout: timeout?.unwrap_or(DEFAULT_TIMEOUT),
            max_response_bytes: max_response_bytes?.unwrap_or_default(),
            retry: retry?,
            when: when?,
        })
    }

    /// Headers or query parameters: names to template strings.
    fn string_map(
        &mut self,
        node: &Node,
        what: &str,
        at: At<'_>,
        headers: bool,
    ) -> Required<IndexMap<String, TemplateString>> {
        let field = if headers { "headers" } else { "query" };
        let Kind::Map(entries) = &node.kind else {
            return self.type_error(node, field, at, "a mapping of names to strings");
        };
        let mut out = IndexMap::new();
        let mut ok = true;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (key, value) in entries {
            if headers {
                if !is_header_name(&key.name) {
                    self.problem(
                        key.line,
                        at.label,
                        format!("invalid header name \"{}\"", key.name),
                    );
                    ok = false;
                }
                let lower = key.name.to_ascii_lowercase();
                if crate::action::http::ENGINE_HEADERS.contains(&lower.as_str()) {
                    self.problem(
                        key.line,
                        at.label,
                        format!(
                            "header \"{}\" is the engine's to set (it follows the url and the body), \
                             not a definition's",
                            key.name
                        ),
                    );
                    ok = false;
                }
                if let Some(first) = seen.get(&lower) {
                    let message = format!(
                        "duplicate header \"{}\" (also at line {first}; names ignore case)",
                        key.name
                    );
                    self.problem(key.line, at.label, message);
                    ok = false;
                }
                seen.insert(lower, key.line);
            }
            match self.template_string(value, &format!("{what} \"{}\"", key.name), at) {
                Ok(t) => {
                    out.insert(key.name.clone(), t);
                }
                Err(()) => ok = false,
            }
        }
        if ok { Ok(out) } else { Err(()) }
    }

    fn code_step(
        &mut self,
        f: &mut Fields<'_>,
        at: At<'_>,
        id: Required<StepId>,
        when: Field<Template>,
        retry: Field<Retry>,
    ) -> Required<CodeStep> {
        let runtime = self.optional(f, "runtime", |d, n| match d.string(n, "runtime", at)? {
            "v8" => Ok(Runtime::V8),
            "quickjs" => Ok(Runtime::QuickJs),
            other => d.fail(
                n.line,
                at.label,
                format!("unknown runtime \"{other}\" (expected v8 or quickjs)"),
            ),
        });
        let source_line = f.key_line("source");
        let file_line = f.key_line("file");
        let source = self.optional(f, "source", |d, n| {
            let text = d.string(n, "source", at)?;
            if text.trim().is_empty() {
                return d.fail(n.line, at.label, "source is empty".to_owned());
            }
            Ok(text.to_owned())
        });
        let file = self.optional(f, "file", |d, n| {
            let text = d.string(n, "file", at)?;
            if text.trim().is_empty() {
                return d.fail(n.line, at.label, "file is empty".to_owned());
            }
            Ok(PathBuf::from(text))
        });
        let code = match (source, file) {
            (Ok(Some(source)), Ok(None)) => Ok(CodeSource::Source(source)),
            (Ok(None), Ok(Some(file))) => Ok(CodeSource::File(file)),
            (Ok(Some(_)), Ok(Some(_))) => self.fail(
                source_line.max(file_line),
                at.label,
                "a code step takes source or file, not both".to_owned(),
            ),
            (Ok(None), Ok(None)) => self.fail(
                f.line,
                at.label,
                "a code step needs source (the JavaScript) or file (a path to it)".to_owned(),
            ),
            _ => Err(()),
        };
        let input = self.optional(f, "input", |d, n| d.template(n, "input", at));
        let timeout = self.optional(f, "timeout", |d, n| d.step_timeout(n, at));
        let heap = self.optional(f, "heap", |d, n| {
            let most = (d.limits.step_heap.min(LARGEST_HEAP), "limits.step_heap");
            d.byte_size(n, "heap", SMALLEST_HEAP, Some(most), at)
        });
        Ok(CodeStep {
            id: id?,
            runtime: runtime?.unwrap_or_default(),
            code: code?,
            input: input?.unwrap_or_else(super::default_code_input),
            timeout: timeout?.unwrap_or(DEFAULT_TIMEOUT),
            heap: heap?,
            retry: retry?,
            when: when?,
        })
    }

    fn loop_step(
        &mut self,
        f: &mut Fields<'_>,
        at: At<'_>,
        index: usize,
        id: Required<StepId>,
        when: Field<Template>,
        retry: Field<Retry>,
    ) -> Required<LoopStep> {
        let for_each = self.required(f, "for_each", at).and_then(|n| {
            let t = self.template(n, "for_each", at)?;
            let is_array = match (t.as_literal(), t.as_template_string()) {
                (Some(v), _) => v.is_array(),
                (None, Some(s)) => s.whole_expression().is_some(),
                // An array with expressions in it.
                (None, None) => matches!(n.kind, Kind::Seq(_)),
            };
            if !is_array {
                let message = format!(
                    "for_each must be an array or one {{{{ expression }}}} that gives an array, found {}",
                    n.describe()
                );
                return self.fail(n.line, at.label, message);
            }
            Ok(t)
        });
        let concurrency = self.optional(f, "concurrency", |d, n| {
            let c = d.whole_number(n, "concurrency", at, 1, u64::from(MAX_CONCURRENCY))?;
            Ok(u16::try_from(c).expect("checked range"))
        });
        let timeout = self.optional(f, "timeout", |d, n| d.step_timeout(n, at));
        let steps = self
            .required(f, "steps", at)
            .and_then(|n| self.steps(n, Some(index), at));
        Ok(LoopStep {
            id: id?,
            for_each: for_each?,
            concurrency: concurrency?.unwrap_or(1),
            steps: steps?,
            timeout: timeout?,
            retry: retry?,
            when: when?,
        })
    }

    fn retry(&mut self, node: &Node, at: At<'_>) -> Required<Retry> {
        let Kind::Map(entries) = &node.kind else {
            return self.type_error(
                node,
                "retry",
                at,
                "a mapping (max_attempts, backoff, jitter)",
            );
        };
        let mut f = Fields::new(node.line, entries);
        let max_attempts = self.optional(&mut f, "max_attempts", |d, n| {
            let v = d.whole_number(n, "retry.max_attempts", at, 1, u64::from(MAX_ATTEMPTS))?;
            Ok(u32::try_from(v).expect("checked range"))
        });
        let backoff = self.optional(&mut f, "backoff", |d, n| d.backoff(n, at));
        let jitter = self.optional(&mut f, "jitter", |d, n| d.boolean(n, "retry.jitter", at));
        self.unknown_fields(&f, at.label, RETRY_FIELDS, "retry");
        Ok(Retry {
            max_attempts: max_attempts?.unwrap_or(super::default_max_attempts()),
            backoff: backoff?.unwrap_or_default(),
            jitter: jitter?.unwrap_or(true),
        })
    }

    fn backoff(&mut self, node: &Node, at: At<'_>) -> Required<Backoff> {
        let Kind::Map(entries) = &node.kind else {
            return self.type_error(
                node,
                "retry.backoff",
                at,
                "a mapping (initial, max, multiplier)",
            );
        };
        let mut f = Fields::new(node.line, entries);
        let initial = self.optional(&mut f, "initial", |d, n| {
            d.duration(n, "retry.backoff.initial", at)
        });
        let max = self.optional(&mut f, "max", |d, n| {
            d.positive_duration(n, "retry.backoff.max", at)
        });
        let multiplier = self.optional(&mut f, "multiplier", |d, n| match &n.kind {
            Kind::Number(x) if x.as_f64().is_some_and(|x| x >= 1.0) => {
                Ok(x.as_f64().expect("checked as_f64"))
            }
            _ => d.type_error(
                n,
                "retry.backoff.multiplier",
                at,
                "a number of at least 1.0",
            ),
        });
        self.unknown_fields(&f, at.label, BACKOFF_FIELDS, "retry.backoff");
        let backoff = Backoff {
            initial: initial?.unwrap_or_else(super::default_initial),
            max: max?.unwrap_or_else(super::default_max),
            multiplier: multiplier?.unwrap_or_else(super::default_multiplier),
        };
        if backoff.initial > backoff.max {
            let message = format!(
                "retry.backoff.initial ({}) must not be more than retry.backoff.max ({})",
                humantime::format_duration(backoff.initial),
                humantime::format_duration(backoff.max)
            );
            return self.fail(node.line, at.label, message);
        }
        Ok(backoff)
    }
}

/// Puts `for <field>` after a value's problem and before its advice:
/// `invalid duration "10" for timeout (add a unit: 10s, 10ms, ...)`.
fn for_field(message: &str, field: &str) -> String {
    match message.split_once(" (") {
        Some((problem, advice)) => format!("{problem} for {field} ({advice}"),
        None => format!("{message} for {field}"),
    }
}

/// A URL template must be `http://` or `https://`, unless an expression
/// supplies its start.
fn check_url(url: &TemplateString) -> Result<(), String> {
    let start = url.leading_text().to_ascii_lowercase();
    let starts_well = ["http://", "https://"].iter().any(|scheme| {
        start.starts_with(scheme) || (!url.is_literal() && scheme.starts_with(start.as_str()))
    });
    if starts_well {
        Ok(())
    } else {
        Err(format!("url \"{url}\" must start with http:// or https://"))
    }
}

/// An HTTP token (RFC 9110): the characters a header name may have.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The candidate nearest `word` by edit distance, if near enough to be a typo.
pub(super) fn closest<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_near() {
        assert_eq!(closest("urll", ["url", "method"].into_iter()), Some("url"));
        assert_eq!(
            closest("mehtod", ["url", "method"].into_iter()),
            Some("method")
        );
        assert_eq!(closest("xyz", ["url", "method"].into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn urls() {
        let ok = |s: &str| check_url(&TemplateString::parse(s).expect("parses")).is_ok();
        assert!(ok("https://api.example.com/x"));
        assert!(ok("HTTP://api.example.com"));
        assert!(ok("{{ input.base }}/items"));
        assert!(ok("http{{ input.s }}://host"));
        assert!(!ok("api.example.com/x"));
        assert!(!ok("ftp://x"));
        assert!(!ok("http"));
    }

    #[test]
    fn header_names() {
        assert!(is_header_name("Content-Type"));
        assert!(is_header_name("X-Request-Id"));
        assert!(!is_header_name("Content Type"));
        assert!(!is_header_name(""));
    }

    /// The decoder lists each mapping's fields and fills in defaults itself
    /// (for its line-numbered messages); the schema and serde derive theirs
    /// from the types. The two must say the same.
    #[test]
    fn the_decoders_field_lists_are_the_schemas() {
        let schema = crate::model::json_schema();
        let sorted = |fields: Vec<&str>| {
            let mut fields: Vec<String> = fields.into_iter().map(str::to_owned).collect();
            fields.sort();
            fields
        };
        let properties = |value: &serde_json::Value| {
            let mut keys: Vec<String> = value["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("no properties in {value}"))
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let def = |name: &str| schema["$defs"][name].clone();
        // A variant of a oneOf by its `type`'s constant.
        let variant = |name: &str, kind: &str| {
            def(name)["oneOf"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} is not a oneOf"))
                .iter()
                .find(|v| v["properties"]["type"]["const"] == kind)
                .unwrap_or_else(|| panic!("{name} has no {kind} variant"))
                .clone()
        };
        assert_eq!(sorted(INTEGRATION_FIELDS.to_vec()), properties(&schema));
        assert_eq!(sorted(ALERT_FIELDS.to_vec()), properties(&def("Alert")));
        assert_eq!(
            sorted(EMAIL_FIELDS.to_vec()),
            properties(&def("EmailAlert"))
        );
        assert_eq!(sorted(RETRY_FIELDS.to_vec()), properties(&def("Retry")));
        assert_eq!(sorted(BACKOFF_FIELDS.to_vec()), properties(&def("Backoff")));
        assert_eq!(
            sorted(TRIGGER_FIELDS.to_vec()),
            properties(&variant("Trigger", "webhook"))
        );
        assert_eq!(
            sorted(CRON_FIELDS.to_vec()),
            properties(&variant("Trigger", "cron"))
        );
        for (kind, fields) in [
            ("http", HTTP_FIELDS),
            ("code", CODE_FIELDS),
            ("loop", LOOP_FIELDS),
        ] {
            let all = COMMON_FIELDS.iter().chain(fields).copied().collect();
            assert_eq!(
                sorted(all),
                properties(&variant("Step", kind)),
                "{kind} step"
            );
        }
    }

    /// What the decoder fills in for a field left out is what serde (and
    /// so the schema's `default`) gives the same definition as JSON.
    #[test]
    fn the_decoders_defaults_are_the_types() {
        let yaml = r#"
apiVersion: isoflow.dev/v1
name: defaults
version: 1
triggers:
  - id: hook
    type: webhook
    auth: token
    secret: hook-key
  - id: nightly
    type: cron
    schedule: "0 2 * * *"
alerts:
  - on: failed
    webhook: https://alerts.example.com/x
    secret: alert-key
steps:
  - id: fetch
    type: http
    url: https://api.example.com/x
    retry: {}
  - id: shape
    type: code
    source: "export default (x) => x"
    retry:
      backoff: {}
  - id: each
    type: loop
    for_each: "{{ steps.shape.output }}"
    steps:
      - id: inner
        type: code
        source: "export default (x) => x"
"#;
        let decoded = crate::model::load("defaults.yaml", yaml).expect("a valid definition");
        let as_json = serde_json::to_value(&decoded).expect("serializes");
        // The same definition with nothing filled in, through serde.
        let sparse: serde_json::Value = serde_json::json!({
            "apiVersion": "isoflow.dev/v1",
            "name": "defaults",
            "version": 1,
            "triggers": [
                {"id": "hook", "type": "webhook", "auth": "token", "secret": "hook-key"},
                {"id": "nightly", "type": "cron", "schedule": "0 2 * * *"}
            ],
            "alerts": [{"on": "failed", "webhook": "https://alerts.example.com/x",
                        "secret": "alert-key"}],
            "steps": [
                {"id": "fetch", "type": "http", "url": "https://api.example.com/x", "retry": {}},
                {"id": "shape", "type": "code", "source": "export default (x) => x",
                 "retry": {"backoff": {}}},
                {"id": "each", "type": "loop", "for_each": "{{ steps.shape.output }}",
                 "steps": [{"id": "inner", "type": "code", "source": "export default (x) => x"}]}
            ]
        });
        let through_serde: crate::model::Integration =
            serde_json::from_value(sparse).expect("serde reads the sparse definition");
        assert_eq!(
            serde_json::to_value(&through_serde).expect("serializes"),
            as_json,
            "the decoder's defaults differ from the types'"
        );
    }
}
