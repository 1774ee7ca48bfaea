//! mutant-mount: a file system whose files live encrypted in Autonomi scratchpads.
//!
//! Data flows one way: the FUSE adapter -> the file-system core -> the engine (index, pad
//! manager) -> the storage layer. Nothing below the engine knows of FUSE.

pub mod at_rest;
pub mod buffers;
pub mod codec;
pub mod control;
pub mod engine;
pub mod fs;
pub mod index;
pub mod key_backup;
pub mod key_seal;
pub mod keys;
pub mod mount;
pub mod offline;
pub mod seal;
pub mod service;
pub mod store;
