//! Scheduling stages onto devices. The local backend runs each stage as a child process
//! (`runner exec STAGE_DIR`) in a device slot; a stage starts when the stages it depends on are
//! done. Failures mark the stage and every stage after it failed and the rest go on; Ctrl-C stops
//! the children and leaves everything resumable, and so does a runner killed outright (the kernel
//! stops its stage processes, which record themselves interrupted). The Slurm backend
//! (`slurm`) runs the same stage processes as Slurm array tasks and reports through the same
//! [`Outcome`] and [`Progress`].

mod devices;
mod local;
pub mod slurm;
pub mod stage_signals;

pub use devices::{parse_devices, DeviceSlot};
pub use local::{run_local, LocalOptions, Outcome, Progress};
pub use slurm::{run_slurm, SlurmError, SlurmOptions};
pub use stage_signals::record_interruption_on_signal;
