//! One sandbox process, seen from the node: starting it, sending it a step,
//! reading its answer without trusting it, and saying why it died.
//!
//! A step runs from a thread that may wait ([`Process::run_blocking`]) or
//! from a tokio task ([`Process::run_async`]); the two share everything but
//! the waiting, which is in [`wire`](super::wire).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::SystemTime;
use std::time::{Duration, Instant};

use isoflow_sandbox::lockdown::{EXIT_FORBIDDEN_SYSCALL, EXIT_STARTUP};
use isoflow_sandbox::process::{EXIT_FATAL, Options};
use isoflow_sandbox::protocol::{self, DoneMeta, Hello, RunMeta, Tag, VERSION};
use isoflow_sandbox::step::cut_text;

use super::memory::{self, Cgroup};
use super::wire::{self, Incoming, Outgoing, Received};
use super::{Execution, Limits, Outcome, Program, StepError};

/// How long after a step's deadline the node waits for its answer before it
/// kills the process: the process enforces the deadline itself, this is the
/// backstop for code that does not check it (a long builtin) and for a
/// process that stopped answering. Reading the input counts too.
fn kill_after(limits: &Limits, input_len: usize) -> Duration {
    let transfer = Duration::from_millis(u64::try_from(input_len >> 20).unwrap_or(u64::MAX) * 20);
    limits.timeout + Duration::from_secs(1) + transfer
}

/// How a sandbox process is started.
#[derive(Debug)]
pub(crate) struct Spawner {
    pub program: Program,
    pub options: Options,
    pub memory: memory::Control,
    /// Where each process gets a pids cgroup, if the machine allows.
    pub pids: Option<memory::CgroupTree>,
    pub margin: usize,
    pub start_timeout: Duration,
}

/// A step that did not complete on a process.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The step never reached the process (it had died, or never became
    /// ready): another process may run it.
    NotDelivered(StepError),
    /// The process died, stalled or misbehaved during the step.
    Failed(StepError),
}

/// What went wrong with a step, before the process's end is known.
#[derive(Debug)]
enum Trouble {
    /// The step never reached the process.
    Undelivered(Ending),
    /// The process ended, stalled or misbehaved during the step.
    During(Ending),
    /// No answer by the deadline: the step timed out (unless the memory cap
    /// ended the process first).
    Late(Duration),
}

/// Why the node stopped talking to a process.
#[derive(Debug)]
enum Ending {
    /// Its socket closed or broke: it ended on its own.
    Ended,
    /// The step's deadline (plus grace) passed without an answer.
    Deadline(Duration),
    /// It sent something that is not a valid answer.
    Misbehaved(String),
}

/// A running sandbox process.
#[derive(Debug)]
pub(crate) struct Process {
    // Dropped last: `Drop` reaps the child before the cgroup goes.
    child: Child,
    socket: UnixStream,
    stderr: Option<ChildStderr>,
    pub pid: u32,
    /// The tenant it serves, once it ran a step.
    pub tenant: Option<Arc<str>>,
    pub steps: u32,
    pub last_used: Instant,
    hello: Option<Hello>,
    /// Whether it has died; then it is only ever dropped.
    dead: bool,
    /// Whether it may have written to stderr since it was last read: after
    /// a step that hit its heap limit (V8 says so there). An honest process
    /// writes nothing else until it dies; a hostile one that fills the pipe
    /// only stalls itself, into its deadline.
    stderr_unread: bool,
    cgroup: Option<Cgroup>,
    /// Its pids cgroup (a cap on its threads): only held, so that it is
    /// removed once the process is gone.
    _threads: Option<Cgroup>,
    /// `/proc/<pid>/stat`, kept open to read its CPU time per step.
    stat: Option<File>,
    /// Its CPU time (clock ticks) when it last became idle.
    pub idle_cpu: Option<u64>,
    /// How its memory is capped.
    memory_mode: memory::Mode,
    /// Under an address space cap: the address space its first step was
    /// allowed, which became its hard limit (it can never get more).
    pub address_space: Option<u64>,
    /// The current step's heap limit and the memory cap set for it.
    step_heap: usize,
    step_cap: usize,
    started: Instant,
}

impl Spawner {
    /// Starts a process. It becomes ready (says Hello) on its own time;
    /// [`Process::ready`] waits for that.
    pub fn spawn(&self) -> io::Result<Process> {
        let (ours, theirs) = UnixStream::pair()?;
        // The node's end is only ever used without blocking, by deadlines.
        ours.set_nonblocking(true)?;
        let mut command = Command::new(&self.program.path);
        command
            .args(&self.program.args)
            .args(self.options.to_args())
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Out of the node's process group: a Ctrl-C meant for the node
            // must not kill steps a graceful stop lets finish.
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", self.program.path.display()),
            )
        })?;
        let pid = child.id();
        let stderr = child.stderr.take();
        if let Some(stderr) = &stderr {
            set_nonblocking(stderr)?;
        }
        // A process that cannot be put in its cgroups is stopped, not run
        // uncapped.
        let abandon = |child: &mut Child, controller: &str, e: io::Error| {
            let _ = child.kill();
            let _ = child.wait();
            io::Error::new(
                e.kind(),
                format!("cannot put sandbox process {pid} in its {controller} cgroup: {e}"),
            )
        };
        let cgroup = match &self.memory {
            memory::Control::Cgroup(tree) => Some(
                tree.adopt(pid)
                    .map_err(|e| abandon(&mut child, "memory", e))?,
            ),
            _ => None,
        };
        let threads = match &self.pids {
            Some(tree) => Some(
                tree.adopt(pid)
                    .and_then(|group| group.set_max_threads(memory::MAX_THREADS).map(|()| group))
                    .map_err(|e| abandon(&mut child, "pids", e))?,
            ),
            None => None,
        };
        let now = Instant::now();
        Ok(Process {
            child,
            socket: ours,
            stderr,
            pid,
            tenant: None,
            steps: 0,
            last_used: now,
            hello: None,
            dead: false,
            stderr_unread: false,
            cgroup,
            _threads: threads,
            stat: File::open(format!("/proc/{pid}/stat")).ok(),
            idle_cpu: None,
            memory_mode: self.memory.mode(),
            address_space: None,
            step_heap: 0,
            step_cap: 0,
            started: now,
        })
    }
}

impl Process {
    /// Waits on this thread for the process's Hello (once), within the start
    /// time-out.
    pub fn ready_blocking(&mut self, spawner: &Spawner) -> Result<&Hello, StepError> {
        if self.hello.is_none() {
            let incoming = Incoming::new(self.started + spawner.start_timeout, 1 << 20);
            let received = wire::receive_blocking(&self.socket, incoming);
            let hello = match self.hello_from(received, spawner) {
                Ok(hello) => hello,
                Err(ending) => {
                    let status = self.settle_blocking(&ending);
                    return Err(not_started(self.death(ending, status)));
                }
            };
            self.hello = Some(hello);
        }
        Ok(self.hello.as_ref().expect("set above"))
    }

    /// [`Process::ready_blocking`] for a tokio task.
    pub async fn ready_async(&mut self, spawner: &Spawner) -> Result<&Hello, StepError> {
        if self.hello.is_none() {
            let incoming = Incoming::new(self.started + spawner.start_timeout, 1 << 20);
            let received = match wire::register(&self.socket) {
                Ok(registered) => wire::receive_async(&registered, incoming).await,
                Err(_) => Err(Received::Closed),
            };
            let hello = match self.hello_from(received, spawner) {
                Ok(hello) => hello,
                Err(ending) => {
                    let status = self.settle_async(&ending).await;
                    return Err(not_started(self.death(ending, status)));
                }
            };
            self.hello = Some(hello);
        }
        Ok(self.hello.as_ref().expect("set above"))
    }

    fn hello_from(
        &self,
        received: Result<protocol::Frame, Received>,
        spawner: &Spawner,
    ) -> Result<Hello, Ending> {
        let hello = received
            .and_then(|frame| {
                frame
                    .expect(Tag::Hello)
                    .and_then(|f| f.meta::<Hello>())
                    .map_err(|e| Received::Misbehaved(e.to_string()))
            })
            .map_err(|received| match received {
                Received::NoAnswer => Ending::Deadline(spawner.start_timeout),
                Received::Misbehaved(why) => Ending::Misbehaved(why),
                Received::Closed => Ending::Ended,
            })?;
        if hello.version != VERSION || hello.pid != self.pid {
            return Err(Ending::Misbehaved(format!(
                "it speaks protocol {} as pid {}, not protocol {VERSION} as pid {} ({} is not this \
                 node's sandbox program)",
                hello.version,
                hello.pid,
                self.pid,
                spawner.program.path.display()
            )));
        }
        Ok(hello)
    }

    /// Runs one step, waiting on this thread. A step that fails inside the
    /// process (an exception, a limit) is an `Ok` outcome: the process is
    /// fine and can run more.
    pub fn run_blocking(
        &mut self,
        exec: &Execution,
        limits: &Limits,
        spawner: &Spawner,
    ) -> Result<Outcome, RunError> {
        self.ready_blocking(spawner)
            .map_err(RunError::NotDelivered)?;
        let mut head = Vec::new();
        let result = match self.prepare(exec, limits, spawner, &mut head) {
            Err(trouble) => Err(trouble),
            Ok(slices) => {
                let mut out = Outgoing::new(&slices);
                let deadline = out.deadline();
                match wire::send_blocking(&self.socket, &mut out, deadline) {
                    Err(error) => Err(undelivered(&error)),
                    Ok(()) => {
                        let sent_at = SystemTime::now();
                        let wait = kill_after(limits, exec.input_json.len());
                        let incoming = Incoming::new(Instant::now() + wait, reply_limit(limits));
                        let received = wire::receive_blocking(&self.socket, incoming);
                        self.conclude(received, limits, sent_at, wait)
                    }
                }
            }
        };
        result.map_err(|trouble| {
            let ending = trouble.ending();
            let status = self.settle_blocking(ending);
            self.fail(trouble, status, limits)
        })
    }

    /// [`Process::run_blocking`] for a tokio task: the socket is waited on
    /// through the runtime's reactor, so no other thread is involved.
    pub async fn run_async(
        &mut self,
        exec: &Execution,
        limits: &Limits,
        spawner: &Spawner,
    ) -> Result<Outcome, RunError> {
        self.ready_async(spawner)
            .await
            .map_err(RunError::NotDelivered)?;
        let mut head = Vec::new();
        let result = match (
            self.prepare(exec, limits, spawner, &mut head),
            wire::register(&self.socket),
        ) {
            (Err(trouble), _) => Err(trouble),
            (Ok(_), Err(error)) => Err(undelivered(&error)),
            (Ok(slices), Ok(registered)) => {
                let mut out = Outgoing::new(&slices);
                let deadline = out.deadline();
                match wire::send_async(&self.socket, &registered, &mut out, deadline).await {
                    Err(error) => Err(undelivered(&error)),
                    Ok(()) => {
                        let sent_at = SystemTime::now();
                        let wait = kill_after(limits, exec.input_json.len());
                        let incoming = Incoming::new(Instant::now() + wait, reply_limit(limits));
                        let received = wire::receive_async(&registered, incoming).await;
                        drop(registered);
                        self.conclude(received, limits, sent_at, wait)
                    }
                }
            }
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(trouble) => {
                let status = self.settle_async(trouble.ending()).await;
                Err(self.fail(trouble, status, limits))
            }
        }
    }

    /// Caps the process for the step and makes its frame: `head` gets the
    /// header and meta, and the slices to send follow.
    fn prepare<'a>(
        &mut self,
        exec: &'a Execution,
        limits: &Limits,
        spawner: &Spawner,
        head: &'a mut Vec<u8>,
    ) -> Result<Vec<&'a [u8]>, Trouble> {
        // What it said about the last step is old news.
        if std::mem::take(&mut self.stderr_unread) {
            let _ = self.drain_stderr();
        }
        let input = exec.input_json.as_bytes();
        let address_space = self
            .cap(limits, input.len(), spawner)
            .map_err(|why| Trouble::Undelivered(Ending::Misbehaved(why)))?;
        let meta = RunMeta {
            runtime: exec.runtime,
            limits: *limits,
            address_space,
            input_len: input.len() as u64,
            filename_len: exec.script.filename.len() as u64,
            source_len: exec.script.source.len() as u64,
        };
        let sections = [
            input,
            exec.script.filename.as_bytes(),
            exec.script.source.as_bytes(),
        ];
        protocol::frame_slices(head, Tag::Run, &meta, &sections)
            .map_err(|e| Trouble::Undelivered(Ending::Misbehaved(e.to_string())))
    }

    /// Makes the outcome of an answer, or says what went wrong.
    fn conclude(
        &mut self,
        received: Result<protocol::Frame, Received>,
        limits: &Limits,
        sent_at: SystemTime,
        wait: Duration,
    ) -> Result<Outcome, Trouble> {
        let frame = match received {
            Ok(frame) => frame,
            Err(Received::NoAnswer) => return Err(Trouble::Late(wait)),
            Err(Received::Misbehaved(why)) => return Err(Trouble::During(Ending::Misbehaved(why))),
            Err(Received::Closed) => return Err(Trouble::During(Ending::Ended)),
        };
        self.steps += 1;
        self.last_used = Instant::now();
        let outcome = frame
            .expect(Tag::Done)
            .and_then(|f| Ok((f.meta::<DoneMeta>()?, f.body)))
            .map_err(|e| e.to_string())
            .and_then(|(meta, body)| answer(meta, body, limits, sent_at..=SystemTime::now()))
            .map_err(|why| Trouble::During(Ending::Misbehaved(why)))?;
        self.stderr_unread = matches!(outcome.result, Err(StepError::HeapLimit { .. }));
        Ok(outcome)
    }

    /// The step's error once the process's end is known (`status`).
    fn fail(&mut self, trouble: Trouble, status: Option<ExitStatus>, limits: &Limits) -> RunError {
        match trouble {
            Trouble::Undelivered(ending) => RunError::NotDelivered(self.death(ending, status)),
            Trouble::During(ending) => RunError::Failed(self.death(ending, status)),
            Trouble::Late(wait) => {
                RunError::Failed(match self.death(Ending::Deadline(wait), status) {
                    error @ StepError::MemoryLimit { .. } => error,
                    _ => StepError::Timeout {
                        limit: limits.timeout,
                    },
                })
            }
        }
    }

    /// How the process ended, waiting on this thread: a process whose
    /// socket closed gets half a second to exit on its own (its exit status
    /// says why); any other is killed.
    fn settle_blocking(&mut self, ending: &Ending) -> Option<ExitStatus> {
        if matches!(ending, Ending::Ended) {
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        None
    }

    /// [`Process::settle_blocking`] for a tokio task.
    async fn settle_async(&mut self, ending: &Ending) -> Option<ExitStatus> {
        if matches!(ending, Ending::Ended) {
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(status);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        None
    }

    /// Sets the process's memory cap for a step with `limits` and an input
    /// of `input_len` bytes: its cgroup's limit, or the address space the
    /// process is to allow itself (returned, for the step's meta).
    fn cap(
        &mut self,
        limits: &Limits,
        input_len: usize,
        spawner: &Spawner,
    ) -> Result<Option<u64>, String> {
        let bytes = limits
            .heap_bytes
            .saturating_add(input_len)
            .saturating_add(spawner.margin);
        self.step_heap = limits.heap_bytes;
        self.step_cap = bytes;
        match (&spawner.memory, &mut self.cgroup) {
            (memory::Control::Cgroup(_), Some(cgroup)) => {
                cgroup
                    .set_limit(bytes)
                    .map_err(|e| format!("cannot set its memory cap: {e}"))?;
                Ok(None)
            }
            (memory::Control::AddressSpace, _) => {
                let allowance = address_space_allowance(bytes);
                if self.address_space.is_some_and(|hard| hard < allowance) {
                    return Err("its address space was capped for a smaller step".to_owned());
                }
                self.address_space.get_or_insert(allowance);
                Ok(Some(allowance))
            }
            _ => Ok(None),
        }
    }

    /// The process's CPU time so far (user + system, all threads), in
    /// clock ticks, as the kernel counts it.
    pub fn cpu_ticks(&self) -> Option<u64> {
        self.stat.as_ref().and_then(cpu_ticks)
    }

    /// Ends the process (if it has not ended: `status` says how it did) and
    /// says what became of it, as the error of the step it was running.
    fn death(&mut self, ending: Ending, status: Option<ExitStatus>) -> StepError {
        self.dead = true;
        let status = status.or_else(|| {
            let _ = self.child.kill();
            self.child.wait().ok()
        });
        let (said, heap) = self.last_words();
        let oom = self.cgroup.as_ref().is_some_and(Cgroup::oom_killed);
        let fatal_oom =
            status.and_then(|s| s.code()) == Some(EXIT_FATAL) && said.starts_with("out of memory");
        if heap && (oom || fatal_oom) {
            // V8 reached the step's heap limit and was unwinding the step
            // when the memory cap (or V8 itself) ended the process.
            return StepError::HeapLimit {
                limit_bytes: self.step_heap,
            };
        }
        let signal = status.and_then(|s| s.signal());
        let code = status.and_then(|s| s.code());
        // Under an address space cap, V8 gives up ("out of memory") when an
        // allocation fails: that is the cap, as the OOM killer is under a
        // cgroup.
        let capped_by_address_space =
            fatal_oom && matches!(self.memory_mode, memory::Mode::AddressSpace);
        if oom || capped_by_address_space {
            return StepError::MemoryLimit {
                limit_bytes: self.step_heap,
                cap_bytes: self.step_cap,
            };
        }
        if let Ending::Deadline(waited) = ending {
            return StepError::Crashed {
                reason: format!(
                    "it did not answer within {} ms, its time limit and grace, and was killed",
                    waited.as_millis()
                ),
            }
            .bounded();
        }
        let reason = match (ending, code, signal) {
            (Ending::Misbehaved(why), _, _) => {
                format!("it broke the protocol ({why}) and was stopped")
            }
            (_, Some(EXIT_FATAL), _) => with_words("V8 gave up", &said),
            (_, Some(EXIT_FORBIDDEN_SYSCALL), _) => {
                with_words("it made a system call the sandbox forbids", &said)
            }
            (_, Some(EXIT_STARTUP), _) => with_words("it could not start", &said),
            (_, _, Some(libc::SIGXCPU)) => "it used more CPU time than its step may".to_owned(),
            (_, _, Some(signal)) => {
                with_words(&format!("killed by {}", signal_name(signal)), &said)
            }
            (_, Some(code), _) => with_words(&format!("it exited with code {code}"), &said),
            (_, None, None) => "it ended for no reason it could give".to_owned(),
        };
        StepError::Crashed { reason }.bounded()
    }

    /// Reads what the process wrote to stderr since the last call (at most
    /// 1 MiB; more is dropped unread) and returns its last 4 KiB. Called
    /// before each step, so that a process cannot fill the pipe and stall.
    fn drain_stderr(&mut self) -> String {
        let Some(stderr) = self.stderr.as_mut() else {
            return String::new();
        };
        let mut tail: Vec<u8> = Vec::new();
        let mut buffer = [0u8; 8192];
        let mut total = 0usize;
        while total < 1 << 20 {
            match stderr.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    tail.extend_from_slice(&buffer[..n]);
                    if tail.len() > 4096 {
                        tail.drain(..tail.len() - 4096);
                    }
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    }

    /// The last line the process wrote to stderr, made safe to quote, and
    /// whether V8 said during this step that the heap limit was reached.
    fn last_words(&mut self) -> (String, bool) {
        let text = self.drain_stderr();
        let heap = text.contains(HEAP_LIMIT_SAID);
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.contains(HEAP_LIMIT_SAID))
            .unwrap_or("");
        let line = line.strip_prefix("isoflow-sandbox: ").unwrap_or(line);
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        (cut_text(clean, 512), heap)
    }

    /// The peak memory the cgroup charged to this process, when known.
    pub fn peak_memory(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(Cgroup::peak)
    }

    /// How long ago it was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // No state worth saving: the process holds nothing but isolates.
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The line V8's near-heap-limit callback writes (see the C++ bridge).
const HEAP_LIMIT_SAID: &str = "isoflow-sandbox: heap limit reached";

/// The address space a process may add for a step whose memory cap is
/// `bytes`: V8 reserves address space for each new isolate (its code range,
/// semi-spaces), so there is room for one more of those.
pub(crate) fn address_space_allowance(bytes: usize) -> u64 {
    const RESERVE: usize = 512 << 20;
    bytes.saturating_add(RESERVE) as u64
}

fn not_started(error: StepError) -> StepError {
    match error {
        StepError::Crashed { reason } => StepError::Crashed {
            reason: format!("a new sandbox process did not become ready: {reason}"),
        },
        other => other,
    }
}

fn with_words(what: &str, said: &str) -> String {
    if said.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {said}")
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

/// The largest answer a process may send for a step with `limits`: the
/// output, the logs as JSON (escaping can grow text sixfold), an error and
/// some room.
fn reply_limit(limits: &Limits) -> u64 {
    let logs = limits
        .log_bytes
        .saturating_mul(6)
        .saturating_add(limits.log_lines.saturating_mul(128));
    (limits.output_bytes as u64)
        .saturating_add(logs as u64)
        .saturating_add(1 << 20)
}

/// Checks an answer against the step's limits and makes the outcome: the
/// output within its limit and UTF-8, error texts and log lines cut and
/// made safe to print (no terminal control sequences), log times within
/// the time the step ran.
fn answer(
    meta: DoneMeta,
    body: Vec<u8>,
    limits: &Limits,
    ran: std::ops::RangeInclusive<SystemTime>,
) -> Result<Outcome, String> {
    let result = match meta.error {
        Some(_) if !body.is_empty() => {
            return Err("it sent an output with an error".to_owned());
        }
        Some(error) => Err(error.bounded().map_texts(printable)),
        None if body.len() > limits.output_bytes => Err(StepError::OutputLimit {
            limit_bytes: limits.output_bytes,
            actual_bytes: body.len(),
        }),
        None => Ok(String::from_utf8(body).map_err(|e| format!("its output is not UTF-8: {e}"))?),
    };
    let mut logs = meta.logs;
    logs.truncate(limits.log_lines);
    let mut total = 0usize;
    for line in &mut logs {
        let message = std::mem::take(&mut line.message);
        line.message = printable(cut_text(message, Limits::MAX_LOG_LINE_BYTES + 64));
        line.time = line.time.clamp(*ran.start(), *ran.end());
        total += line.message.len();
        if total
            > limits
                .log_bytes
                .saturating_add(limits.log_lines.saturating_mul(64))
        {
            return Err("its logs are over the step's log limit".to_owned());
        }
    }
    Ok(Outcome {
        result,
        logs,
        duration: Duration::from_micros(meta.duration_us),
        queue_wait: Duration::ZERO,
        isolate_create: meta.isolate_create_us.map(Duration::from_micros),
    })
}

/// `text` with every control character but line breaks and tabs shown as
/// `\u{..}`: logs and errors are the step's own text, and an escape
/// sequence in them would rewrite the terminal of whoever reads them.
fn printable(text: String) -> String {
    let is_unsafe = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(is_unsafe) {
        return text;
    }
    text.chars()
        .map(|c| {
            if is_unsafe(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A step whose frame could not be sent: it never reached the process.
fn undelivered(error: &io::Error) -> Trouble {
    Trouble::Undelivered(if is_timeout(error) {
        Ending::Misbehaved("it stopped reading its step".to_owned())
    } else {
        Ending::Ended
    })
}

impl Trouble {
    fn ending(&self) -> &Ending {
        static LATE: Ending = Ending::Deadline(Duration::ZERO);
        match self {
            Trouble::Undelivered(ending) | Trouble::During(ending) => ending,
            Trouble::Late(_) => &LATE,
        }
    }
}

fn set_nonblocking(stderr: &ChildStderr) -> io::Result<()> {
    let fd = stderr.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns, integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process's CPU time (user + system, all threads), in clock ticks, from
/// its `/proc/<pid>/stat`.
fn cpu_ticks(stat: &File) -> Option<u64> {
    let mut buffer = [0u8; 1024];
    let n = stat.read_at(&mut buffer, 0).ok()?;
    let text = std::str::from_utf8(&buffer[..n]).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // utime and stime are the 14th and 15th fields, 12th and 13th after it.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second, for [`Process::cpu_ticks`].
pub(crate) fn ticks_per_second() -> u64 {
    // SAFETY: sysconf with a constant argument.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use isoflow_sandbox::{LogLevel, LogLine};

    use super::*;

    fn meta(error: Option<StepError>, logs: Vec<LogLine>) -> DoneMeta {
        DoneMeta {
            error,
            logs,
            duration_us: 5,
            isolate_create_us: None,
        }
    }

    fn line(message: String) -> LogLine {
        LogLine {
            level: LogLevel::Info,
            message,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn answers_are_checked_against_the_limits() {
        let limits = Limits {
            output_bytes: 10,
            log_lines: 2,
            log_bytes: 100,
            ..Limits::default()
        };
        let ok = answer(meta(None, vec![]), b"[1,2]".to_vec(), &limits, ran()).unwrap();
        assert_eq!(ok.result.unwrap(), "[1,2]");
        assert_eq!(ok.duration, Duration::from_micros(5));

        let big = answer(meta(None, vec![]), vec![b'1'; 11], &limits, ran()).unwrap();
        assert_eq!(
            big.result.unwrap_err(),
            StepError::OutputLimit {
                limit_bytes: 10,
                actual_bytes: 11
            }
        );
        assert!(answer(meta(None, vec![]), vec![0xff], &limits, ran()).is_err());
        let error = StepError::NeverSettled;
        assert!(
            answer(
                meta(Some(error.clone()), vec![]),
                b"1".to_vec(),
                &limits,
                ran()
            )
            .is_err()
        );

        let lines = vec![line("a".into()), line("b".into()), line("c".into())];
        let kept = answer(meta(None, lines), b"1".to_vec(), &limits, ran()).unwrap();
        assert_eq!(kept.logs.len(), 2, "lines past the limit are dropped");

        let huge = vec![line("x".repeat(1 << 20)), line("y".repeat(1 << 20))];
        assert!(answer(meta(None, huge), b"1".to_vec(), &limits, ran()).is_err());

        let long = StepError::Module {
            message: "m".repeat(1 << 20),
        };
        let bounded = answer(meta(Some(long), vec![]), Vec::new(), &limits, ran()).unwrap();
        let StepError::Module { message } = bounded.result.unwrap_err() else {
            panic!("same variant");
        };
        assert!(message.len() < isoflow_sandbox::MAX_ERROR_TEXT + 64);
    }

    fn ran() -> std::ops::RangeInclusive<SystemTime> {
        SystemTime::UNIX_EPOCH..=SystemTime::now()
    }

    #[test]
    fn texts_are_made_safe_to_print_and_times_kept_within_the_step() {
        let limits = Limits::default();
        let tricky = vec![LogLine {
            level: LogLevel::Info,
            message: "ok\u{1b}]52;c;eA==\u{7}\r\u{1b}[2Kdone\tnext\nline".into(),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800),
        }];
        let start = SystemTime::now() - Duration::from_secs(1);
        let end = SystemTime::now();
        let outcome = answer(meta(None, tricky), b"1".to_vec(), &limits, start..=end).unwrap();
        let line = &outcome.logs[0];
        assert_eq!(
            line.message,
            "ok\\u{1b}]52;c;eA==\\u{7}\\u{d}\\u{1b}[2Kdone\tnext\nline"
        );
        assert!(line.time >= start && line.time <= end, "{:?}", line.time);
        let error = StepError::Exception {
            message: "Error: \u{1b}[2Krun succeeded".into(),
            location: None,
            stack: None,
        };
        let failed = answer(meta(Some(error), vec![]), Vec::new(), &limits, ran()).unwrap();
        assert!(!failed.result.unwrap_err().to_string().contains('\u{1b}'));
    }

    #[test]
    fn cpu_time_is_read_from_stat() {
        let stat = File::open("/proc/self/stat").unwrap();
        let before = cpu_ticks(&stat).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_ticks(&stat).unwrap() > before, "busy for 200 ms");
    }
}
