//! Rust client for Isoflow's API.
//!
//! Depends on `isoflow-proto` only, never on the engine: a program that only
//! calls the API must build in seconds, without V8 or RocksDB.
