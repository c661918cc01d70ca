//! The networks, one file each: a burn `Config` with the reference hyper-parameters, the
//! blocks, the network `Module`, and the `FAMILY` table the registry reads.

pub mod bn_inception;
pub mod inception_resnet_v1;
pub mod inception_resnet_v2;
pub mod inception_v3;
pub mod inception_v4;
