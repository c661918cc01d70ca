//! Data-parallel training: optimizers, learning-rate schedules, gradient clipping, the weight
//! average, and the replica step that ties them together.

pub mod backend;
pub mod checkpoint;
pub mod clip;
pub mod ema;
pub mod optim;
pub mod quality;
#[cfg(any(test, feature = "testing"))]
pub mod reference;
pub mod replica;
pub mod schedule;
pub mod timeline;

pub use backend::{BackendJob, CpuBackend, TrainBackend};
pub use optim::Optimizer;
pub use replica::{Evaluation, Replica, StepStats};
pub use schedule::LrSchedule;
pub use timeline::{Lane, Span, Timeline};
