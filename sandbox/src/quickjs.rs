//! The QuickJS backend of the sandbox (QuickJS-ng through `rquickjs`).
//!
//! # A fresh runtime for every execution
//!
//! A step can change anything it can reach: built-ins, prototypes, the
//! global object. The only reliable way to keep one step from seeing
//! another's changes is to never run two steps in one runtime, so every
//! execution gets its own `rquickjs::Runtime` + `Context`, and a runtime that
//! ran user code is only ever dropped. It is prepared *before* the job
//! arrives: [`QuickJsEngine::new`] and [`Engine::recycle`] build the next
//! one (runtime, context, prelude) while the thread is otherwise idle,
//! [`Engine::execute`] takes it, runs the job and parks it in `spent` until
//! `recycle` drops it. Preparing costs ~0.3 ms (release build), because the
//! prelude is compiled to bytecode once per process and only loaded into
//! each runtime; compiling its source every time would add ~0.5 ms.
//!
//! # How the host functions reach the running step
//!
//! The prelude runs at preparation time, when there is no job yet, so the
//! native `log` / `xml` functions it captures cannot hold the job's state.
//! They hold an `Rc<Shared>` instead, whose `session` slot `execute` fills
//! for the duration of the job with the job's [`Host`] (moved in, not
//! borrowed, so no raw pointers are needed) and its [`Control`], and empties
//! again (a drop guard moves the `Host` back even on a panic). The interrupt
//! handler reads the same slot. The prelude's results (`ctx`, `parseInput`,
//! `finish`) are kept as `Persistent` handles on the Rust side; nothing of
//! the host is reachable from the step's code.
//!
//! # Limits
//!
//! - Time: QuickJS calls the runtime's interrupt handler every few thousand
//!   bytecode operations (and from inside the regex engine); it stops the
//!   step once `control.deadline` has passed or once the host recorded an
//!   abort (log limit). Jobs (promise reactions) are run one at a time with
//!   the deadline checked between them. The interrupt surfaces as an
//!   uncatchable "interrupted" error, which is replaced by the abort's error.
//! - Heap: the runtime allocates through [`HeapAllocator`], which counts
//!   every byte QuickJS holds and refuses allocations beyond
//!   `limits.heap_bytes`. Refusing also records that the limit was hit, so an
//!   out-of-memory is recognised for certain (QuickJS itself reports one as
//!   an `InternalError` or, when even that cannot be allocated, as a thrown
//!   `null`, which a step could also throw) and the interrupt handler stops
//!   whatever code would run next: after an out-of-memory the runtime only
//!   gets dropped.
//! - Stack: 4 MiB of the step thread's 16 MiB stack; deeper recursion is
//!   a `RangeError` the step can see.
//! - Output: its UTF-8 length is checked against `limits.output_bytes`.
//!
//! There is no module loader: an `import` fails when the module is declared
//! and is reported as such. `Context::full` has no `std`/`os` modules, no
//! `print`, no timers; the `performance` global QuickJS-ng adds is removed
//! (a high-resolution clock V8's contexts do not have either).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rquickjs::allocator::{Allocator, RustAllocator};
use rquickjs::{
    Context, Ctx, Exception, FromJs, Function, Module, Object, Persistent, Runtime, Value, qjs,
};

use crate::host::{AbortReason, Control, Host, PRELUDE, XmlOp};
use crate::runner::{Engine, Hooks, Job, Settings};
use crate::step::{Limits, Location, MAX_ERROR_TEXT, StepError};

/// QuickJS's own limit on the native stack its interpreter may use. The
/// process's step thread has 16 MiB; the rest is headroom for native frames.
const MAX_STACK_BYTES: usize = 4 * 1024 * 1024;

/// The name the prelude is compiled under (it shows in stack traces).
const PRELUDE_FILENAME: &str = "isoflow:prelude";

const NO_DEFAULT_EXPORT: &str = "export default function (input, ctx) { ... }";

/// One thread's QuickJS state: the fresh runtime waiting for the next job
/// and the used one waiting to be dropped.
pub(crate) struct QuickJsEngine {
    /// The heap limit of the runtime prepared ahead of a job (the process's
    /// default); a job with another heap limit gets a runtime of its own.
    heap_bytes: usize,
    hooks: Hooks,
    ready: Option<Instance>,
    /// How long `ready` took to make (µs).
    ready_us: u64,
    spent: Option<Instance>,
    /// How long the runtime the last job ran in took to make (µs).
    spent_us: Option<u64>,
}

impl fmt::Debug for QuickJsEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuickJsEngine")
            .field("heap_bytes", &self.heap_bytes)
            .field("ready", &self.ready.is_some())
            .field("spent", &self.spent.is_some())
            .finish()
    }
}

impl QuickJsEngine {
    /// Creates the engine with a fresh runtime ready for the first job.
    pub fn new(settings: Settings) -> Self {
        let mut engine = QuickJsEngine {
            heap_bytes: settings.heap_bytes,
            hooks: settings.hooks,
            ready: None,
            ready_us: 0,
            spent: None,
            spent_us: None,
        };
        engine.prepare_next();
        engine
    }

    fn prepare_next(&mut self) {
        if self.ready.is_some() {
            return;
        }
        // A failure shows up again, with its message, when the next job
        // tries to make the runtime it needs.
        let start = Instant::now();
        self.ready = Instance::new(self.heap_bytes, self.hooks).ok();
        self.ready_us = crate::runner::micros_since(start);
    }
}

impl Engine for QuickJsEngine {
    fn execute(
        &mut self,
        job: &Job<'_>,
        limits: &Limits,
        control: &Arc<Control>,
        host: &mut Host,
    ) -> Result<String, StepError> {
        self.spent_us = None;
        let instance = match self.ready.take() {
            Some(instance) if instance.heap_bytes == limits.heap_bytes => {
                self.spent_us = Some(self.ready_us);
                instance
            }
            other => {
                // Keep a runtime prepared for other limits for the next job.
                self.ready = other;
                let start = Instant::now();
                let instance = Instance::new(limits.heap_bytes, self.hooks)?;
                self.spent_us = Some(crate::runner::micros_since(start));
                instance
            }
        };
        let result = instance.run(job, limits, control, host);
        self.spent = Some(instance);
        result.map_err(|mut error| {
            if let StepError::Syntax { location, .. }
            | StepError::Exception {
                location: Some(location),
                ..
            } = &mut error
            {
                utf16_column(job.source, location);
            }
            error
        })
    }

    fn recycle(&mut self) {
        self.spent = None;
        self.prepare_next();
    }

    fn created_us(&self) -> Option<u64> {
        self.spent_us
    }
}

/// A runtime with its context and the prelude's functions.
struct Instance {
    // Field order is drop order: the persistent handles hold references into
    // the context, which must be released before the context and the
    // runtime are freed (QuickJS asserts that nothing is left).
    api: Api,
    context: Context,
    _runtime: Runtime,
    shared: Rc<Shared>,
    heap: Rc<HeapState>,
    heap_bytes: usize,
}

/// What the prelude returned, kept out of the step's reach.
struct Api {
    ctx: Persistent<Object<'static>>,
    parse_input: Persistent<Function<'static>>,
    finish: Persistent<Function<'static>>,
}

/// State shared by the host functions, the interrupt handler and `execute`.
#[derive(Default)]
struct Shared {
    session: RefCell<Option<Session>>,
}

/// The job currently running on a runtime.
struct Session {
    host: Host,
    control: Arc<Control>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Tearing down may allocate (finalisers); never fail it for the limit.
        self.heap.limit.set(usize::MAX);
    }
}

impl Instance {
    fn new(heap_bytes: usize, hooks: Hooks) -> Result<Instance, StepError> {
        let bytecode = prelude_bytecode()?;
        let heap = Rc::new(HeapState {
            limit: Cell::new(heap_bytes),
            exhausted: Cell::new(false),
        });
        let runtime = Runtime::new_with_alloc(HeapAllocator {
            used: 0,
            heap: heap.clone(),
        })
        .map_err(|e| prepare_error(&heap, heap_bytes, "create a runtime", &e))?;
        runtime.set_max_stack_size(MAX_STACK_BYTES);
        let shared = Rc::new(Shared::default());
        runtime.set_interrupt_handler(Some(Box::new({
            let shared = shared.clone();
            let heap = heap.clone();
            move || should_interrupt(&shared, &heap)
        })));
        let context = Context::full(&runtime)
            .map_err(|e| prepare_error(&heap, heap_bytes, "create a context", &e))?;
        let api = context
            .with(|ctx| install(&ctx, &shared, hooks, bytecode))
            .map_err(|e| prepare_error(&heap, heap_bytes, "run the prelude", &e))?;
        Ok(Instance {
            api,
            context,
            _runtime: runtime,
            shared,
            heap,
            heap_bytes,
        })
    }

    fn run(
        &self,
        job: &Job<'_>,
        limits: &Limits,
        control: &Arc<Control>,
        host: &mut Host,
    ) -> Result<String, StepError> {
        let result = {
            let _session = SessionGuard::start(&self.shared, host, control.clone());
            self.context.with(|ctx| self.run_step(&ctx, job, control))
        };
        if let Some(error) = host.abort_error(control, limits) {
            return Err(error);
        }
        if self.heap.exhausted.get() {
            return Err(StepError::HeapLimit {
                limit_bytes: limits.heap_bytes,
            });
        }
        let text = result?;
        if Instant::now() >= control.deadline {
            // Finished, but late: a long native call (a huge JSON.parse, a
            // sort) does not poll the interrupt handler.
            control.abort(AbortReason::Timeout);
            return Err(host
                .abort_error(control, limits)
                .unwrap_or(StepError::Timeout {
                    limit: limits.timeout,
                }));
        }
        if text.len() > limits.output_bytes {
            return Err(StepError::OutputLimit {
                limit_bytes: limits.output_bytes,
                actual_bytes: text.len(),
            });
        }
        Ok(text)
    }

    /// Runs the step inside the context. An error here may be a stand-in:
    /// `run` replaces it when the step was stopped (time, logs, heap).
    fn run_step<'js>(
        &self,
        ctx: &Ctx<'js>,
        job: &Job<'_>,
        control: &Control,
    ) -> Result<String, StepError> {
        let filename: &str = job.filename;
        let restore = |e: rquickjs::Error| StepError::Internal {
            message: format!("cannot restore the prelude's functions: {e}"),
        };
        let parse_input = self.api.parse_input.clone().restore(ctx).map_err(restore)?;
        let finish = self.api.finish.clone().restore(ctx).map_err(restore)?;
        let step_ctx = self.api.ctx.clone().restore(ctx).map_err(restore)?;

        // The input as a JavaScript string, and the host's copy freed before
        // anything else runs.
        let text = {
            let input = job.input.take();
            rquickjs::String::from_str(ctx.clone(), &input).map_err(|e| {
                match self.failure(ctx, e) {
                    Failure::Thrown(_) => StepError::Input {
                        message: format!("the input of {} bytes cannot be a string", input.len()),
                    },
                    Failure::Other(error) => error,
                }
            })?
        };
        let input: Value = parse_input
            .call((text,))
            .map_err(|e| match self.failure(ctx, e) {
                Failure::Thrown(value) => StepError::Input {
                    message: error_parts(&value).map_or_else(|| describe(ctx, &value), |p| p.1),
                },
                Failure::Other(error) => error,
            })?;

        if filename.contains('\0') {
            return Err(StepError::Module {
                message: "the step's filename contains a NUL character".to_owned(),
            });
        }
        if let Some(location) = nul_location(job.source, filename) {
            return Err(StepError::Syntax {
                message: "the source contains a NUL character (write it as \\0 inside a string)"
                    .to_owned(),
                location,
            });
        }
        let module = Module::declare(ctx.clone(), filename, job.source).map_err(|e| match self
            .failure(ctx, e)
        {
            Failure::Thrown(value) => declare_error(&value, filename),
            Failure::Other(error) => error,
        })?;
        let (module, evaluated) = module
            .eval()
            .map_err(|e| self.exception(ctx, e, filename))?;
        self.settle(ctx, evaluated.into_value(), control, filename)?;

        let default: Value = module
            .namespace()
            .and_then(|namespace| namespace.get("default"))
            .map_err(|e| self.exception(ctx, e, filename))?;
        let Some(default) = default.as_function() else {
            let message = if default.is_undefined() {
                format!("the step's module has no default export function ({NO_DEFAULT_EXPORT})")
            } else {
                format!(
                    "the step's default export is {}, not a function ({NO_DEFAULT_EXPORT})",
                    kind_of(&default)
                )
            };
            return Err(StepError::Module { message });
        };
        let output: Value = default
            .call((input, step_ctx))
            .map_err(|e| self.exception(ctx, e, filename))?;
        let output = self.settle(ctx, output, control, filename)?;

        let text: rquickjs::String =
            finish
                .call((output,))
                .map_err(|e| match self.failure(ctx, e) {
                    Failure::Thrown(value) => StepError::NotSerializable {
                        reason: error_parts(&value).map_or_else(|| describe(ctx, &value), |p| p.1),
                    },
                    Failure::Other(error) => error,
                })?;
        js_string(&text).map_err(|e| self.exception(ctx, e, filename))
    }

    /// Runs jobs until none is left, then returns what `value` settled to
    /// (`value` itself when it is not a promise).
    fn settle<'js>(
        &self,
        ctx: &Ctx<'js>,
        value: Value<'js>,
        control: &Control,
        filename: &str,
    ) -> Result<Value<'js>, StepError> {
        // Run every job, not just until the promise settles: V8 also runs
        // its microtasks to completion after each call into JavaScript, so a
        // step's un-awaited promise chains behave alike on both engines.
        while ctx.execute_pending_job() {
            if self.stopped(control) {
                return Err(stopped());
            }
        }
        if self.stopped(control) {
            return Err(stopped());
        }
        let Some(promise) = value.as_promise() else {
            return Ok(value);
        };
        match promise.result::<Value>() {
            None => Err(StepError::NeverSettled),
            Some(result) => result.map_err(|e| self.exception(ctx, e, filename)),
        }
    }

    /// Whether the step must not run any further (and records a time-out
    /// noticed between jobs).
    fn stopped(&self, control: &Control) -> bool {
        if self.heap.exhausted.get() || control.reason().is_some() {
            return true;
        }
        if Instant::now() >= control.deadline {
            control.abort(AbortReason::Timeout);
            return true;
        }
        false
    }

    /// Classifies a failed call: a value the step threw (or a promise
    /// rejected with), or an error that is not the step's own.
    fn failure<'js>(&self, ctx: &Ctx<'js>, error: rquickjs::Error) -> Failure<'js> {
        if self.heap.exhausted.get() {
            // The runtime is only dropped now; `run` reports the heap limit.
            return Failure::Other(StepError::HeapLimit {
                limit_bytes: self.heap_bytes,
            });
        }
        if !error.is_exception() {
            return Failure::Other(StepError::Internal {
                message: format!("quickjs: {error}"),
            });
        }
        let value = ctx.catch();
        if value.is_uncatchable_error() {
            // Interrupted: `run` replaces this with the reason it was stopped.
            return Failure::Other(stopped());
        }
        Failure::Thrown(value)
    }

    fn exception<'js>(&self, ctx: &Ctx<'js>, error: rquickjs::Error, filename: &str) -> StepError {
        match self.failure(ctx, error) {
            Failure::Thrown(value) => exception_error(ctx, &value, filename),
            Failure::Other(error) => error,
        }
    }
}

enum Failure<'js> {
    Thrown(Value<'js>),
    Other(StepError),
}

/// The stand-in error for a step that was stopped; never returned as is.
fn stopped() -> StepError {
    StepError::Internal {
        message: "step was stopped".to_owned(),
    }
}

fn prepare_error(
    heap: &HeapState,
    heap_bytes: usize,
    what: &str,
    error: &rquickjs::Error,
) -> StepError {
    if heap.exhausted.get() {
        StepError::HeapLimit {
            limit_bytes: heap_bytes,
        }
    } else {
        StepError::Internal {
            message: format!("cannot {what} for quickjs: {error}"),
        }
    }
}

fn should_interrupt(shared: &Shared, heap: &HeapState) -> bool {
    if heap.exhausted.get() {
        return true;
    }
    // The slot is never borrowed while JavaScript runs; if it were, the
    // next poll decides.
    let Ok(session) = shared.session.try_borrow() else {
        return false;
    };
    let Some(session) = session.as_ref() else {
        return false;
    };
    let control = &session.control;
    if control.reason().is_some() {
        return true;
    }
    if Instant::now() >= control.deadline {
        control.abort(AbortReason::Timeout);
        return true;
    }
    false
}

/// Lends the job's [`Host`] to the host functions for the duration of a
/// run: it is moved into the shared slot and moved back when the guard is
/// dropped, whatever happened in between.
struct SessionGuard<'a> {
    shared: &'a Shared,
    host: &'a mut Host,
}

impl<'a> SessionGuard<'a> {
    fn start(shared: &'a Shared, host: &'a mut Host, control: Arc<Control>) -> Self {
        let lent = std::mem::replace(host, Host::new(Limits::default()));
        *shared.session.borrow_mut() = Some(Session {
            host: lent,
            control,
        });
        SessionGuard { shared, host }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.shared.session.borrow_mut().take() {
            *self.host = session.host;
        }
    }
}

/// Prepares a fresh context: removes what steps must not have, runs the
/// prelude with the host functions and keeps what it returns.
fn install<'js>(
    ctx: &Ctx<'js>,
    shared: &Rc<Shared>,
    hooks: Hooks,
    prelude_bytecode: &[u8],
) -> rquickjs::Result<Api> {
    ctx.globals().remove("performance")?;

    let host = Object::new(ctx.clone())?;
    host.set("log", Function::new(ctx.clone(), host_log(shared.clone()))?)?;
    host.set("xml", Function::new(ctx.clone(), host_xml(shared.clone()))?)?;
    if !hooks.is_empty() {
        host.set("test", Function::new(ctx.clone(), host_test(hooks))?)?;
    }

    let prelude = load_prelude(ctx, prelude_bytecode)?;
    let api: Object = prelude.call((host,))?;
    Ok(Api {
        ctx: Persistent::save(ctx, api.get::<_, Object>("ctx")?),
        parse_input: Persistent::save(ctx, api.get::<_, Function>("parseInput")?),
        finish: Persistent::save(ctx, api.get::<_, Function>("finish")?),
    })
}

/// Compiles the prelude, before the process is locked down.
pub(crate) fn init() -> Result<(), StepError> {
    prelude_bytecode().map(|_| ())
}

/// The prelude compiled to QuickJS bytecode, once per process: loading it
/// takes ~0.05 ms where compiling the source takes ~0.5 ms, which would be
/// most of the cost of a fresh runtime.
fn prelude_bytecode() -> Result<&'static [u8], StepError> {
    static BYTECODE: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    BYTECODE
        .get_or_init(compile_prelude)
        .as_deref()
        .map_err(|message| StepError::Internal {
            message: message.clone(),
        })
}

fn compile_prelude() -> Result<Vec<u8>, String> {
    let fail = |e: rquickjs::Error| format!("cannot compile the prelude for quickjs: {e}");
    let runtime = Runtime::new().map_err(fail)?;
    let context = Context::full(&runtime).map_err(fail)?;
    let source = std::ffi::CString::new(PRELUDE).map_err(|e| fail(e.into()))?;
    let filename = std::ffi::CString::new(PRELUDE_FILENAME).map_err(|e| fail(e.into()))?;
    context.with(|ctx| {
        let raw = ctx.as_raw().as_ptr();
        let flags = qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY;
        // SAFETY: `raw` is the live context of `ctx`; `source` is a C string
        // of `PRELUDE.len()` bytes (JS_Eval needs the terminating NUL).
        let compiled = unsafe {
            qjs::JS_Eval(
                raw,
                source.as_ptr(),
                PRELUDE.len() as _,
                filename.as_ptr(),
                flags as i32,
            )
        };
        // SAFETY: JS_Eval returned a new value (or the exception marker,
        // which owns nothing); `Value` takes it over and frees it on drop.
        let compiled = unsafe { Value::from_raw(ctx.clone(), compiled) };
        if compiled.is_exception() {
            let error = ctx.catch();
            let message = error_parts(&error).map_or_else(|| describe(&ctx, &error), |p| p.1);
            return Err(format!("the prelude does not compile: {message}"));
        }
        let mut len: qjs::size_t = 0;
        let flags = qjs::JS_WRITE_OBJ_BYTECODE as i32;
        // SAFETY: `compiled` is a live function of this context; `len` is
        // where the buffer's size is written.
        let buffer = unsafe { qjs::JS_WriteObject(raw, &mut len, compiled.as_raw(), flags) };
        if buffer.is_null() {
            drop(ctx.catch());
            return Err("cannot serialise the prelude's bytecode".to_owned());
        }
        // SAFETY: JS_WriteObject returned a buffer of `len` bytes allocated
        // by this context; it is copied, then freed, and not used after.
        let bytes = unsafe { std::slice::from_raw_parts(buffer, len as usize) }.to_vec();
        // SAFETY: as above.
        unsafe { qjs::js_free(raw, buffer.cast()) };
        Ok(bytes)
    })
}

/// Loads and runs the prelude's bytecode in a fresh context: the result is
/// the function that takes the host object.
fn load_prelude<'js>(ctx: &Ctx<'js>, bytecode: &[u8]) -> rquickjs::Result<Function<'js>> {
    let raw = ctx.as_raw().as_ptr();
    let flags = qjs::JS_READ_OBJ_BYTECODE as i32;
    // SAFETY: `bytecode` was written by `JS_WriteObject` of this same
    // QuickJS build in this process (`compile_prelude`), so it is valid;
    // JS_ReadObject copies what it keeps (no ROM_DATA flag).
    let function =
        unsafe { qjs::JS_ReadObject(raw, bytecode.as_ptr(), bytecode.len() as _, flags) };
    // SAFETY: a value JS_ReadObject returned (or the exception marker).
    if unsafe { qjs::JS_IsException(function) } {
        return Err(rquickjs::Error::Exception);
    }
    // SAFETY: JS_EvalFunction takes ownership of `function` and returns a
    // new value, which `Value` takes over.
    let result = unsafe { Value::from_raw(ctx.clone(), qjs::JS_EvalFunction(raw, function)) };
    if result.is_exception() {
        return Err(rquickjs::Error::Exception);
    }
    Function::from_js(ctx, result)
}

/// `host.log(level, text)`: records a line, or stops the step at its limit.
fn host_log<'js>(
    shared: Rc<Shared>,
) -> impl Fn(Ctx<'js>, i32, rquickjs::String<'js>) -> rquickjs::Result<()> + 'js {
    move |ctx, level, text| {
        let (text, total) = js_string_cut(&text, Limits::MAX_LOG_LINE_BYTES)?;
        let mut slot = shared.session.borrow_mut();
        let Some(session) = slot.as_mut() else {
            return Err(Exception::throw_message(&ctx, "no step is running"));
        };
        if session.host.log(level, &text, total) {
            return Ok(());
        }
        session.control.abort(AbortReason::LogLimit);
        let message = session.host.log_error().map_or_else(
            || "step exceeded its log limit".to_owned(),
            ToString::to_string,
        );
        drop(slot);
        // The interrupt handler stops whatever the step does next.
        Err(Exception::throw_message(&ctx, &message))
    }
}

/// `host.test(name, arg)`: a test hook (test programs only).
fn host_test<'js>(
    hooks: Hooks,
) -> impl Fn(Ctx<'js>, rquickjs::String<'js>, rquickjs::String<'js>) -> rquickjs::Result<String> + 'js
{
    move |ctx, name, arg| {
        let name = js_string(&name)?;
        let arg = js_string(&arg)?;
        hooks
            .call(&name, &arg)
            .ok_or_else(|| Exception::throw_message(&ctx, &format!("no test hook named {name:?}")))
    }
}

/// `host.xml(op, arg, optionsJson)`: runs a `ctx.xml` operation.
fn host_xml<'js>(
    shared: Rc<Shared>,
) -> impl Fn(Ctx<'js>, i32, rquickjs::String<'js>, rquickjs::String<'js>) -> rquickjs::Result<String> + 'js
{
    move |ctx, op, arg, options| {
        let Some(op) = XmlOp::from_code(op) else {
            return Err(Exception::throw_type(&ctx, "unknown ctx.xml operation"));
        };
        let arg = js_string(&arg)?;
        let options = js_string(&options)?;
        let result = {
            let slot = shared.session.borrow();
            let Some(session) = slot.as_ref() else {
                return Err(Exception::throw_message(&ctx, "no step is running"));
            };
            session.host.xml(op, &arg, &options)
        };
        result.map_err(|message| Exception::throw_message(&ctx, &message))
    }
}

/// Where the first NUL character of `source` is: QuickJS takes C strings,
/// so a literal NUL (legal in JavaScript, never needed) cannot be compiled.
fn nul_location(source: &str, filename: &str) -> Option<Location> {
    let at = source.find('\0')?;
    let before = &source[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Some(Location {
        filename: filename.to_owned(),
        line: count(before.matches('\n').count() + 1),
        column: count(before[line_start..].chars().count() + 1),
    })
}

/// The error for a module that failed to compile.
fn declare_error(value: &Value<'_>, filename: &str) -> StepError {
    let Some((name, message, stack)) = error_parts(value) else {
        return StepError::Module {
            message: format!("step module \"{filename}\" failed to load"),
        };
    };
    if let Some(specifier) = missing_module(&name, &message) {
        return StepError::Module {
            message: format!(
                "step module \"{filename}\" imports \"{specifier}\", but code steps cannot import \
                 modules: everything a step needs arrives as its input and ctx"
            ),
        };
    }
    let location = stack.as_deref().and_then(|s| find_location(s, filename));
    match location {
        Some(location) if name == "SyntaxError" => StepError::Syntax { message, location },
        location => StepError::Exception {
            message: headline(&name, &message),
            location,
            stack,
        },
    }
}

/// A value's kind in a sentence: "a number", "an object".
fn kind_of(value: &Value<'_>) -> &'static str {
    if value.is_null() {
        "null"
    } else if value.is_number() {
        "a number"
    } else if value.is_string() {
        "a string"
    } else if value.is_bool() {
        "a boolean"
    } else if value.is_array() {
        "an array"
    } else if value.is_symbol() {
        "a symbol"
    } else if value.is_big_int() {
        "a BigInt"
    } else {
        "an object"
    }
}

/// `could not load module 'x'` is how QuickJS reports an import when no
/// loader is installed.
fn missing_module<'a>(name: &str, message: &'a str) -> Option<&'a str> {
    if name != "ReferenceError" {
        return None;
    }
    let rest = message.strip_prefix("could not load module ")?;
    Some(rest.trim_matches(|c| c == '\'' || c == '"'))
}

/// The error for a value the step threw or rejected with.
fn exception_error<'js>(ctx: &Ctx<'js>, value: &Value<'js>, filename: &str) -> StepError {
    match error_parts(value) {
        Some((name, message, stack)) => {
            if let Some(specifier) = missing_module(&name, &message) {
                return StepError::Module {
                    message: format!(
                        "step module \"{filename}\" imports \"{specifier}\", but code steps \
                         cannot import modules: everything a step needs arrives as its input and \
                         ctx"
                    ),
                };
            }
            let message = headline(&name, &message);
            StepError::Exception {
                location: stack.as_deref().and_then(|s| find_location(s, filename)),
                stack: stack
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| with_headline(&message, s)),
                message,
            }
        }
        None => StepError::Exception {
            message: describe(ctx, value),
            location: None,
            stack: None,
        },
    }
}

/// `name`, `message` and `stack` of an Error object; `None` for other values.
fn error_parts(value: &Value<'_>) -> Option<(String, String, Option<String>)> {
    let object = value.as_object()?;
    if !object.is_error() {
        return None;
    }
    let text = |key: &str| -> Option<String> {
        let value: Value = object
            .get(key)
            .map_err(|_| drop(object.ctx().catch()))
            .ok()?;
        let string = value.as_string()?;
        error_text(string).ok()
    };
    let name = text("name").unwrap_or_else(|| "Error".to_owned());
    let message = text("message").unwrap_or_default();
    Some((name, message, text("stack")))
}

fn headline(name: &str, message: &str) -> String {
    if message.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {message}")
    }
}

/// QuickJS's `stack` lists only the frames; V8's starts with the
/// `Name: message` line. Reports look the same on both engines.
fn with_headline(headline: &str, stack: String) -> String {
    if stack.starts_with(headline) {
        stack
    } else {
        format!("{headline}\n{}", stack.trim_end())
    }
}

/// A thrown value that is not an Error, as text: strings as they are,
/// objects as JSON when they can be, anything else by `String(value)`.
fn describe<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    if let Some(string) = value.as_string() {
        return error_text(string).unwrap_or_else(|_| "a string".to_owned());
    }
    if value.is_object() && !value.is_function() {
        match ctx.json_stringify(value.clone()) {
            Ok(Some(json)) => {
                if let Ok(text) = error_text(&json) {
                    return text;
                }
            }
            Ok(None) => {}
            // A toJSON or getter threw; fall back to String(value).
            Err(_) => drop(ctx.catch()),
        }
    }
    let coerced: rquickjs::Result<rquickjs::convert::Coerced<rquickjs::String>> = value.get();
    match coerced.and_then(|s| error_text(&s.0)) {
        Ok(text) => text,
        Err(_) => {
            // Coercion threw (a symbol, or a toString that throws).
            let _ = ctx.catch();
            format!("a {}", value.type_name())
        }
    }
}

/// QuickJS numbers lines by `\n` alone and counts columns in UTF-8 bytes;
/// V8 and editors end lines at every JavaScript line terminator (`\n`, `\r`,
/// `\r\n`, U+2028, U+2029) and count columns in UTF-16 code units.
/// Converts, so both engines point at the same place.
fn utf16_column(source: &str, location: &mut Location) {
    // The byte offset QuickJS means.
    let line_index = (location.line as usize).saturating_sub(1);
    let Some(line_start) = std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .nth(line_index)
    else {
        return;
    };
    let mut offset = (line_start + (location.column as usize).saturating_sub(1)).min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let (mut line, mut column) = (1usize, 1usize);
    let mut chars = source[..offset].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' | '\u{2028}' | '\u{2029}' => {
                line += 1;
                column = 1;
            }
            c => column += c.len_utf16(),
        }
    }
    location.line = u32::try_from(line).unwrap_or(u32::MAX);
    location.column = u32::try_from(column).unwrap_or(u32::MAX);
}

/// Finds `filename:line:column` in a QuickJS stack trace: the first frame
/// in the step's own file (frames look like `at f (step.js:3:11)` or, for
/// syntax errors, `at step.js:3:11`).
fn find_location(stack: &str, filename: &str) -> Option<Location> {
    let needle = format!("{filename}:");
    stack.lines().find_map(|line| {
        let at = line.find(&needle)?;
        let rest = &line[at + needle.len()..];
        let mut numbers = rest.splitn(2, ':');
        let line_no = numbers.next()?.parse().ok()?;
        let column_text = numbers.next()?;
        let digits = column_text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(column_text.len());
        let column = column_text[..digits].parse().ok()?;
        Some(Location {
            filename: filename.to_owned(),
            line: line_no,
            column,
        })
    })
}

/// Copies a JavaScript string out. QuickJS hands out WTF-8 (a lone UTF-16
/// surrogate, valid in JavaScript, becomes a 3-byte sequence that is not
/// UTF-8), so each lone surrogate is replaced by U+FFFD, as
/// `String.prototype.toWellFormed` would.
fn js_string(string: &rquickjs::String<'_>) -> rquickjs::Result<String> {
    js_string_cut(string, usize::MAX).map(|(text, _)| text)
}

/// At most `max` bytes of a JavaScript string (cut on a character
/// boundary), and its whole length in bytes. The string's UTF-8 is made in
/// QuickJS's heap, where the step's heap limit counts it; only the part
/// kept is copied out, so that a step's 100 MB error text costs the host
/// nothing.
fn js_string_cut(string: &rquickjs::String<'_>, max: usize) -> rquickjs::Result<(String, usize)> {
    let text = rquickjs::CString::from_string(string.clone())?;
    // SAFETY: `as_ptr` points to `len` bytes QuickJS owns, kept alive (and
    // unchanged) until `text` is dropped at the end of this function.
    let bytes = unsafe { std::slice::from_raw_parts(text.as_ptr().cast::<u8>(), text.len()) };
    let mut end = bytes.len().min(max);
    // Back to the start of a UTF-8 sequence (a continuation byte is 10xxxxxx).
    while end < bytes.len() && end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    Ok((well_formed(&bytes[..end]), bytes.len()))
}

/// An error's text, cut to [`MAX_ERROR_TEXT`] bytes with its size noted.
fn error_text(string: &rquickjs::String<'_>) -> rquickjs::Result<String> {
    let (text, total) = js_string_cut(string, MAX_ERROR_TEXT)?;
    if total > text.len() {
        Ok(format!("{text}… (cut: {total} bytes in all)"))
    } else {
        Ok(text)
    }
}

fn well_formed(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(error) => {
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push(char::REPLACEMENT_CHARACTER);
                let skip = match rest {
                    // An encoded surrogate (U+D800..U+DFFF): ED A0..BF 80..BF.
                    [0xED, 0xA0..=0xBF, 0x80..=0xBF, ..] => 3,
                    _ => error.error_len().unwrap_or(rest.len()),
                };
                bytes = &rest[skip..];
            }
        }
    }
}

/// How many bytes a live block costs beyond what QuickJS asked for: the
/// size header `RustAllocator` keeps plus the system allocator's own.
const BLOCK_OVERHEAD: usize = 16;

/// The per-runtime heap budget, shared with the interrupt handler and
/// `execute`.
struct HeapState {
    limit: Cell<usize>,
    /// Set when an allocation was refused for the limit.
    exhausted: Cell<bool>,
}

/// Rust's global allocator (through `RustAllocator`) with a budget: it
/// refuses allocations that would take the runtime over its heap limit and
/// records that it did.
struct HeapAllocator {
    used: usize,
    heap: Rc<HeapState>,
}

impl HeapAllocator {
    fn cost(size: usize) -> usize {
        size.next_multiple_of(8).saturating_add(BLOCK_OVERHEAD)
    }

    /// Whether `more` bytes fit; records the refusal when they do not.
    fn fits(&mut self, more: usize) -> bool {
        if self.used.saturating_add(more) > self.heap.limit.get() {
            self.heap.exhausted.set(true);
            return false;
        }
        true
    }
}

// SAFETY: every block comes from `RustAllocator` and goes back to it, with
// sizes as it reports them; this type only adds bookkeeping and may refuse
// (return null) before asking it. The edge cases `RustAllocator` does not
// handle (null in realloc, size overflow in calloc) are handled here.
unsafe impl Allocator for HeapAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.fits(Self::cost(size)) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.alloc(size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just allocated by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(ptr) } + BLOCK_OVERHEAD;
        }
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else {
            self.heap.exhausted.set(true);
            return std::ptr::null_mut();
        };
        if total == 0 || !self.fits(Self::cost(total)) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.calloc(count, size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just allocated by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(ptr) } + BLOCK_OVERHEAD;
        }
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        // SAFETY: the caller passes a block this allocator handed out.
        let size = unsafe { RustAllocator::usable_size(ptr) };
        self.used = self.used.saturating_sub(size + BLOCK_OVERHEAD);
        // SAFETY: as above.
        unsafe { RustAllocator.dealloc(ptr) }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        // SAFETY: the caller passes a block this allocator handed out.
        let old = unsafe { RustAllocator::usable_size(ptr) };
        let new = new_size.next_multiple_of(8);
        if new > old && !self.fits(new - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above; on failure the old block stays valid.
        let moved = unsafe { RustAllocator.realloc(ptr, new_size) };
        if !moved.is_null() {
            // SAFETY: `moved` was just allocated by `RustAllocator`.
            let now = unsafe { RustAllocator::usable_size(moved) };
            self.used = self.used.saturating_sub(old) + now;
        }
        moved
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: the caller passes a block this allocator handed out.
        unsafe { RustAllocator::usable_size(ptr) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::step::{LogLevel, LogLimitKind, Runtime as Engine_};

    /// What one execution produced.
    struct Run {
        result: Result<String, StepError>,
        logs: Vec<(LogLevel, String)>,
    }

    impl Run {
        fn value(&self) -> serde_json::Value {
            let text = self.result.as_ref().expect("the step succeeds");
            serde_json::from_str(text).expect("output is JSON")
        }

        fn error(&self) -> &StepError {
            self.result.as_ref().expect_err("the step fails")
        }
    }

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(10),
            ..Limits::default()
        }
    }

    fn settings(limits: Limits) -> Settings {
        Settings {
            heap_bytes: limits.heap_bytes,
            hooks: Hooks::default(),
        }
    }

    fn run_on(engine: &mut QuickJsEngine, source: &str, input: &str, limits: Limits) -> Run {
        let job = Job {
            runtime: Engine_::QuickJs,
            filename: "step.js",
            source,
            input: crate::runner::Input::new(input.to_owned()),
        };
        let control = Arc::new(Control::new(Instant::now() + limits.timeout));
        let mut host = Host::new(limits);
        let result = engine.execute(&job, &limits, &control, &mut host);
        engine.recycle();
        let logs = host
            .into_logs()
            .into_iter()
            .map(|l| (l.level, l.message))
            .collect();
        Run { result, logs }
    }

    /// Runs `f` on a thread with the step thread's stack size, as the
    /// pool does (QuickJS is allowed 4 MiB of it).
    fn on_sandbox_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(16 * 1024 * 1024)
            .spawn(f)
            .expect("spawn a test thread")
            .join()
            .expect("the test thread does not panic")
    }

    fn run_with(source: &'static str, input: &'static str, limits: Limits) -> Run {
        on_sandbox_thread(move || {
            run_on(
                &mut QuickJsEngine::new(settings(limits)),
                source,
                input,
                limits,
            )
        })
    }

    fn run(source: &'static str, input: &'static str) -> Run {
        run_with(source, input, limits())
    }

    #[test]
    fn transforms_input() {
        let run = run(
            "export default function (input) {\n  return { total: input.items.reduce((a, b) => a + b, 0), n: input.items.length };\n}\n",
            r#"{"items": [1, 2, 3.5]}"#,
        );
        assert_eq!(run.value(), serde_json::json!({ "total": 6.5, "n": 3 }));
    }

    #[test]
    fn async_default_and_top_level_await() {
        let run = run(
            "const base = await Promise.resolve(10);\n\
             export default async function (input) {\n\
               const x = await new Promise((resolve) => resolve(input.x));\n\
               return { sum: base + x };\n\
             }\n",
            r#"{"x": 5}"#,
        );
        assert_eq!(run.value(), serde_json::json!({ "sum": 15 }));
    }

    #[test]
    fn console_and_ctx_log_are_captured_with_levels() {
        let run = run(
            "export default function (input, ctx) {\n\
               console.log('hello', 42, { a: 1 });\n\
               console.debug('dbg');\n\
               console.warn('careful');\n\
               console.error(new TypeError('bad'));\n\
               ctx.log('via ctx');\n\
               ctx.log.error('ctx error');\n\
               console.log('lone \\ud800 surrogate');\n\
               return null;\n\
             }\n",
            "null",
        );
        assert_eq!(run.value(), serde_json::Value::Null);
        let logs: Vec<_> = run.logs.iter().map(|(l, m)| (*l, m.as_str())).collect();
        assert_eq!(logs[0], (LogLevel::Info, r#"hello 42 {"a":1}"#));
        assert_eq!(logs[1], (LogLevel::Debug, "dbg"));
        assert_eq!(logs[2], (LogLevel::Warn, "careful"));
        assert_eq!(logs[3].0, LogLevel::Error);
        // The prelude logs an Error as its stack, which in QuickJS lists
        // only the frames.
        assert!(logs[3].1.contains("step.js:5:"), "{}", logs[3].1);
        assert_eq!(logs[4], (LogLevel::Info, "via ctx"));
        assert_eq!(logs[5], (LogLevel::Error, "ctx error"));
        assert_eq!(logs[6], (LogLevel::Info, "lone \u{FFFD} surrogate"));
    }

    #[test]
    fn xml_round_trips_through_ctx() {
        let run = run(
            "export default function (input, ctx) {\n\
               const doc = ctx.xml.parse(input.xml);\n\
               const text = ctx.xml.stringify(doc);\n\
               let failure = null;\n\
               try { ctx.xml.parse(42); } catch (e) { failure = e.name; }\n\
               return { doc, again: ctx.xml.parse(text), isString: typeof text === 'string', failure };\n\
             }\n",
            r#"{"xml": "<order><id>1</id></order>"}"#,
        );
        let value = run.value();
        assert!(value["doc"].is_object(), "{value}");
        assert_eq!(value["doc"], value["again"]);
        assert_eq!(value["isString"], true);
        assert_eq!(value["failure"], "TypeError");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let run = run(
            "export default function (input) {\n  let x = 1;\n  return x +* 2;\n}\n",
            "null",
        );
        match run.error() {
            StepError::Syntax { message, location } => {
                assert!(message.contains("unexpected token"), "{message}");
                assert_eq!(
                    location,
                    &Location {
                        filename: "step.js".into(),
                        line: 3,
                        column: 13
                    }
                );
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn thrown_error_has_location_and_stack() {
        let run = run(
            "function helper() {\n    throw new Error('boom');\n}\nexport default function () {\n  return helper();\n}\n",
            "null",
        );
        match run.error() {
            StepError::Exception {
                message,
                location,
                stack,
            } => {
                assert_eq!(message, "Error: boom");
                assert_eq!(
                    location,
                    &Some(Location {
                        filename: "step.js".into(),
                        line: 2,
                        column: 15
                    })
                );
                let stack = stack.as_deref().expect("a stack");
                assert!(stack.starts_with("Error: boom\n"), "{stack}");
                assert!(stack.contains("at helper (step.js:2:15)"), "{stack}");
                assert!(stack.contains("step.js:5:"), "{stack}");
            }
            other => panic!("expected an exception, got {other:?}"),
        }
    }

    #[test]
    fn thrown_values_and_rejections_are_described() {
        let thrown = run("export default function () { throw 42; }", "null");
        assert!(
            matches!(thrown.error(), StepError::Exception { message, location: None, stack: None } if message == "42"),
            "{:?}",
            thrown.error()
        );
        let object = run("export default function () { throw { code: 7 }; }", "null");
        assert!(
            matches!(object.error(), StepError::Exception { message, .. } if message == r#"{"code":7}"#),
            "{:?}",
            object.error()
        );
        let rejected = run(
            "export default async function () {\n  await null;\n  throw new RangeError('late');\n}\n",
            "null",
        );
        assert!(
            matches!(rejected.error(), StepError::Exception { message, location: Some(l), .. } if message == "RangeError: late" && l.line == 3),
            "{:?}",
            rejected.error()
        );
    }

    #[test]
    fn missing_default_export_is_a_module_error() {
        let none = run("export const a = 1;", "null");
        assert!(
            matches!(none.error(), StepError::Module { message } if message.contains("no default export function")),
            "{:?}",
            none.error()
        );
        let number = run("export default 42;", "null");
        assert!(
            matches!(number.error(), StepError::Module { message } if message.starts_with("the step's default export is a number, not a function")),
            "{:?}",
            number.error()
        );
    }

    #[test]
    fn imports_are_rejected() {
        let run = run(
            "import _ from 'lodash';\nexport default function () { return 1; }",
            "null",
        );
        assert!(
            matches!(run.error(), StepError::Module { message } if message.contains("imports \"lodash\"") && message.contains("cannot import")),
            "{:?}",
            run.error()
        );
        let dynamic = run_with(
            "export default async function () { return await import('/etc/passwd'); }",
            "null",
            limits(),
        );
        assert!(
            matches!(dynamic.error(), StepError::Module { message } if message.contains("cannot import")),
            "{:?}",
            dynamic.error()
        );
    }

    #[test]
    fn nul_in_source_is_a_syntax_error_where_it_is() {
        let run = run("export default () => {\n  return 'a\0b';\n};", "null");
        assert!(
            matches!(run.error(), StepError::Syntax { location, .. } if (location.line, location.column) == (2, 12)),
            "{:?}",
            run.error()
        );
    }

    #[test]
    fn bad_input_is_an_input_error() {
        let run = run("export default (i) => i;", "{not json");
        assert!(
            matches!(run.error(), StepError::Input { .. }),
            "{:?}",
            run.error()
        );
    }

    /// Runs `source` with a 100 ms limit and expects it to time out.
    fn assert_times_out(source: &'static str) {
        let limits = Limits {
            timeout: Duration::from_millis(100),
            ..limits()
        };
        let run = run_with(source, "null", limits);
        assert_eq!(
            run.error(),
            &StepError::Timeout {
                limit: limits.timeout
            },
            "{source}"
        );
    }

    #[test]
    fn endless_loop_times_out() {
        assert_times_out("export default function () { while (true) {} }");
        assert_times_out(
            "export default function () { for (;;) { try { while (true) {} } catch (e) {} } }",
        );
    }

    #[test]
    fn catastrophic_regex_times_out() {
        assert_times_out(
            "export default function () { return /^(a+)+$/.test('a'.repeat(40) + 'b'); }",
        );
    }

    #[test]
    fn endless_microtasks_time_out() {
        assert_times_out(
            "export default async function () { const spin = () => Promise.resolve().then(spin); spin(); return 1; }",
        );
    }

    #[test]
    fn memory_bomb_hits_the_heap_limit_and_the_next_step_runs() {
        on_sandbox_thread(|| {
            let limits = Limits {
                heap_bytes: 32 * 1024 * 1024,
                ..limits()
            };
            let mut engine = QuickJsEngine::new(settings(limits));
            let bombs = [
                "export default function () { let a = []; while (true) a.push(new Array(1e5).fill(1)); }",
                "let a = []; while (true) a.push(new Array(1e5).fill(1));\nexport default () => 1;",
                "export default function () { const a = []; for (let i = 0; ; i++) a.push('x'.repeat(1e6 + i)); }",
                "export default function () { const m = new Map(); for (let i = 0; ; i++) m.set(i, { i }); }",
                "export default function () { let a = []; try { while (true) a.push(new Array(1e5).fill(1)); } catch (e) { a = null; return 'survived'; } }",
                "export default function () { return new ArrayBuffer(64 * 1024 * 1024).byteLength; }",
            ];
            for bomb in bombs {
                let run = run_on(&mut engine, bomb, "null", limits);
                assert_eq!(
                    run.error(),
                    &StepError::HeapLimit {
                        limit_bytes: limits.heap_bytes
                    },
                    "{bomb}"
                );
                let next = run_on(&mut engine, "export default (i) => i + 1;", "41", limits);
                assert_eq!(next.value(), serde_json::json!(42), "after {bomb}");
            }
        });
    }

    #[test]
    fn deep_recursion_is_a_range_error() {
        let run = run(
            "function f(n) { return f(n + 1) + 1; }\nexport default () => f(0);",
            "null",
        );
        assert!(
            matches!(run.error(), StepError::Exception { message, .. } if message.starts_with("RangeError")),
            "{:?}",
            run.error()
        );
    }

    #[test]
    fn promise_that_never_settles() {
        let run = run("export default () => new Promise(() => {});", "null");
        assert_eq!(run.error(), &StepError::NeverSettled);
    }

    #[test]
    fn log_limit_stops_the_step_even_when_caught() {
        let limits = Limits {
            log_lines: 3,
            ..limits()
        };
        let run = run_with(
            "export default function () { for (let i = 0; ; i++) { try { console.log(i); } catch (e) {} } }",
            "null",
            limits,
        );
        assert_eq!(
            run.error(),
            &StepError::LogLimit {
                what: LogLimitKind::Lines,
                limit: 3
            }
        );
        assert_eq!(run.logs.len(), 3);
        let quick = run_with(
            "export default function () { for (let i = 0; i < 5; i++) { try { console.log(i); } catch (e) {} } return 1; }",
            "null",
            limits,
        );
        assert!(
            matches!(quick.error(), StepError::LogLimit { .. }),
            "{:?}",
            quick.error()
        );
    }

    #[test]
    fn changes_to_builtins_do_not_leak_into_the_next_execution() {
        on_sandbox_thread(|| {
            let mut engine = QuickJsEngine::new(settings(limits()));
            let first = run_on(
                &mut engine,
                "export default function () { globalThis.JSON.parse = null; Object.prototype.polluted = 1; globalThis.leak = 1; return 1; }",
                "null",
                limits(),
            );
            assert_eq!(first.value(), serde_json::json!(1));
            let second = run_on(
                &mut engine,
                "export default function () { return [typeof JSON.parse, ({}).polluted === undefined, typeof leak]; }",
                "null",
                limits(),
            );
            assert_eq!(
                second.value(),
                serde_json::json!(["function", true, "undefined"])
            );
        });
    }

    #[test]
    fn output_limit() {
        let limits = Limits {
            output_bytes: 100,
            ..limits()
        };
        let run = run_with("export default () => 'x'.repeat(200);", "null", limits);
        assert_eq!(
            run.error(),
            &StepError::OutputLimit {
                limit_bytes: 100,
                actual_bytes: 202
            }
        );
    }

    #[test]
    fn unserialisable_output() {
        let run = run("export default () => ({ ids: [1, 2n] });", "null");
        assert!(
            matches!(run.error(), StepError::NotSerializable { reason } if reason.contains("output.ids[1] is a BigInt")),
            "{:?}",
            run.error()
        );
    }

    #[test]
    fn heap_limit_differs_from_the_prepared_runtime() {
        on_sandbox_thread(|| {
            let mut engine = QuickJsEngine::new(settings(limits()));
            let small = Limits {
                heap_bytes: 8 * 1024 * 1024,
                ..limits()
            };
            let run = run_on(
                &mut engine,
                "export default () => new ArrayBuffer(16 * 1024 * 1024).byteLength;",
                "null",
                small,
            );
            assert_eq!(
                run.error(),
                &StepError::HeapLimit {
                    limit_bytes: small.heap_bytes
                }
            );
            let big = run_on(
                &mut engine,
                "export default () => new ArrayBuffer(16 * 1024 * 1024).byteLength;",
                "null",
                limits(),
            );
            assert_eq!(big.value(), serde_json::json!(16 * 1024 * 1024));
        });
    }

    #[test]
    fn no_ambient_authority() {
        let run = run(
            "export default function () {\n\
               const names = ['print', 'setTimeout', 'setInterval', 'fetch', 'require', 'process', 'std', 'os', 'performance', 'XMLHttpRequest', 'WebSocket', 'Deno', 'Bun', 'scriptArgs', 'gc'];\n\
               let blocked = null;\n\
               try { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); } catch (e) { blocked = e.name; }\n\
               return { present: names.filter((n) => n in globalThis), blocked };\n\
             }\n",
            "null",
        );
        assert_eq!(
            run.value(),
            serde_json::json!({ "present": [], "blocked": "TypeError" })
        );
    }

    #[test]
    fn location_parsing() {
        let stack = "    at <anonymous> (isoflow:prelude:3:4)\n    at f (my step (v2).js:12:7)\n";
        assert_eq!(
            find_location(stack, "my step (v2).js"),
            Some(Location {
                filename: "my step (v2).js".into(),
                line: 12,
                column: 7
            })
        );
        assert_eq!(
            find_location("    at s.js:1:2\n", "s.js").map(|l| (l.line, l.column)),
            Some((1, 2))
        );
        assert_eq!(find_location("    at map (native)\n", "s.js"), None);
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        assert_eq!(well_formed(b"ok"), "ok");
        assert_eq!(well_formed(b"a\xED\xA0\x80b"), "a\u{FFFD}b");
        assert_eq!(well_formed(b"\xED\xBF\xBF"), "\u{FFFD}");
        assert_eq!(well_formed(b"x\xFFy"), "x\u{FFFD}y");
        assert_eq!(well_formed("é😀".as_bytes()), "é😀");
    }
}
