//! The sandbox process's step loop: read a step from the node, run it on a
//! fresh isolate, answer, then dispose of that isolate and prepare the next
//! one (after answering, so disposal and creation stay off the step's
//! latency).
//!
//! Isolates never leave the thread that created them (this one), so V8
//! needs no `Locker` and QuickJS runtimes need not be `Send`.

use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use crate::host::{Control, Host};
use crate::protocol::{self, DoneMeta, Hello, ProtocolError, RunMeta, Tag};
use crate::step::{Limits, Runtime, StepError};
use crate::watchdog::Watchdog;

/// One step as the engines see it. The input is handed over, not
/// borrowed: an engine takes it, makes its own string of it, and frees it
/// before the step's code runs, so a large input is held twice only for
/// that moment.
#[derive(Debug)]
pub(crate) struct Job<'a> {
    pub runtime: Runtime,
    pub filename: &'a str,
    pub source: &'a str,
    pub input: Input,
}

/// A step's input JSON, to be taken once.
#[derive(Default)]
pub(crate) struct Input(std::cell::Cell<Option<String>>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

impl Input {
    pub fn new(text: String) -> Input {
        Input(std::cell::Cell::new(Some(text)))
    }

    /// The input; empty if it was taken already.
    pub fn take(&self) -> String {
        self.0.take().unwrap_or_default()
    }
}

/// A thread's state for one engine.
pub(crate) trait Engine {
    /// Runs `job` on a fresh instance (the ready one if its heap limit
    /// matches) and returns the output's JSON text. The used instance is
    /// kept aside until [`Engine::recycle`]: it is never run again.
    fn execute(
        &mut self,
        job: &Job<'_>,
        limits: &Limits,
        control: &Arc<Control>,
        host: &mut Host,
    ) -> Result<String, StepError>;

    /// Disposes of the used instance and prepares the next fresh one.
    fn recycle(&mut self);

    /// How long the instance the last [`Engine::execute`] ran on took to
    /// make, in microseconds.
    fn created_us(&self) -> Option<u64>;
}

/// Microseconds since `start`.
pub(crate) fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A function a test build of the sandbox program exposes to JavaScript as
/// `isoflowTestHook(name, arg)`, to stand in for an exploit (abort, a null
/// dereference, a forbidden system call). Production programs register none,
/// and then the global does not exist.
pub type Hook = fn(&str) -> String;

/// Named [`Hook`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hooks(pub &'static [(&'static str, Hook)]);

impl Hooks {
    pub(crate) fn call(&self, name: &str, arg: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, hook)| hook(arg))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Process-wide engine settings, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// The heap limit of the instances prepared ahead of a step.
    pub heap_bytes: usize,
    pub hooks: Hooks,
}

/// The engines one process holds. Built lazily so that a process only pays
/// for an engine once a step uses it (or `warm` asks for it), then kept
/// warm.
pub(crate) struct Engines<'w> {
    #[cfg_attr(not(feature = "v8"), allow(dead_code))]
    watchdog: &'w Watchdog,
    settings: Settings,
    #[cfg(feature = "v8")]
    v8: Option<crate::v8::V8Engine<'w>>,
    #[cfg(feature = "quickjs")]
    quickjs: Option<crate::quickjs::QuickJsEngine>,
}

impl<'w> Engines<'w> {
    pub fn new(watchdog: &'w Watchdog, settings: Settings) -> Self {
        Engines {
            watchdog,
            settings,
            #[cfg(feature = "v8")]
            v8: None,
            #[cfg(feature = "quickjs")]
            quickjs: None,
        }
    }

    pub fn get(&mut self, runtime: Runtime) -> Option<&mut dyn Engine> {
        match runtime {
            #[cfg(feature = "v8")]
            Runtime::V8 => Some(
                self.v8
                    .get_or_insert_with(|| crate::v8::V8Engine::new(self.watchdog, self.settings)),
            ),
            #[cfg(feature = "quickjs")]
            Runtime::QuickJs => Some(
                self.quickjs
                    .get_or_insert_with(|| crate::quickjs::QuickJsEngine::new(self.settings)),
            ),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Forgets an engine whose state can no longer be trusted (it panicked).
    fn reset(&mut self, runtime: Runtime) {
        match runtime {
            #[cfg(feature = "v8")]
            Runtime::V8 => self.v8 = None,
            #[cfg(feature = "quickjs")]
            Runtime::QuickJs => self.quickjs = None,
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

/// Sends `hello`, then runs steps until the node closes the socket.
pub(crate) fn serve(
    socket: &mut UnixStream,
    engines: &mut Engines<'_>,
    hello: &Hello,
) -> Result<(), ProtocolError> {
    let socket: &UnixStream = socket;
    protocol::write_frame(&mut &*socket, Tag::Hello, hello, &[])?;
    // A step's header, meta and small input arrive in one read.
    let mut reader = std::io::BufReader::with_capacity(64 << 10, socket);
    loop {
        // The node is trusted: its frames are as large as the step it sends.
        let frame = match protocol::read_frame(&mut reader, u64::MAX) {
            Err(ProtocolError::Closed) => return Ok(()),
            frame => frame?.expect(Tag::Run)?,
        };
        let meta: RunMeta = frame.meta()?;
        let body = protocol::split_run(&meta, frame.body)?;
        let text = |bytes: Vec<u8>| {
            String::from_utf8(bytes)
                .map_err(|e| ProtocolError::Malformed(format!("a step's text is not UTF-8: {e}")))
        };
        let (filename, source) = (text(body.filename)?, text(body.source)?);
        let job = Job {
            runtime: meta.runtime,
            filename: &filename,
            source: &source,
            input: Input::new(text(body.input)?),
        };
        let limits = meta.limits.clamped();
        if let Some(allowance) = meta.address_space {
            crate::lockdown::cap_address_space(allowance);
        }
        let (done, output) = run(engines, &job, limits);
        let runtime = job.runtime;
        drop(job);
        protocol::write_frame(&mut &*socket, Tag::Done, &done, &[output.as_bytes()])?;
        drop(output);
        // The scheduler tends to queue the woken node thread on this CPU,
        // behind the milliseconds of disposal and creation that follow;
        // yielding (at this process's lower priority, see lockdown.rs) lets
        // it run first.
        std::thread::yield_now();
        if let Some(engine) = engines.get(runtime) {
            engine.recycle();
        }
    }
}

/// Runs one step; a failure of the step is in the meta, never an `Err`.
fn run(engines: &mut Engines<'_>, job: &Job<'_>, limits: Limits) -> (DoneMeta, String) {
    let start = Instant::now();
    let deadline = start
        .checked_add(limits.timeout)
        .expect("a clamped time limit fits an Instant");
    let control = Arc::new(Control::new(deadline));
    let mut host = Host::new(limits);
    let runtime = job.runtime;
    let result = match engines.get(runtime) {
        Some(engine) => catch_unwind(AssertUnwindSafe(|| {
            engine.execute(job, &limits, &control, &mut host)
        }))
        .unwrap_or_else(|panic| {
            engines.reset(runtime);
            Err(StepError::Internal {
                message: format!("the {runtime} engine panicked: {}", panic_message(&panic)),
            })
        }),
        None => Err(StepError::Unavailable(runtime)),
    };
    let duration_us = micros_since(start);
    let isolate_create_us = engines.get(runtime).and_then(|engine| engine.created_us());
    let (error, output) = match result.map(crate::host::well_formed_json) {
        Ok(text) => (None, text),
        Err(error) => (Some(error.bounded()), String::new()),
    };
    let done = DoneMeta {
        error,
        logs: host.into_logs(),
        duration_us,
        isolate_create_us,
    };
    (done, output)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
