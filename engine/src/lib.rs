//! Isoflow's engine: everything that runs an integration on one node, with no
//! knowledge of gRPC or etcd (the `node` crate wires it to the network).
//!
//! Today it holds the [`sandbox`]: the component that runs a step's
//! JavaScript in a fresh V8 isolate or QuickJS runtime, with limits, and
//! throws the isolate away afterwards. The integration model, the run actors
//! and the RocksDB checkpoint store build on it.

pub mod action;
pub mod model;
pub mod sandbox;
