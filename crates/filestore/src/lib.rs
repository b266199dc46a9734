//! File stores for sandkit, and the path helpers backends share.
//!
//! - [`LocalFileStore`]: a directory on the host; nothing outside it can be read or written.
//! - [`InMemoryFileStore`]: a tree in memory.
//!
//! Both implement [`sandkit_core::FileStore`] and pass the FileStore part of the
//! conformance suite (`cargo test -p sandkit-filestore`).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod local;
mod memory;
mod path;
mod unpack;

pub use local::LocalFileStore;
pub use memory::InMemoryFileStore;
pub use path::{clean_absolute, join, normalize, parent};
pub use unpack::Unpacked;
