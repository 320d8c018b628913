//! The step actor: one attempt of a code or http step. It reports to its
//! sequence and is stopped by it; a panic here is the sequence's
//! supervision event.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

use super::Shared;
use super::context::Timings;
use super::sequence::{Failure, SeqMsg};
use crate::action::http;
use crate::credential::Credential;
use crate::sandbox::{Execution, Runtime, Script, StepError};
use crate::store::LogRecord;

pub(crate) enum Job {
    Code(CodeJob),
    Http(Box<HttpJob>),
}

/// A rendered request, and the credential it is to carry (fetched right
/// before it is sent, and forgotten after).
pub(crate) struct HttpJob {
    pub(crate) request: http::Request,
    pub(crate) credential: Option<String>,
    pub(crate) run_id: String,
}

pub(crate) struct CodeJob {
    /// Whose step it is: it runs in a sandbox process of this tenant only.
    pub(crate) tenant: Arc<str>,
    pub(crate) runtime: Runtime,
    pub(crate) script: Script,
    /// The rendered input, already JSON text.
    pub(crate) input_json: String,
    pub(crate) limits: crate::sandbox::Limits,
}

pub(crate) struct StepArgs {
    /// The run's span here: the attempt's span goes under it.
    pub(crate) run_span: tracing::Span,
    /// The run's place in its trace, if it is traced.
    pub(crate) trace: Option<Arc<str>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) timings: Arc<Timings>,
    pub(crate) job: Job,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
    pub(crate) step_key: String,
    pub(crate) reply: ActorRef<SeqMsg>,
}

/// One attempt of a code or http step. It reports to its sequence and is
/// stopped by it; a panic here is the sequence's supervision event.
pub(crate) struct StepActor;

pub(crate) enum StepMsg {
    Run,
}

impl Actor for StepActor {
    type Msg = StepMsg;
    type State = Option<StepArgs>;
    type Arguments = StepArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StepMsg>,
        args: StepArgs,
    ) -> Result<Option<StepArgs>, ActorProcessingErr> {
        myself.send_message(StepMsg::Run)?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        _myself: ActorRef<StepMsg>,
        _message: StepMsg,
        state: &mut Option<StepArgs>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(args) = state.take() else {
            return Ok(());
        };
        let StepArgs {
            run_span,
            trace,
            shared,
            timings,
            job,
            token,
            attempt,
            step_key,
            reply,
        } = args;
        let (kind, runtime, bytes_in) = match &job {
            Job::Code(code) => ("code", runtime_name(code.runtime), code.input_json.len()),
            Job::Http(job) => ("http", "none", job.request.body_len()),
        };
        let span = tracing::debug_span!(
            target: crate::telemetry::TARGET,
            parent: &run_span,
            "step",
            step.key = %step_key,
            step.kind = kind,
            step.attempt = attempt,
            step.runtime = runtime,
            step.bytes_in = bytes_in,
            step.bytes_out = tracing::field::Empty,
            step.outcome = tracing::field::Empty,
            error.message = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(trace) = &trace {
            shared.telemetry.adopt(&span, trace);
        }
        // Without a span of its own (tracing off), log lines of the
        // attempt still carry the run's.
        let current = if span.is_disabled() {
            run_span.clone()
        } else {
            span.clone()
        };
        let start = std::time::Instant::now();
        let attempt_done = async {
            match job {
                Job::Code(code) => run_code(&shared, &timings, code, &step_key, attempt).await,
                Job::Http(job) => {
                    let result = run_http(&shared, *job, &span).await;
                    timings.add_execution(start.elapsed());
                    let bytes = result.as_ref().map_or(0, |(_, bytes)| *bytes);
                    (result.map(|(value, _)| value), Vec::new(), bytes)
                }
            }
        };
        let (result, logs, bytes) = tracing::Instrument::instrument(attempt_done, current).await;
        shared
            .telemetry
            .step_attempt(kind, runtime, start.elapsed());
        match &result {
            Ok(_) => {
                span.record("step.outcome", "succeeded");
                span.record("step.bytes_out", bytes);
            }
            Err(failure) => {
                span.record("step.outcome", "failed");
                span.record("error.message", short(&failure.message));
                span.record("otel.status_code", "ERROR");
            }
        }
        reply.send_message(SeqMsg::Done {
            token,
            result,
            logs,
            bytes,
        })?;
        Ok(())
    }
}

fn runtime_name(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::V8 => "v8",
        Runtime::QuickJs => "quickjs",
    }
}

/// An error text as a span shows it: the first KiB (the stored error is
/// the whole of it).
fn short(message: &str) -> &str {
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

pub(crate) async fn run_code(
    shared: &Shared,
    timings: &Timings,
    code: CodeJob,
    step_key: &str,
    attempt: u32,
) -> (Result<Value, Failure>, Vec<LogRecord>, u64) {
    let CodeJob {
        tenant,
        runtime,
        script,
        input_json,
        limits,
    } = code;
    let outcome = shared
        .sandbox
        .execute(
            Execution::new(runtime, script, input_json)
                .limits(limits)
                .tenant(tenant),
        )
        .await;
    timings.add_execution(outcome.duration);
    shared.telemetry.sandbox(
        runtime_name(runtime),
        outcome.queue_wait,
        outcome.isolate_create,
    );
    let bytes = outcome.result.as_ref().map_or(0, |json| json.len() as u64);
    let logs = outcome
        .logs
        .iter()
        .map(|line| LogRecord {
            step_key: step_key.to_owned(),
            attempt,
            level: format!("{:?}", line.level).to_lowercase(),
            message: line.message.clone(),
            time_ms: line
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .collect();
    let result = match outcome.result {
        Ok(json) => serde_json::from_str(&json).map_err(|e| {
            // The sandbox checks that an output is JSON; what it cannot
            // know is that runs store JSON nested at most 128 deep
            // (deeper would take the node's stack on every read).
            if e.to_string().starts_with("recursion limit exceeded") {
                Failure::permanent(
                    "step output nests deeper than 128 levels, more than a run can store"
                        .to_owned(),
                )
            } else {
                Failure::transient(format!("step output is not valid JSON: {e}"))
            }
        }),
        Err(error) => {
            // A program that does not compile never will; anything else
            // (an exception, a limit) may depend on the input or the time.
            let retryable = !matches!(
                error,
                StepError::Syntax { .. } | StepError::Module { .. } | StepError::Unavailable(_)
            );
            Err(Failure {
                message: error.to_string(),
                retryable,
                retry_after: None,
            })
        }
    };
    (result, logs, bytes)
}

/// One http attempt: its output and the response body's size.
pub(crate) async fn run_http(
    shared: &Shared,
    job: HttpJob,
    span: &tracing::Span,
) -> Result<(Value, u64), Failure> {
    let HttpJob {
        mut request,
        credential,
        run_id,
    } = job;
    // The receiver may continue the run's trace from the step's span.
    request.traceparent = shared.telemetry.traceparent(span);
    let mut sent = None;
    if let Some(name) = credential {
        let credential = shared
            .credentials
            .credential(&request.tenant, &run_id, &name)
            .await
            .map_err(|e| Failure::transient(format!("cannot fetch credential {name:?}: {e}")))?
            .ok_or_else(|| Failure::permanent(format!("credential {name:?} is not defined")))?;
        admit(&name, &credential, &request)?;
        let bare = request.clone();
        credential.apply(&mut request);
        sent = Some((name, credential, bare));
    }
    let mut result = shared.http.send(&request).await;
    // An OAuth2 access token refused with 401 is renewed, and the request
    // sent once more with the new one.
    if let (Err(http::HttpError::Status { status: 401, .. }), Some((name, credential, bare))) =
        (&result, sent)
        && credential.renewable
    {
        let renewed = shared
            .credentials
            .renewed(&bare.tenant, &run_id, &name, credential.kind.secret())
            .await
            .map_err(|e| Failure::transient(format!("cannot renew credential {name:?}: {e}")))?;
        if let Some(renewed) = renewed.filter(|r| r.kind.secret() != credential.kind.secret()) {
            admit(&name, &renewed, &bare)?;
            request = bare;
            renewed.apply(&mut request);
            result = shared.http.send(&request).await;
        }
    }
    match result {
        Ok(response) => {
            let bytes = response.body_bytes;
            serde_json::to_value(response)
                .map(|value| (value, bytes))
                .map_err(|e| Failure::permanent(format!("cannot represent the response: {e}")))
        }
        Err(error) => {
            // An error page may echo the request, credential and all.
            let message = request
                .secrets
                .iter()
                .fold(error.to_string(), |message, secret| {
                    http::scrub(&message, secret).into_owned()
                });
            Err(Failure {
                retryable: error.is_retryable(),
                retry_after: error.retry_after(),
                message,
            })
        }
    }
}

/// Whether `credential` may go on `request`: its URL (query included, as it
/// will be sent) under one of the credential's origins, and no header of the
/// step's where the credential goes.
fn admit(name: &str, credential: &Credential, request: &http::Request) -> Result<(), Failure> {
    if let Some(header) = credential.header()
        && let Some((set, _)) = request
            .headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(&header))
    {
        return Err(Failure::permanent(format!(
            "header {set:?} cannot be set on a step that sends credential {name:?}: \
             the credential goes there"
        )));
    }
    // A URL that does not parse fails the same way in the request.
    let admitted = reqwest::Url::parse(&request.url).is_ok_and(|mut url| {
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&request.query);
        }
        credential.admits(&url)
    });
    if admitted {
        return Ok(());
    }
    let origins: Vec<String> = credential.origins.iter().map(ToString::to_string).collect();
    let url = shown_url(&request.url);
    Err(Failure::permanent(match origins.len() {
        0 => format!(
            "credential {name:?} names no origin, so it may be sent nowhere, \
             {url} included: nothing was sent"
        ),
        1 => format!(
            "credential {name:?} may be sent only to {}, and {url} is not under it: \
             nothing was sent",
            origins[0]
        ),
        _ => format!(
            "credential {name:?} may be sent only to {}, and {url} is under none of \
             them: nothing was sent",
            origins.join(", ")
        ),
    }))
}

/// A URL as an error may show it: without user and password, and cut.
fn shown_url(url: &str) -> String {
    let shown = reqwest::Url::parse(url).map_or_else(|_| url.to_owned(), |u| http::redact(&u));
    let mut end = shown.len().min(200);
    while !shown.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < shown.len() { "…" } else { "" };
    format!("{:?}", format!("{}{more}", &shown[..end]))
}
