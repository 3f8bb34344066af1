//! Blocking `std::net` driver for the Remora remoting core.
//!
//! Not implemented yet (issue 4): this crate only re-exports [`remora_core`] so the workspace layout
//! is in place. Nothing here moves bytes today.

pub use remora_core as core;
