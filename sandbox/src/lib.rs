//! Isoflow's sandbox process: where customer JavaScript runs, and nowhere
//! else.
//!
//! A node never runs a code step itself. It keeps a pool of sandbox
//! processes (the engine's `sandbox` module) and sends each step to one of
//! them over a Unix socket ([`protocol`]). A sandbox process serves one
//! tenant; it is started by the node, locks itself down before the first
//! step ([`lockdown`]: seccomp, its own network and mount namespaces, an
//! empty root, a non-root uid, no capabilities, resource limits), and then
//! runs steps one at a time, each in a fresh V8 isolate or QuickJS runtime
//! ([`runner`]), until the node closes its socket or recycles it. It holds
//! no credentials, no store and no other tenant's data: only the steps the
//! node sends it.
//!
//! # Invariants
//!
//! - Isolation by construction, twice over: every step gets a fresh isolate
//!   that is disposed after it and never reused, and the isolates of one
//!   tenant never share an address space with another tenant's data.
//! - Anything fatal (a V8 CHECK, an out-of-memory V8 cannot recover from, a
//!   forbidden system call, a crash) ends the process; the node fails the
//!   one step it was running and starts another process. Nothing here ever
//!   jumps out of V8 or keeps running in a state it cannot trust.
//! - The node trusts nothing this process sends: every length and text is
//!   checked again on the node's side (see `protocol`).
//!
//! # Where to look next
//!
//! [`process::main`] is the entry point (the `isoflow sandbox-process`
//! subcommand and the engine's `isoflow-sandbox` binary both call it);
//! `runner.rs` is the step loop; `prelude.js` is the JavaScript both engines
//! run before a step; `host.rs` is its Rust side (logs, `ctx.xml`); `v8.rs`
//! wraps the C++ bridge in `cpp/`; `quickjs.rs` wraps rquickjs.

mod host;
pub mod lockdown;
pub mod process;
pub mod protocol;
#[cfg(feature = "quickjs")]
mod quickjs;
pub mod runner;
pub mod step;
#[cfg(feature = "v8")]
mod v8;
// Only the V8 engine arms the watchdog; QuickJS polls its deadline itself.
#[cfg_attr(not(feature = "v8"), allow(dead_code))]
mod watchdog;
pub mod xml;

pub use step::{
    ErrorKind, Limits, Location, LogLevel, LogLimitKind, LogLine, MAX_ERROR_TEXT, Runtime,
    StepError,
};
