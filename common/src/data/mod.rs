//! Training and validation data: sources of labelled images and the plans that split them
//! between ranks.

pub mod plan;
pub mod synthetic;

pub use plan::EpochPlan;
pub use synthetic::SyntheticImages;

/// Which part of a dataset a sample comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
}

/// A batch of images in NCHW layout, scaled to [-1, 1], with their class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub pixels: Vec<f32>,
    pub labels: Vec<i64>,
    /// Square image side.
    pub image_size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}
