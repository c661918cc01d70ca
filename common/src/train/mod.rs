//! Data-parallel training: optimizers, learning-rate schedules, the flat parameter and gradient
//! views that collectives work on, and the replica step that ties them together.

pub mod optim;
pub mod params;
pub mod replica;
pub mod schedule;

pub use optim::Optimizer;
pub use replica::{Replica, StepStats};
pub use schedule::LrSchedule;
