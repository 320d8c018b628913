//! Isoflow's gRPC API, `isoflow.v1`.
//!
//! The `.proto` files and the tonic/prost code generated from them arrive with
//! the cluster (coordinator and worker nodes). This crate is the only thing
//! the client crate depends on, so it must stay free of engine dependencies.
