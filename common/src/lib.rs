//! Library shared by the incept coordinator and worker binaries.
//!
//! One module per job: the experiment [`config`], the gRPC [`proto`]col, the Inception
//! [`model`]s, training [`data`], the compute [`device`], gradient [`collective`]s, and
//! data-parallel [`train`]ing.

pub mod collective;
pub mod config;
pub mod data;
pub mod device;
pub mod fsutil;
pub mod logging;
pub mod model;
pub mod proto;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod train;

/// CRC-32C (Castagnoli), the one checksum of TFRecord shards, checkpoint files and replica
/// comparisons.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
