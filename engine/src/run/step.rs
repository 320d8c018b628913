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
    Code {
        runtime: Runtime,
        script: Script,
        input: Value,
        limits: crate::sandbox::Limits,
    },
    Http(Box<http::Request>),
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
        let (result, logs) = match &args.job {
            Job::Code {
                runtime,
                script,
                input,
                limits,
            } => run_code(&args, *runtime, script.clone(), input, *limits).await,
            Job::Http(request) => {
                let start = std::time::Instant::now();
                let result = run_http(&args.shared, request).await;
                args.timings.add_execution(start.elapsed());
                (result, Vec::new())
            }
        };
        args.reply.send_message(SeqMsg::Done {
            token: args.token,
            result,
            logs,
        })?;
        Ok(())
    }
}

pub(crate) async fn run_code(
    args: &StepArgs,
    runtime: Runtime,
    script: Script,
    input: &Value,
    limits: crate::sandbox::Limits,
) -> (Result<Value, Failure>, Vec<LogRecord>) {
    let StepArgs {
        shared,
        timings,
        step_key,
        attempt,
        ..
    } = args;
    let attempt = *attempt;
    let input_json = match serde_json::to_string(input) {
        Ok(json) => json,
        Err(e) => {
            return (
                Err(Failure::permanent(format!(
                    "cannot serialise the step's input: {e}"
                ))),
                Vec::new(),
            );
        }
    };
    let outcome = shared
        .sandbox
        .execute(Execution::new(runtime, script, input_json).limits(limits))
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
        Ok(json) => serde_json::from_str(&json)
            .map_err(|e| Failure::transient(format!("step output is not valid JSON: {e}"))),
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
        Err(error) => Err(Failure {
            retryable: error.is_retryable(),
            retry_after: error.retry_after(),
            message: error.to_string(),
        }),
    }
}
