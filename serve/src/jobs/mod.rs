//! Jobs: what they are ([`model`]), what they may run beside ([`guards`]), what a request
//! names ([`resolve`]), what their work reports to ([`context`]) and who runs them
//! ([`runner`]).

pub mod context;
pub mod guards;
pub mod model;
pub mod resolve;
pub mod runner;
#[cfg(test)]
mod tests;

pub use context::{JobContext, Level};
pub use model::{Job, JobId, JobKind, JobRequest, JobState, Progress, Trigger};
pub use resolve::{Scope, SubmitError};
pub use runner::{CancelError, Clock, Notifier, Runner, RunnerParts, SystemClock, Work};
