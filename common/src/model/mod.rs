//! The Inception family of image classifiers.
//!
//! One file per family member under [`families`] (its config, blocks and network, and the
//! [`family::Family`] table the registry reads), all built from the shared TF-slim building
//! blocks in [`layers`], and a [`registry`] that maps [`crate::config::Arch`] to constructors.
//! Module paths follow timm, so its checkpoints import by name ([`import`]); shapes and
//! parameter counts follow TF-slim (see shared/REFERENCES.md).

pub mod families;
pub mod family;
pub mod import;
pub mod kernels;
pub mod layers;
#[cfg(feature = "libtorch")]
pub mod libtorch;
pub mod params;
pub mod probe;
pub mod registry;

pub use kernels::Kernels;
#[cfg(test)]
mod test_support;
