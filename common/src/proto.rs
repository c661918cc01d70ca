//! Wire formats generated at build time: the coordinator's gRPC protocol
//! (`proto/incept.proto`), TensorFlow's `tf.train.Example` (`proto/tf_example.proto`) and
//! TensorBoard's scalar `Event`s (`proto/tf_event.proto`).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("incept.v1");

/// `tf.train.Example` and its feature lists, the payload of ImageNet TFRecord shards; `Event`
/// and `Summary`, the records of TensorBoard's event files.
pub mod tensorflow {
    tonic::include_proto!("tensorflow");
}

/// Metadata key carrying the run's join token on every RPC.
pub const TOKEN_METADATA_KEY: &str = "x-incept-token";

/// Metadata key carrying, on every RPC after `Join`, the member key of the worker's assignment.
pub const MEMBER_METADATA_KEY: &str = "x-incept-member";
