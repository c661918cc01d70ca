//! What the registry knows of each family: the knobs it accepts and its reference sizes, so
//! that one table per family file replaces the per-name matches that used to be scattered.

use crate::config::{BlockPreset, ModelSection};

/// A family's description, declared as `FAMILY` in its file under [`super::families`].
#[derive(Debug)]
pub struct Family {
    /// The input side the reference network was trained at.
    pub native_image_size: usize,
    /// The reference blocks per stage, for families whose block counts are configurable.
    pub reference_blocks: Option<[usize; 3]>,
    /// The named block counts the family accepts (`model.block_preset`).
    pub presets: &'static [(BlockPreset, [usize; 3])],
    /// Whether the family has TF-slim's auxiliary classifier (`model.aux_head`).
    pub aux_head: bool,
    /// Whether the family's in-block average pools can count their padding
    /// (`model.avg_pool_count_pad`: timm's Inception-v3 convention).
    pub avg_pool_count_pad: bool,
}

impl Family {
    /// The blocks a preset means for this family, if it has that preset.
    pub fn preset_blocks(&self, preset: BlockPreset) -> Option<[usize; 3]> {
        self.presets
            .iter()
            .find(|(name, _)| *name == preset)
            .map(|(_, blocks)| *blocks)
    }

    /// Block counts of `model`: explicit `blocks`, else the preset, else the reference.
    pub fn block_counts(&self, model: &ModelSection) -> [usize; 3] {
        model
            .blocks
            .or_else(|| model.block_preset.and_then(|p| self.preset_blocks(p)))
            .or(self.reference_blocks)
            .unwrap_or_default()
    }

    /// Checks that `blocks`, `block_preset`, `aux_head` and `avg_pool_count_pad` apply to this
    /// family.
    pub fn check_knobs(&self, model: &ModelSection) -> Result<(), String> {
        let arch = model.arch;
        if self.reference_blocks.is_none()
            && (model.blocks.is_some() || model.block_preset.is_some())
        {
            return Err(format!("{arch} has no configurable block counts"));
        }
        if model.blocks.is_none()
            && let Some(preset) = model.block_preset
            && self.preset_blocks(preset).is_none()
        {
            return Err(format!("block_preset {preset:?} does not apply to {arch}"));
        }
        if model.aux_head && !self.aux_head {
            return Err(format!("{arch} has no auxiliary head"));
        }
        if model.avg_pool_count_pad && !self.avg_pool_count_pad {
            return Err(format!(
                "{arch} has no avg_pool_count_pad knob: its average pools exclude the padding, \
                 as timm's do"
            ));
        }
        Ok(())
    }
}
