//! Isoflow's engine: everything that runs an integration on one node, with no
//! knowledge of gRPC or etcd (the `node` crate wires it to the network).
//!
//! - [`sandbox`]: runs a step's JavaScript in a locked-down sandbox process of
//!   its tenant (the `isoflow-sandbox` crate), in a fresh V8 isolate or
//!   QuickJS runtime, with limits enforced inside and outside the process.
//! - [`model`]: integration definitions: their types, the YAML/JSON loader
//!   that validates them, and the `{{ expression }}` language between steps.
//! - [`action`]: the steps that do I/O on the engine's side (HTTP).
//! - [`store`]: runs, step checkpoints, payloads and logs in RocksDB.
//! - [`credential`]: credentials for http steps, and the encrypted vault
//!   that keeps them on a coordinator.
//!
//! - [`telemetry`]: the spans and measurements a run reports, and the
//!   embedder's hook that gives them a trace and a destination.
//! - [`run`]: the engine that ties them together: a supervised actor tree
//!   per run, durable checkpoints, resumption after a crash.

pub mod action;
pub mod credential;
pub mod model;
pub mod run;
pub mod sandbox;
pub mod store;
pub mod telemetry;
