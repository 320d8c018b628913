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
use crate::sandbox::{Execution, Runtime, Script, StepError};
use crate::store::LogRecord;

pub(crate) enum Job {
    Code(CodeJob),
    Http(Box<http::Request>),
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
            shared,
            timings,
            job,
            token,
            attempt,
            step_key,
            reply,
        } = args;
        let (result, logs) = match job {
            Job::Code(code) => run_code(&shared, &timings, code, &step_key, attempt).await,
            Job::Http(request) => {
                let start = std::time::Instant::now();
                let result = run_http(&shared, &request).await;
                timings.add_execution(start.elapsed());
                (result, Vec::new())
            }
        };
        reply.send_message(SeqMsg::Done {
            token,
            result,
            logs,
        })?;
        Ok(())
    }
}

pub(crate) async fn run_code(
    shared: &Shared,
    timings: &Timings,
    code: CodeJob,
    step_key: &str,
    attempt: u32,
) -> (Result<Value, Failure>, Vec<LogRecord>) {
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
    (result, logs)
}

pub(crate) async fn run_http(shared: &Shared, request: &http::Request) -> Result<Value, Failure> {
    match shared.http.send(request).await {
        Ok(response) => serde_json::to_value(response)
            .map_err(|e| Failure::permanent(format!("cannot represent the response: {e}"))),
        Err(error) => {
            let message = error.to_string();
            // An error page may echo the request, credential and all.
            let message = match &request.credential {
                Some(secret) => http::scrub(&message, secret).into_owned(),
                None => message,
            };
            Err(Failure {
                retryable: error.is_retryable(),
                retry_after: error.retry_after(),
                message,
            })
        }
    }
}
