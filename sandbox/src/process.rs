//! The sandbox process's entry point and its command line.
//!
//! The node starts the process with [`Options::to_args`], the socket as
//! standard input and an empty environment. In order, the process:
//!
//! 1. applies the lockdown's first stage while it has one thread
//!    ([`crate::lockdown`]: descriptors, parent death, namespaces);
//! 2. starts its engines (V8's platform, QuickJS's compiled prelude);
//! 3. on its step thread (16 MiB of stack), prepares the first isolates,
//!    applies the second stage (empty root, uid, capabilities, limits,
//!    seccomp), says [`Hello`](crate::protocol::Hello) and serves steps until
//!    the node closes the socket.
//!
//! Fatal conditions end the process with an exit code the node reads:
//! [`EXIT_FATAL`] (a V8 fatal error or an out-of-memory V8 cannot recover
//! from), [`lockdown::EXIT_FORBIDDEN_SYSCALL`], [`lockdown::EXIT_STARTUP`].
//! Each writes one line to stderr first, which the node quotes.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use crate::lockdown::{self, Lockdown};
use crate::protocol::{Hello, Layers, VERSION};
use crate::runner::{self, Engines, Hooks, Settings};
use crate::step::{Limits, Runtime};
use crate::watchdog::Watchdog;

/// Exit code of a process that hit a fatal V8 error or an out-of-memory
/// condition V8 cannot recover from. Its stderr line says which.
pub const EXIT_FATAL: i32 = 70;
/// Exit code for a command line the process does not understand.
pub const EXIT_USAGE: i32 = 64;

/// What a sandbox process is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub lockdown: Lockdown,
    /// V8 without its JIT compilers: slower, and far fewer of V8's bugs
    /// are reachable. Also refuses executable memory to the whole process.
    pub jitless: bool,
    /// The heap limit of the isolates prepared ahead of a step.
    pub heap_bytes: usize,
    /// Engines to start before the first step.
    pub warm: Vec<Runtime>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lockdown: Lockdown::default(),
            jitless: false,
            heap_bytes: Limits::default().heap_bytes,
            warm: Runtime::ALL
                .into_iter()
                .filter(|r| r.is_available())
                .collect(),
        }
    }
}

impl Options {
    /// The command line that [`Options::parse`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let l = &self.lockdown;
        let mut args = vec![
            format!("--uid={}", l.uid),
            format!("--gid={}", l.gid),
            format!("--namespaces={}", l.namespaces),
            format!("--jitless={}", self.jitless),
            format!("--heap-bytes={}", self.heap_bytes),
            format!(
                "--warm={}",
                self.warm
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ];
        if let Some(parent) = l.parent {
            args.push(format!("--parent={parent}"));
        }
        args
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut options = Options::default();
        for arg in args {
            let (key, value) = arg
                .strip_prefix("--")
                .and_then(|a| a.split_once('='))
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("--{key} wants a number, not {v:?}"))
            };
            let flag = |v: &str| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("--{key} wants true or false, not {v:?}")),
            };
            let narrow = |v: u64| u32::try_from(v).map_err(|_| format!("--{key} is too large"));
            match key {
                "uid" => options.lockdown.uid = narrow(number(value)?)?,
                "gid" => options.lockdown.gid = narrow(number(value)?)?,
                "parent" => options.lockdown.parent = Some(narrow(number(value)?)?),
                "namespaces" => options.lockdown.namespaces = flag(value)?,
                "jitless" => options.jitless = flag(value)?,
                "heap-bytes" => {
                    options.heap_bytes = usize::try_from(number(value)?)
                        .map_err(|_| format!("--{key} is too large"))?;
                }
                "warm" => {
                    options.warm = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| match s {
                            "v8" => Ok(Runtime::V8),
                            "quickjs" => Ok(Runtime::QuickJs),
                            _ => Err(format!("--warm: unknown runtime {s:?}")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                _ => return Err(format!("unknown option --{key}")),
            }
        }
        options.lockdown.no_exec_memory = options.jitless;
        Ok(options)
    }
}

/// The sandbox process: `args` are the options (without the program name).
/// Returns only when the node has closed the socket; a process that cannot
/// start, or hits something fatal, exits from wherever that happens.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    main_with_hooks(args, Hooks::default())
}

/// [`main`] with test hooks exposed to JavaScript (see [`Hooks`]). Only a
/// test program of the workspace passes any.
pub fn main_with_hooks(args: impl IntoIterator<Item = String>, hooks: Hooks) -> ExitCode {
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "isoflow-sandbox: {message}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let mut layers = Layers {
        jitless: options.jitless,
        ..Layers::default()
    };
    if let Err(message) = lockdown::before_threads(&options.lockdown, &mut layers) {
        fail_startup(&format!("cannot lock the process down: {message}"));
    }
    // SAFETY: no other thread exists yet. Steps see UTC, whatever the
    // machine's zone (the file that says it is out of reach anyway).
    unsafe { std::env::set_var("TZ", "UTC") };

    #[cfg(feature = "v8")]
    if let Err(message) = crate::v8::init(options.jitless, !hooks.is_empty()) {
        fail_startup(&message);
    }
    #[cfg(feature = "quickjs")]
    if let Err(error) = crate::quickjs::init() {
        fail_startup(&error.to_string());
    }

    // SAFETY: the node hands the socket over as standard input; nothing
    // else in this process owns descriptor 0.
    let mut socket = unsafe { UnixStream::from_raw_fd(0) };
    let settings = Settings {
        heap_bytes: options.heap_bytes,
        hooks,
    };
    let thread = std::thread::Builder::new()
        .name("isoflow-js".into())
        // V8 reserves ~1 MB of the stack for JavaScript; QuickJS is given
        // 4 MB. The rest is headroom for native frames.
        .stack_size(16 * 1024 * 1024)
        .spawn(move || {
            let watchdog = Watchdog::start().unwrap_or_else(|e| {
                fail_startup(&format!("cannot start the watchdog thread: {e}"))
            });
            let mut engines = Engines::new(&watchdog, settings);
            for &runtime in &options.warm {
                let _ = engines.get(runtime);
            }
            if let Err(message) = lockdown::before_steps(&options.lockdown, &mut layers) {
                fail_startup(&format!("cannot lock the process down: {message}"));
            }
            let hello = Hello {
                version: VERSION,
                pid: std::process::id(),
                layers,
            };
            if let Err(error) = runner::serve(&mut socket, &mut engines, &hello) {
                let _ = writeln!(std::io::stderr(), "isoflow-sandbox: {error}");
            }
            // Nothing to tidy: the isolates die with the process.
            // SAFETY: ends the process without running destructors or
            // exit handlers, which V8 may not be in a state to run.
            unsafe { libc::_exit(0) }
        });
    match thread {
        Ok(thread) => {
            let _ = thread.join();
            ExitCode::SUCCESS
        }
        Err(e) => fail_startup(&format!("cannot start the step thread: {e}")),
    }
}

fn fail_startup(message: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "isoflow-sandbox: {message}");
    std::process::exit(lockdown::EXIT_STARTUP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_the_command_line() {
        let options = Options {
            lockdown: Lockdown {
                uid: 1000,
                gid: 1001,
                namespaces: false,
                parent: Some(42),
                no_exec_memory: true,
            },
            jitless: true,
            heap_bytes: 8 << 20,
            warm: vec![Runtime::QuickJs],
        };
        assert_eq!(Options::parse(options.to_args()), Ok(options.clone()));
        let default = Options::default();
        assert_eq!(Options::parse(default.to_args()), Ok(default));
    }

    #[test]
    fn bad_command_lines_are_one_sentence() {
        let parse = |args: &[&str]| Options::parse(args.iter().map(|s| (*s).to_owned()));
        assert_eq!(
            parse(&["--uid=x"]).unwrap_err(),
            "--uid wants a number, not \"x\""
        );
        assert_eq!(parse(&["--nope=1"]).unwrap_err(), "unknown option --nope");
        assert_eq!(
            parse(&["bare"]).unwrap_err(),
            "unexpected argument \"bare\""
        );
        assert_eq!(
            parse(&["--warm=v9"]).unwrap_err(),
            "--warm: unknown runtime \"v9\""
        );
    }
}
