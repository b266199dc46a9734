//! For backend authors: what implementing [`Runtime`](crate::Runtime),
//! [`Sandbox`](crate::Sandbox) and [`FileStore`](crate::FileStore) takes, and what callers of
//! them never need.
//!
//! ```
//! use std::sync::Arc;
//! use sandkit_core::raw::{self, ProcessControl};
//! use sandkit_core::{EventStream, Process, ProcessEvent};
//!
//! fn finished(control: Arc<dyn ProcessControl>) -> Process {
//!     let events: EventStream =
//!         Box::pin(futures_util::stream::iter([Ok(ProcessEvent::Exited { code: 0 })]));
//!     raw::process(1, events, control, None)
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

pub mod time;

pub use crate::command::shell_quote;
pub use crate::files::{compare_paths, once_stream, sort_entries};
pub use crate::process::ProcessControl;

use crate::{EventStream, Process};

/// A [`Process`] from a backend's event stream and control. With a `timeout` (the command's
/// [`CommandSpec::timeout`](crate::CommandSpec::timeout)), reading its events past the
/// deadline kills it and yields [`ErrorKind::Timeout`](crate::ErrorKind::Timeout).
pub fn process(
    pid: u32,
    events: EventStream,
    control: Arc<dyn ProcessControl>,
    timeout: Option<Duration>,
) -> Process {
    Process::new(pid, events, control).with_timeout(timeout)
}
