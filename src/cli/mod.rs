//! The `sendmill` subcommands beyond running stages, one module each.

pub mod admin;
pub mod bench;
pub mod kafka;
