//! Isoflow's gRPC API, `isoflow.v1`: the public API (`Isoflow`: integrations
//! and runs) and the internal one (`Cluster`: how workers take work from the
//! coordinator), generated from `proto/isoflow/v1/*.proto` at build time.
//!
//! This crate is the only thing the client crate depends on, so it stays
//! free of engine dependencies.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("isoflow.v1");
}

/// The largest chunk of a payload in one message (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The largest message either side accepts: a chunk plus room for the
/// message around it. Payloads never travel in one piece, so nothing larger
/// is needed.
pub const MAX_MESSAGE_BYTES: usize = 4 * CHUNK_BYTES;
