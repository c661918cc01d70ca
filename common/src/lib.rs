//! Library shared by the incept coordinator and worker binaries.
//!
//! One module per job, in the order data flows: the experiment [`config`] (importing nothing
//! of the others but the [`collective`]'s wire format), the Inception [`model`]s and training
//! [`data`] (each reading the config), the cross-domain checks that [`resolve`] an experiment,
//! the compute [`device`], gradient [`collective`]s, and data-parallel [`train`]ing, which uses
//! them all. [`proto`] is the gRPC protocol; [`fsutil`], [`npy`] and [`logging`] are leaves.

#![warn(missing_docs)]

pub mod collective;
pub mod config;
pub mod data;
pub mod device;
pub mod fsutil;
pub mod logging;
pub mod model;
pub mod npy;
pub mod proto;
pub mod resolve;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod train;

/// CRC-32C (Castagnoli), the one checksum of TFRecord shards, checkpoint files and replica
/// comparisons.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
