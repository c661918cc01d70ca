//! Architecture names → constructors, so configs and the CLI can name a network.

use burn::prelude::*;

use super::{InceptionResNetV2, InceptionResNetV2Config};
use crate::config::ModelSection;

/// Architectures this build can construct.
pub const ARCHS: &[&str] = &["inception_resnet_v2"];

/// The network type every architecture is built as.
pub type Network<B> = InceptionResNetV2<B>;

/// Whether `arch` names a known architecture.
pub fn is_known(arch: &str) -> bool {
    ARCHS.contains(&arch)
}

/// Checks that `image_size` survives every reduction of `arch`; the error names the minimum.
pub fn check_image_size(model: &ModelSection) -> Result<(), String> {
    match model.arch.as_str() {
        "inception_resnet_v2" => irv2_config(model).check_image_size(model.image_size),
        _ => Ok(()),
    }
}

/// Builds the configured network with freshly initialised weights.
pub fn build<B: Backend>(model: &ModelSection, device: &B::Device) -> Network<B> {
    irv2_config(model).init(device)
}

fn irv2_config(model: &ModelSection) -> InceptionResNetV2Config {
    let [scale_a, scale_b, scale_c] = model.residual_scales();
    InceptionResNetV2Config::new(model.num_classes)
        .with_width(model.width)
        .with_blocks(model.blocks)
        .with_scale_a(scale_a)
        .with_scale_b(scale_b)
        .with_scale_c(scale_c)
        .with_final_block(model.final_block)
        .with_dropout(model.dropout)
        .with_bn_momentum(model.bn_momentum)
        .with_aux_head(model.aux_head.then_some(model.image_size))
}
