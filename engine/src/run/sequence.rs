//! The sequence actor: a run's steps, or one loop element's, one after
//! another. It owns the steps' policy: `when`, rendering, time-outs,
//! retries and checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::Value;

use super::context::{End, RunCtx};
use super::for_each::{LoopActor, LoopArgs, LoopMsg};
use super::journal::Restored;
use super::step::{CodeJob, HttpJob, Job, StepActor, StepArgs};
use super::{Outputs, RunEvent, retry_delay};
use crate::action::http;
use crate::model::{self, CodeSource, HttpStep, LoopStep, Scope, Step};
use crate::sandbox::Script;
use crate::store::{LogRecord, RunStatus, StepRecord, StepStatus, now_ms};

pub(crate) enum SeqMsg {
    /// Go on with the next step.
    Next,
    /// A child (step attempt or loop) finished.
    Done {
        token: u64,
        result: Result<Value, Failure>,
        logs: Vec<LogRecord>,
        /// The output's size as the step saw it (0: not known).
        bytes: u64,
    },
    /// A loop child stopped because the engine is draining.
    Stopped {
        token: u64,
    },
    TimedOut {
        token: u64,
    },
    Retry {
        token: u64,
    },
    Cancel,
    Drain,
}

/// Why an attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) retryable: bool,
    pub(crate) retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }
}

/// Whose steps a sequence runs.
pub(crate) enum SeqScope {
    /// The integration's top-level steps: the sequence is the run.
    Top,
    /// The steps of loop `steps[loop_index]` for one element.
    Item {
        loop_index: usize,
        index: usize,
        item: Arc<Value>,
        top: Arc<Outputs>,
        parent: ActorRef<LoopMsg>,
    },
}

/// Extra time a code or http attempt gets beyond its own time limit (which
/// the sandbox or the http client enforce) before its sequence gives up on
/// it.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct SeqArgs {
    pub(crate) ctx: Arc<RunCtx>,
    pub(crate) scope: SeqScope,
}

pub(crate) struct Sequence;

pub(crate) struct SeqState {
    pub(crate) ctx: Arc<RunCtx>,
    pub(crate) scope: SeqScope,
    pub(crate) outputs: Outputs,
    /// Index of the step to run next (or running now).
    pub(crate) next: usize,
    pub(crate) current: Option<Current>,
    pub(crate) token: u64,
    pub(crate) draining: bool,
    /// The element's own record was written with its last step.
    pub(crate) item_recorded: bool,
}

pub(crate) struct Current {
    pub(crate) attempt: u32,
    pub(crate) token: u64,
    pub(crate) started: Instant,
    pub(crate) started_ms: u64,
    /// The running child; `None` while waiting to retry.
    pub(crate) child: Option<ActorCell>,
    pub(crate) timer: Option<tokio::task::JoinHandle<Result<(), ractor::MessagingErr<SeqMsg>>>>,
}

impl SeqState {
    fn steps(&self) -> &[Step] {
        match &self.scope {
            SeqScope::Top => &self.ctx.integration.steps,
            SeqScope::Item { loop_index, .. } => match &self.ctx.integration.steps[*loop_index] {
                Step::Loop(l) => &l.steps,
                _ => &[],
            },
        }
    }

    fn step(&self) -> &Step {
        &self.steps()[self.next]
    }

    fn key(&self, id: &str) -> String {
        match &self.scope {
            SeqScope::Top => id.to_owned(),
            SeqScope::Item { index, .. } => format!("{}/{id}", self.item_key(*index)),
        }
    }

    fn item_key(&self, index: usize) -> String {
        match &self.scope {
            SeqScope::Item { loop_index, .. } => {
                format!(
                    "{}/{index:08}",
                    self.ctx.integration.steps[*loop_index].id()
                )
            }
            SeqScope::Top => String::new(),
        }
    }

    /// Evaluates `f` with the scope this sequence's templates see.
    fn with_scope<R>(&self, f: impl FnOnce(&Scope<'_>) -> R) -> R {
        match &self.scope {
            SeqScope::Top => f(&Scope::new(&self.ctx.input, &self.outputs)),
            SeqScope::Item {
                index, item, top, ..
            } => {
                let both = (&self.outputs, &**top);
                f(&Scope::new(&self.ctx.input, &both).with_item(item, *index))
            }
        }
    }

    fn is_last(&self) -> bool {
        self.next + 1 == self.steps().len()
    }
}

impl Actor for Sequence {
    type Msg = SeqMsg;
    type State = SeqState;
    type Arguments = SeqArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SeqMsg>,
        args: SeqArgs,
    ) -> Result<SeqState, ActorProcessingErr> {
        myself.send_message(SeqMsg::Next)?;
        Ok(SeqState {
            ctx: args.ctx,
            scope: args.scope,
            outputs: Outputs::default(),
            next: 0,
            current: None,
            token: 0,
            draining: false,
            item_recorded: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SeqMsg>,
        message: SeqMsg,
        state: &mut SeqState,
    ) -> Result<(), ActorProcessingErr> {
        // Log lines of the run carry its span's fields (its id, its trace).
        let span = state.ctx.span.clone();
        let handled = async move {
            match message {
                SeqMsg::Next => next(&myself, state).await,
                SeqMsg::Done {
                    token,
                    result,
                    logs,
                    bytes,
                } if is_current(state, token) => {
                    let current = state.current.as_mut().expect("checked by is_current");
                    if let Some(timer) = current.timer.take() {
                        timer.abort();
                    }
                    if let Some(child) = current.child.take() {
                        child.stop(None);
                    }
                    match result {
                        Ok(output) => succeeded(&myself, state, output, logs, bytes).await,
                        Err(failure) => failed(&myself, state, failure, logs).await,
                    }
                }
                SeqMsg::TimedOut { token } if is_current(state, token) => {
                    let current = state.current.as_mut().expect("checked by is_current");
                    let Some(child) = current.child.take() else {
                        return Ok(());
                    };
                    child.kill();
                    let limit = state.step().timeout().unwrap_or_default();
                    let failure = Failure::transient(format!(
                        "step timed out after {}",
                        humantime::format_duration(limit)
                    ));
                    failed(&myself, state, failure, Vec::new()).await
                }
                SeqMsg::Retry { token } if is_current(state, token) => {
                    let attempt = state.current.as_ref().map_or(1, |c| c.attempt + 1);
                    if state.draining || state.ctx.shared.draining.load(Ordering::Acquire) {
                        return stop_draining(&myself, state).await;
                    }
                    start_attempt(&myself, state, attempt).await
                }
                SeqMsg::Stopped { token } if is_current(state, token) => {
                    stop_draining(&myself, state).await
                }
                SeqMsg::Cancel => {
                    if matches!(state.scope, SeqScope::Top) {
                        let key = state
                            .steps()
                            .get(state.next)
                            .map(|s| state.key(s.id().as_str()));
                        myself.stop_children(None);
                        let error = key.map(|k| format!("cancelled during step {k:?}"));
                        state.ctx.end(RunStatus::Cancelled, None, error).await?;
                        myself.stop(Some("cancelled".into()));
                    }
                    Ok(())
                }
                SeqMsg::Drain => {
                    state.draining = true;
                    let idle = state.current.as_ref().is_none_or(|c| c.child.is_none());
                    if idle {
                        return stop_draining(&myself, state).await;
                    }
                    Ok(())
                }
                // A message about an attempt that is over (a late time-out, a
                // duplicate report): nothing to do.
                SeqMsg::Done { .. }
                | SeqMsg::TimedOut { .. }
                | SeqMsg::Retry { .. }
                | SeqMsg::Stopped { .. } => Ok(()),
            }
        };
        tracing::Instrument::instrument(handled, span).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SeqMsg>,
        event: SupervisionEvent,
        state: &mut SeqState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let is_child = state
                .current
                .as_ref()
                .and_then(|c| c.child.as_ref())
                .is_some_and(|child| child.get_id() == cell.get_id());
            if is_child {
                if let Some(current) = state.current.as_mut() {
                    current.child = None;
                    if let Some(timer) = current.timer.take() {
                        timer.abort();
                    }
                }
                let failure = Failure::transient(format!("step crashed: {error}"));
                return failed(&myself, state, failure, Vec::new()).await;
            }
        }
        Ok(())
    }
}

pub(crate) fn is_current(state: &SeqState, token: u64) -> bool {
    state.current.as_ref().is_some_and(|c| c.token == token)
}

/// Stops the sequence without finishing it: the run stays unfinished in the
/// store and resumes at the next start.
pub(crate) async fn stop_draining(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
) -> Result<(), ActorProcessingErr> {
    // A checkpoint still being written lands before the engine lets go of
    // the store; if it fails, the run resumes from the one before.
    let _ = state.ctx.settle().await;
    if let SeqScope::Item { index, parent, .. } = &state.scope {
        let _ = parent.send_message(LoopMsg::ItemStopped { index: *index });
    }
    myself.stop(Some("engine shut down".into()));
    Ok(())
}

pub(crate) async fn next(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
) -> Result<(), ActorProcessingErr> {
    state.current = None;
    if state.next >= state.steps().len() {
        return finish_sequence(myself, state).await;
    }
    if state.draining || state.ctx.shared.draining.load(Ordering::Acquire) {
        return stop_draining(myself, state).await;
    }
    let step = state.step().clone();
    let key = state.key(step.id().as_str());
    let ctx = state.ctx.clone();
    if ctx.resumed {
        let restored_step = ctx.journal.restored(&key)?;
        match restored_step {
            Some(Restored { record, output }) if record.status == StepStatus::Succeeded => {
                state.outputs.0.insert(
                    step.id().as_str().to_owned(),
                    Arc::new(output.unwrap_or(Value::Null)),
                );
                return restored(myself, state, key);
            }
            Some(Restored { record, .. }) if record.status == StepStatus::Skipped => {
                return restored(myself, state, key);
            }
            Some(_) | None => {}
        }
    }
    if let Some(when) = step.when() {
        let run = state.with_scope(|scope| model::truthy(&when.render(scope)));
        if !run {
            let now = now_ms();
            let record = StepRecord {
                step_key: key.clone(),
                status: StepStatus::Skipped,
                attempts: 0,
                started_at_ms: now,
                finished_at_ms: now,
                output_bytes: None,
                error: None,
                node: None,
            };
            let mut entries = vec![(record, None)];
            if state.is_last() {
                entries.extend(item_entry(state, None));
            }
            ctx.checkpoint(entries, Vec::new(), 0).await?;
            ctx.emit(RunEvent::StepFinished {
                step_key: key,
                status: StepStatus::Skipped,
                attempt: 0,
                duration: Duration::ZERO,
                error: None,
            });
            state.next += 1;
            myself.send_message(SeqMsg::Next)?;
            return Ok(());
        }
    }
    start_attempt(myself, state, 1).await
}

pub(crate) fn restored(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
    key: String,
) -> Result<(), ActorProcessingErr> {
    state.ctx.emit(RunEvent::StepRestored { step_key: key });
    state.next += 1;
    myself.send_message(SeqMsg::Next)?;
    Ok(())
}

/// The loop element's own record, written with its last step.
pub(crate) fn item_entry(
    state: &mut SeqState,
    output: Option<Arc<Value>>,
) -> Option<(StepRecord, Option<Arc<Value>>)> {
    let SeqScope::Item { index, .. } = &state.scope else {
        return None;
    };
    let now = now_ms();
    state.item_recorded = true;
    let record = StepRecord {
        step_key: state.item_key(*index),
        status: StepStatus::Succeeded,
        attempts: 1,
        started_at_ms: now,
        finished_at_ms: now,
        output_bytes: None,
        error: None,
        node: None,
    };
    Some((
        record,
        Some(output.unwrap_or_else(|| Arc::new(Value::Null))),
    ))
}

pub(crate) async fn start_attempt(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
    attempt: u32,
) -> Result<(), ActorProcessingErr> {
    state.token += 1;
    let token = state.token;
    let step = state.step().clone();
    let key = state.key(step.id().as_str());
    let started_ms = state.current.as_ref().map_or_else(now_ms, |c| c.started_ms);
    let started = state
        .current
        .as_ref()
        .map_or_else(Instant::now, |c| c.started);
    state.ctx.emit(RunEvent::StepStarted {
        step_key: key.clone(),
        attempt,
    });
    if !matches!(step, Step::Code(_)) {
        // An http request is an effect, and a loop's steps may have some:
        // every checkpoint before them is durable first.
        state.ctx.settle().await?;
    }
    let spawned: Result<ActorCell, Failure> = match &step {
        Step::Code(code) => {
            let source = match &code.code {
                CodeSource::Source(s) => s.clone(),
                CodeSource::File(f) => {
                    return failed_now(
                        myself,
                        state,
                        token,
                        attempt,
                        started,
                        started_ms,
                        Failure::permanent(format!(
                            "code file {} was not read before the run",
                            f.display()
                        )),
                    )
                    .await;
                }
            };
            let input_json = state.with_scope(|scope| code.input.render_json(scope));
            let mut limits = state.ctx.shared.sandbox.config().limits;
            limits.timeout = code.timeout;
            if let Some(heap) = code.heap {
                // Checked against the node's `limits.step_heap` at deploy.
                limits.heap_bytes = usize::try_from(heap.0).unwrap_or(usize::MAX);
            }
            let job = Job::Code(CodeJob {
                tenant: state.ctx.run.tenant.as_str().into(),
                runtime: code.runtime,
                script: Script::new(format!("{}.js", code.id.as_str()), source),
                input_json,
                limits,
            });
            spawn_step(myself, state, job, token, attempt, &key).await
        }
        Step::Http(h) => match render_http(state, h, &key) {
            Ok(request) => {
                spawn_step(
                    myself,
                    state,
                    Job::Http(Box::new(request)),
                    token,
                    attempt,
                    &key,
                )
                .await
            }
            Err(failure) => Err(failure),
        },
        Step::Loop(l) => spawn_loop(myself, state, l, token).await,
    };
    let child = match spawned {
        Ok(child) => child,
        Err(failure) => {
            return failed_now(myself, state, token, attempt, started, started_ms, failure).await;
        }
    };
    let limit = match &step {
        Step::Loop(l) => l.timeout,
        other => other.timeout().map(|t| t + TIMEOUT_GRACE),
    };
    let timer = limit.map(|limit| myself.send_after(limit, move || SeqMsg::TimedOut { token }));
    state.current = Some(Current {
        attempt,
        token,
        started,
        started_ms,
        child: Some(child),
        timer,
    });
    Ok(())
}

/// The longest error text a step's record keeps: whatever a tenant sized
/// (a thrown message, a URL, a server's answer) is cut here, once, before
/// it is stored, sent to watchers or returned by the API.
pub(crate) const MAX_STORED_ERROR: usize = 16 * 1024;

/// `message`, cut to [`MAX_STORED_ERROR`] bytes with its size noted.
pub(crate) fn bounded_error(message: String) -> String {
    if message.len() <= MAX_STORED_ERROR {
        return message;
    }
    let mut end = MAX_STORED_ERROR;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (error text cut at {end} of {} bytes)",
        &message[..end],
        message.len()
    )
}

/// An attempt that failed before it could start (a bad rendered request).
pub(crate) async fn failed_now(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
    token: u64,
    attempt: u32,
    started: Instant,
    started_ms: u64,
    failure: Failure,
) -> Result<(), ActorProcessingErr> {
    state.current = Some(Current {
        attempt,
        token,
        started,
        started_ms,
        child: None,
        timer: None,
    });
    failed(myself, state, failure, Vec::new()).await
}

pub(crate) async fn spawn_step(
    myself: &ActorRef<SeqMsg>,
    state: &SeqState,
    job: Job,
    token: u64,
    attempt: u32,
    key: &str,
) -> Result<ActorCell, Failure> {
    let args = StepArgs {
        run_span: state.ctx.span.clone(),
        trace: state.ctx.trace.clone(),
        shared: state.ctx.shared.clone(),
        timings: state.ctx.timings.clone(),
        job,
        token,
        attempt,
        step_key: key.to_owned(),
        reply: myself.clone(),
    };
    Actor::spawn_linked(None, StepActor, args, myself.get_cell())
        .await
        .map(|(actor, _)| actor.get_cell())
        .map_err(|e| Failure::transient(format!("cannot start the step: {e}")))
}

pub(crate) async fn spawn_loop(
    myself: &ActorRef<SeqMsg>,
    state: &SeqState,
    step: &LoopStep,
    token: u64,
) -> Result<ActorCell, Failure> {
    let items = match state.with_scope(|scope| step.for_each.render(scope)) {
        Value::Array(items) => items,
        other => {
            return Err(Failure::permanent(format!(
                "for_each gave {}, not an array",
                json_type(&other)
            )));
        }
    };
    let args = LoopArgs {
        ctx: state.ctx.clone(),
        loop_index: state.next,
        items: Arc::new(items),
        top: Arc::new(state.outputs.clone()),
        token,
        parent: myself.clone(),
    };
    Actor::spawn_linked(None, LoopActor, args, myself.get_cell())
        .await
        .map(|(actor, _)| actor.get_cell())
        .map_err(|e| Failure::transient(format!("cannot start the loop: {e}")))
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn render_http(
    state: &SeqState,
    step: &HttpStep,
    key: &str,
) -> Result<HttpJob, Failure> {
    let ctx = &state.ctx;
    state.with_scope(|scope| {
        if let Some(name) = &step.credential
            && let Some((header, _)) = step
                .headers
                .iter()
                .find(|(h, _)| http::CREDENTIAL_HEADERS.contains(&h.to_ascii_lowercase().as_str()))
        {
            return Err(Failure::permanent(format!(
                "header {header:?} cannot be set on a step that sends credential {:?}: \
                 a credential may set Authorization, and a front end may route by the others",
                name.as_str()
            )));
        }
        let request = http::Request {
            method: match step.method {
                model::Method::Get => http::Method::Get,
                model::Method::Post => http::Method::Post,
                model::Method::Put => http::Method::Put,
                model::Method::Patch => http::Method::Patch,
                model::Method::Delete => http::Method::Delete,
                model::Method::Head => http::Method::Head,
            },
            url: step.url.render_string(scope).into_owned(),
            headers: step
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.render_string(scope).into_owned()))
                .collect(),
            query: step
                .query
                .iter()
                .map(|(name, value)| (name.clone(), value.render_string(scope).into_owned()))
                .collect(),
            body: step.body.as_ref().map(|body| match body.render(scope) {
                Value::String(text) => http::Body::Text(text),
                json => http::Body::Json(json),
            }),
            timeout: step.timeout,
            max_response_bytes: step.max_response_bytes.0.min(ctx.shared.max_payload_bytes),
            idempotency_key: Some(format!("{}/{key}", ctx.run.run_id)),
            tenant: ctx.run.tenant.clone(),
            secrets: Vec::new(),
            traceparent: None,
        };
        Ok(HttpJob {
            request,
            credential: step
                .credential
                .as_ref()
                .map(|name| name.as_str().to_owned()),
            run_id: ctx.run.run_id.clone(),
        })
    })
}

pub(crate) async fn succeeded(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
    output: Value,
    logs: Vec<LogRecord>,
    bytes: u64,
) -> Result<(), ActorProcessingErr> {
    let current = state.current.take().expect("a step is running");
    let step_id = state.step().id().as_str().to_owned();
    let key = state.key(&step_id);
    let output = Arc::new(output);
    let record = StepRecord {
        step_key: key.clone(),
        status: StepStatus::Succeeded,
        attempts: current.attempt,
        started_at_ms: current.started_ms,
        finished_at_ms: now_ms(),
        output_bytes: None,
        error: None,
        node: None,
    };
    let mut entries = vec![(record, Some(output.clone()))];
    let finished = RunEvent::StepFinished {
        step_key: key,
        status: StepStatus::Succeeded,
        attempt: current.attempt,
        duration: current.started.elapsed(),
        error: None,
    };
    if state.is_last() && matches!(state.scope, SeqScope::Top) {
        // The last checkpoint and the run's end in one durable write.
        state.outputs.0.insert(step_id, output);
        let run_output = run_output(state);
        state
            .ctx
            .finish(
                entries,
                logs,
                vec![finished],
                End {
                    status: RunStatus::Succeeded,
                    output: Some(run_output),
                    error: None,
                },
                bytes,
            )
            .await?;
        myself.stop(None);
        return Ok(());
    }
    if !state.is_last() && matches!(state.steps()[state.next + 1], Step::Code(_)) {
        // The next step only computes: it may do so while this
        // checkpoint is made durable.
        state
            .ctx
            .checkpoint_ahead(entries, logs, bytes, finished)
            .await?;
    } else {
        if state.is_last() {
            entries.extend(item_entry(state, Some(output.clone())));
        }
        state.ctx.checkpoint(entries, logs, bytes).await?;
        state.ctx.emit(finished);
    }
    state.outputs.0.insert(step_id, output);
    state.next += 1;
    myself.send_message(SeqMsg::Next)?;
    Ok(())
}

pub(crate) async fn failed(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
    mut failure: Failure,
    logs: Vec<LogRecord>,
) -> Result<(), ActorProcessingErr> {
    failure.message = bounded_error(failure.message);
    let step = state.step().clone();
    let key = state.key(step.id().as_str());
    let current = state.current.as_mut().expect("a step is running");
    let attempt = current.attempt;
    let max_attempts = step.retry().map_or(1, |r| r.max_attempts);
    if failure.retryable && attempt < max_attempts {
        let retry = step.retry().expect("more than one attempt means a policy");
        let delay = retry_delay(retry, attempt, failure.retry_after);
        let token = current.token;
        current.child = None;
        if !logs.is_empty() {
            state.ctx.append_logs(logs).await?;
        }
        state.ctx.emit(RunEvent::StepRetrying {
            step_key: key,
            attempt,
            error: failure.message,
            delay,
        });
        if state.draining || state.ctx.shared.draining.load(Ordering::Acquire) {
            return stop_draining(myself, state).await;
        }
        myself.send_after(delay, move || SeqMsg::Retry { token });
        return Ok(());
    }
    let record = StepRecord {
        step_key: key.clone(),
        status: StepStatus::Failed,
        attempts: attempt,
        started_at_ms: current.started_ms,
        finished_at_ms: now_ms(),
        output_bytes: None,
        error: Some(failure.message.clone()),
        node: None,
    };
    let duration = current.started.elapsed();
    state.current = None;
    let finished = RunEvent::StepFinished {
        step_key: key.clone(),
        status: StepStatus::Failed,
        attempt,
        duration,
        error: Some(failure.message.clone()),
    };
    match &state.scope {
        SeqScope::Top => {
            // The step's record and the run's end in one durable write.
            let error = format!("step {key:?}: {}", failure.message);
            state
                .ctx
                .finish(
                    vec![(record, None)],
                    logs,
                    vec![finished],
                    End {
                        status: RunStatus::Failed,
                        output: None,
                        error: Some(error),
                    },
                    0,
                )
                .await?;
        }
        SeqScope::Item { index, parent, .. } => {
            state.ctx.checkpoint(vec![(record, None)], logs, 0).await?;
            state.ctx.emit(finished);
            let _ = parent.send_message(LoopMsg::ItemDone {
                index: *index,
                result: Err(format!("step {key:?}: {}", failure.message)),
            });
        }
    }
    myself.stop(None);
    Ok(())
}

/// The run's output: its `output` template, or the last step's output.
fn run_output(state: &SeqState) -> Value {
    match &state.ctx.integration.output {
        Some(template) => state.with_scope(|scope| template.render(scope)),
        None => state
            .steps()
            .last()
            .and_then(|s| state.outputs.0.get(s.id().as_str()))
            .map_or(Value::Null, |v| (**v).clone()),
    }
}

pub(crate) async fn finish_sequence(
    myself: &ActorRef<SeqMsg>,
    state: &mut SeqState,
) -> Result<(), ActorProcessingErr> {
    match &state.scope {
        SeqScope::Top => {
            let output = run_output(state);
            state
                .ctx
                .end(RunStatus::Succeeded, Some(output), None)
                .await?;
        }
        SeqScope::Item { index, .. } => {
            let index = *index;
            let last = state
                .steps()
                .last()
                .and_then(|s| state.outputs.0.get(s.id().as_str()).cloned());
            if !state.item_recorded {
                let entry = item_entry(state, last.clone());
                state
                    .ctx
                    .checkpoint(entry.into_iter().collect(), Vec::new(), 0)
                    .await?;
            }
            if let SeqScope::Item { parent, .. } = &state.scope {
                let output = last.map_or(Value::Null, |v| (*v).clone());
                let _ = parent.send_message(LoopMsg::ItemDone {
                    index,
                    result: Ok(output),
                });
            }
        }
    }
    myself.stop(None);
    Ok(())
}
