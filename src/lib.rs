//! # sendmill
//!
//! The `sendmill` binary's library half: the whole installation's configuration (one
//! TOML file assembling every stage's section) and starting any set of stages in one
//! process. The binary (`main.rs`) only parses flags and calls into here; the end-to-end
//! tests start pipelines through the same functions.

pub mod bench;
pub mod config;
pub mod pipeline;

pub use config::SendmillConfig;
pub use pipeline::{Pipeline, Stage};
