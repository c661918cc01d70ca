//! The Inception family of image classifiers.
//!
//! One file per family member (its config, blocks and network), all built from the shared
//! TF-slim building blocks in [`layers`], and a [`registry`] that maps architecture names to
//! constructors. Module paths follow timm, so its checkpoints import by name; shapes and
//! parameter counts follow TF-slim (see shared/REFERENCES.md).

pub mod bn_inception;
pub mod import;
pub mod inception_resnet_v1;
pub mod inception_resnet_v2;
pub mod inception_v3;
pub mod inception_v4;
pub mod layers;
pub mod params;
pub mod probe;
pub mod registry;
#[cfg(test)]
mod test_support;

pub use inception_resnet_v2::{InceptionResNetV2, InceptionResNetV2Config};
