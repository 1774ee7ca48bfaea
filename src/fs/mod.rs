//! The file system: a thin FUSE adapter over a core that tests drive without FUSE.

pub mod budget;
mod children;
pub mod core;
mod dirty;
pub mod fuse;
pub mod namespace;
pub mod open_file;
mod read_pattern;

pub use self::core::{
    Attr, Caller, DirEntry, Errno, FsConfig, FsCore, SetAttr, SetTime, StatFs, DEFAULT_TIMEOUT,
};
