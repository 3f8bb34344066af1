//! io_uring driver for the Remora remoting core.
//!
//! Not implemented yet (issue 5): this crate only re-exports [`remora_core`] so the workspace layout
//! is in place. Nothing here moves bytes today.

pub use remora_core as core;
