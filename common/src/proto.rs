//! The coordinator's gRPC protocol, generated from `proto/incept.proto` at build time.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("incept.v1");

/// Metadata key carrying the run's join token on every RPC.
pub const TOKEN_METADATA_KEY: &str = "x-incept-token";
