//! `[run]` and `[checkpoint]`: what a run is called, how it is seeded, and when it saves.

use serde::{Deserialize, Serialize};

/// When rank 0 checkpoints and how many checkpoints are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Checkpoint every this many steps (0 = only at the end of the run).
    pub every_steps: u64,
    /// Newest committed checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every_steps: 0,
            keep: 3,
        }
    }
}

/// Naming and seeding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Shown in run lists and logs; run ids are made from it.
    pub name: String,
    /// Seeds model initialisation, data generation and shuffling: same seed, same run.
    pub seed: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "experiment".into(),
            seed: 42,
        }
    }
}
