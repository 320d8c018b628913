//! Engine actions: the steps that do I/O on the engine's side, so that a
//! step's JavaScript only computes. Credentials are injected here and never
//! reach an isolate; each action's outcome is checkpointed like a code
//! step's, so a completed action is never repeated after a crash.
//!
//! One file per action kind: [`http`]; the [`egress`] policy every
//! outgoing connection is checked against, and the [`origin`]s a
//! credential may be sent to.

pub mod egress;
pub mod http;
pub mod origin;
