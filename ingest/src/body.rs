//! Request bodies: the shared extractors of `sendmill_platform::body`.

pub use sendmill_platform::body::*;
