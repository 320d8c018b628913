//! Child processes for multi-process tests: the `isoflow` binary started
//! with a clean environment, its output captured while it runs, and killed
//! when the test lets go of it, whether the test passed or panicked.
//!
//! Every wait has a deadline; a wait that runs out panics with the child's
//! output so far, so a failing test says what the process printed.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{POLL, lock};

/// A running child. Dropping it kills it (SIGKILL) and reaps it.
pub struct Process {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// A child that ended, with everything it printed.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing the output, unless the process exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Finished {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stdout parsed as JSON; panics, showing the output, when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e})\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr captured.
    pub fn spawn(command: &mut Command) -> Process {
        let name = format!(
            "{} {}",
            Path::new(command.get_program())
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            command
                .get_args()
                .map(OsStr::to_string_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            capture(
                child.stdout.take().expect("stdout is piped"),
                stdout.clone(),
            ),
            capture(
                child.stderr.take().expect("stderr is piped"),
                stderr.clone(),
            ),
        ];
        Process {
            name,
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Waits until a line of stderr satisfies `line`, and returns that
    /// line; panics after `timeout` or when the process exits without
    /// printing it.
    #[track_caller]
    pub fn wait_for_stderr_line(
        &mut self,
        timeout: Duration,
        line: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.has_exited();
            if exited {
                // Everything it printed is read once the pipes are closed.
                self.join_readers();
            }
            if let Some(found) = self.stderr().lines().find(|&l| line(l)) {
                return found.to_owned();
            }
            if exited || Instant::now() >= deadline {
                let how = if exited {
                    "it exited first"
                } else {
                    "timed out"
                };
                panic!(
                    "{}: the stderr line waited for never came ({how})\n--- stdout\n{}\n--- stderr\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// True once the process has exited (it is reaped then).
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// Waits for the process to exit; after `timeout` kills it and panics
    /// with its output.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                let finished = self.finish_killed();
                panic!(
                    "{} did not exit within {timeout:?}; killed it\n--- stdout\n{}\n--- stderr\n{}",
                    self.name, finished.stdout, finished.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.collect()
    }

    /// SIGKILL, as a crash would; returns what it printed. A process that
    /// had already exited is only reaped.
    pub fn kill(mut self) -> Finished {
        self.finish_killed()
    }

    /// Sends `signal` (a name `kill` understands, like `TERM` or `INT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    fn finish_killed(&mut self) -> Finished {
        if !self.has_exited() {
            // Fails only when it exited meanwhile; `wait` reaps it either way.
            let _ = self.child.kill();
            self.status = Some(
                self.child
                    .wait()
                    .unwrap_or_else(|e| panic!("cannot reap {}: {e}", self.name)),
            );
        }
        self.collect()
    }

    /// After the exit: the readers see end of file, so their output is whole.
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    fn collect(&mut self) -> Finished {
        self.join_readers();
        Finished {
            status: self.status.expect("collect runs after the exit"),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn capture(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            lock(&into).extend_from_slice(&buf[..n]);
        }
    })
}

/// The `isoflow` binary with one data directory and an environment of the
/// test's choosing: no `ISOFLOW_` variable of the test's own environment
/// reaches it.
#[derive(Debug, Clone)]
pub struct Isoflow {
    bin: PathBuf,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Isoflow {
    /// `bin` is `env!("CARGO_BIN_EXE_isoflow")` in the node package's tests.
    pub fn new(bin: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Isoflow {
        Isoflow {
            bin: bin.into(),
            data_dir: data_dir.into(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every command made from now on.
    pub fn env(mut self, key: &str, value: &str) -> Isoflow {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `isoflow <args>` with `ISOFLOW_DATA_DIR` set to the data directory.
    pub fn command<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let mut command = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ISOFLOW_") {
                command.env_remove(key);
            }
        }
        command.env("ISOFLOW_DATA_DIR", &self.data_dir);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.args(args);
        command
    }

    /// Starts `isoflow <args>`.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Process {
        Process::spawn(&mut self.command(args))
    }

    /// Runs `isoflow <args>` to its end, at most `timeout`.
    #[track_caller]
    pub fn run<S: AsRef<OsStr>>(
        &self,
        timeout: Duration,
        args: impl IntoIterator<Item = S>,
    ) -> Finished {
        self.spawn(args).wait(timeout)
    }
}
