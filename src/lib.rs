//! runner: LLM safety-alignment experiments from TOML specs, on candle.

pub mod data;
pub mod eval;
pub mod exec;
pub mod methods;
pub mod model;
pub mod plan;
pub mod report;
pub mod results;
pub mod sched;
pub mod spec;
pub mod stage;
pub mod store;
pub mod train;
pub mod util;
