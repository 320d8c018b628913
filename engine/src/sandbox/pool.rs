//! The sandbox's threads: a fixed set of OS threads, each of which keeps one
//! fresh isolate per engine ready, takes jobs from a shared queue, runs each
//! on its ready isolate, replies, and only then disposes of that isolate and
//! prepares the next one (so disposal and creation stay off the latency
//! path while the thread would otherwise be idle).
//!
//! Isolates never leave the thread that created them, so V8 needs no
//! `Locker` and QuickJS runtimes need not be `Send`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use super::host::{Control, Host};
use super::watchdog::Watchdog;
use super::{Execution, Limits, Outcome, Runtime, SandboxConfig, StepError};

/// A thread's state for one engine.
pub(crate) trait Engine {
    /// Runs `exec` on a fresh instance (the ready one if its heap limit
    /// matches) and returns the output's JSON text. The used instance is
    /// kept aside until [`Engine::recycle`]: it is never run again.
    fn execute(
        &mut self,
        exec: &Execution,
        limits: &Limits,
        control: &Arc<Control>,
        host: &mut Host,
    ) -> Result<String, StepError>;

    /// Disposes of the used instance and prepares the next fresh one.
    fn recycle(&mut self);
}

struct Job {
    exec: Execution,
    reply: oneshot::Sender<Outcome>,
}

/// Runs code steps on a pool of isolate threads. Cheap to clone; the threads
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    config: SandboxConfig,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Sandbox {
    /// Starts the isolate threads (and, for V8, initialises the engine once
    /// per process).
    pub fn new(config: SandboxConfig) -> Result<Sandbox, StepError> {
        let threads = config.threads.max(1);
        let watchdog = Arc::new(Watchdog::start().map_err(|e| StepError::Internal {
            message: format!("cannot start the watchdog thread: {e}"),
        })?);
        #[cfg(feature = "v8")]
        super::v8::init().map_err(|message| StepError::Internal { message })?;

        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let jobs = jobs.clone();
            let watchdog = watchdog.clone();
            let limits = config.limits;
            let warm = config.warm.clone();
            let handle = std::thread::Builder::new()
                .name(format!("isoflow-js-{i}"))
                // V8 reserves ~1 MB of the stack for JavaScript; QuickJS is
                // given 4 MB. The rest is headroom for native frames.
                .stack_size(16 * 1024 * 1024)
                .spawn(move || worker(&jobs, &watchdog, limits, &warm))
                .map_err(|e| StepError::Internal {
                    message: format!("cannot start sandbox thread: {e}"),
                })?;
            handles.push(handle);
        }
        Ok(Sandbox {
            inner: Arc::new(Inner {
                queue: Some(queue),
                threads: handles,
                config,
            }),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Runs one execution on a sandbox thread and waits for its outcome.
    /// A step's failure is in `Outcome::result`; this never fails itself.
    pub async fn execute(&self, exec: Execution) -> Outcome {
        let runtime = exec.runtime;
        match self.submit(exec) {
            Ok(rx) => rx.await.unwrap_or_else(|_| lost(runtime)),
            Err(outcome) => outcome,
        }
    }

    /// [`Sandbox::execute`] for synchronous callers. Must not be called from
    /// inside an async runtime.
    pub fn execute_blocking(&self, exec: Execution) -> Outcome {
        let runtime = exec.runtime;
        match self.submit(exec) {
            Ok(rx) => rx.blocking_recv().unwrap_or_else(|_| lost(runtime)),
            Err(outcome) => outcome,
        }
    }

    fn submit(&self, exec: Execution) -> Result<oneshot::Receiver<Outcome>, Outcome> {
        if !exec.runtime.is_available() {
            return Err(failed(StepError::Unavailable(exec.runtime)));
        }
        let (reply, rx) = oneshot::channel();
        let queue = self
            .inner
            .queue
            .as_ref()
            .expect("queue lives as long as the sandbox");
        queue
            .send(Job { exec, reply })
            .map_err(|_| failed(StepError::Shutdown))?;
        Ok(rx)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends every thread's loop once its job is done.
        self.queue = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn failed(error: StepError) -> Outcome {
    Outcome {
        result: Err(error),
        logs: Vec::new(),
        duration: std::time::Duration::ZERO,
    }
}

fn lost(runtime: Runtime) -> Outcome {
    failed(StepError::Internal {
        message: format!("the {runtime} thread running the step stopped before replying"),
    })
}

/// The engines one thread holds. Built lazily so that a thread only pays for
/// an engine once a step uses it, then kept warm.
struct Engines<'w> {
    #[cfg_attr(not(feature = "v8"), allow(dead_code))]
    watchdog: &'w Watchdog,
    limits: Limits,
    #[cfg(feature = "v8")]
    v8: Option<super::v8::V8Engine<'w>>,
    #[cfg(feature = "quickjs")]
    quickjs: Option<super::quickjs::QuickJsEngine>,
}

impl<'w> Engines<'w> {
    fn get(&mut self, runtime: Runtime) -> Option<&mut dyn Engine> {
        match runtime {
            #[cfg(feature = "v8")]
            Runtime::V8 => Some(
                self.v8
                    .get_or_insert_with(|| super::v8::V8Engine::new(self.watchdog, self.limits)),
            ),
            #[cfg(feature = "quickjs")]
            Runtime::QuickJs => Some(
                self.quickjs
                    .get_or_insert_with(|| super::quickjs::QuickJsEngine::new(self.limits)),
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

fn worker(
    jobs: &crossbeam_channel::Receiver<Job>,
    watchdog: &Watchdog,
    limits: Limits,
    warm: &[Runtime],
) {
    let mut engines = Engines {
        watchdog,
        limits,
        #[cfg(feature = "v8")]
        v8: None,
        #[cfg(feature = "quickjs")]
        quickjs: None,
    };
    for &runtime in warm {
        let _ = engines.get(runtime);
    }
    while let Ok(Job { exec, reply }) = jobs.recv() {
        let start = Instant::now();
        let limits = exec.limits.unwrap_or(limits);
        let control = Arc::new(Control::new(start + limits.timeout));
        let mut host = Host::new(limits);
        let runtime = exec.runtime;
        let result = match engines.get(runtime) {
            Some(engine) => catch_unwind(AssertUnwindSafe(|| {
                engine.execute(&exec, &limits, &control, &mut host)
            }))
            .unwrap_or_else(|panic| {
                engines.reset(runtime);
                Err(StepError::Internal {
                    message: format!("the {runtime} engine panicked: {}", panic_message(&panic)),
                })
            }),
            None => Err(StepError::Unavailable(runtime)),
        };
        let outcome = Outcome {
            result: result.map(super::host::well_formed_json),
            logs: host.into_logs(),
            duration: start.elapsed(),
        };
        // The caller may have given up waiting; the step ran all the same.
        let _ = reply.send(outcome);
        // The scheduler tends to queue the woken caller on this CPU, behind
        // the milliseconds of disposal and creation that follow; yielding
        // lets it run first (measured: p50 round trip 2.6 ms → ~0.3 ms).
        std::thread::yield_now();
        if let Some(engine) = engines.get(runtime) {
            engine.recycle();
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
