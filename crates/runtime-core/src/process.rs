//! [`Process`]: the handle [`Sandbox::spawn`](crate::Sandbox::spawn) returns.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::{Error, ErrorKind, ProcessEvent, PtySize, Result, Signal};

/// The events of one process, in order, ending with [`ProcessEvent::Exited`].
pub type EventStream = BoxStream<'static, Result<ProcessEvent>>;

/// What a backend implements to steer a running process. Callers use [`Process`] instead.
///
/// # Contract
/// - `signal` reaches the process **and every process it started** (its process group),
///   so that killing a shell line also kills what the line spawned.
/// - Signalling a process that already ended is not an error.
/// - `write_stdin` on a process started without stdin fails with
///   [`ErrorKind::InvalidInput`].
#[async_trait]
pub trait ProcessControl: Send + Sync + fmt::Debug {
    /// Writes bytes to the process's stdin.
    async fn write_stdin(&self, data: Bytes) -> Result<()>;
    /// Closes stdin, so the process reads end of file.
    async fn close_stdin(&self) -> Result<()>;
    /// Sends `signal` to the process group.
    async fn signal(&self, signal: Signal) -> Result<()>;
    /// Resizes the terminal of a PTY command. Backends without PTYs keep the default.
    async fn resize(&self, size: PtySize) -> Result<()> {
        let _ = size;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this backend cannot resize terminals",
        )
        .with_operation(crate::Operation::Resize))
    }
}

/// A running process: its pid, its events, and control over its stdin and life.
///
/// # Timeouts
/// When the [`CommandSpec::timeout`](crate::CommandSpec::timeout) passes while events are read,
/// the process group is killed and [`Process::next_event`] yields an
/// [`ErrorKind::Timeout`] error; after it, the stream ends. Backends that can enforce the
/// deadline on their side as well (envd does) also do, so nothing outlives its deadline when
/// the reader is gone.
///
/// # Cancellation
/// Dropping a `Process` stops reading its output; it does not kill it (background processes
/// are a feature). Call [`Process::kill`] to end it.
pub struct Process {
    pid: u32,
    // A mutex only to make `Process` `Sync`; `get_mut` never locks.
    events: Mutex<EventStream>,
    control: Arc<dyn ProcessControl>,
    deadline: Option<(Instant, Duration)>,
    done: bool,
}

impl Process {
    /// Wraps a backend's event stream and control ([`raw::process`](crate::raw::process)).
    pub(crate) fn new(pid: u32, events: EventStream, control: Arc<dyn ProcessControl>) -> Self {
        Process {
            pid,
            events: Mutex::new(events),
            control,
            deadline: None,
            done: false,
        }
    }

    /// Enforces a deadline counted from now, with the command's timeout.
    pub(crate) fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.deadline = timeout.map(|t| (Instant::now() + t, t));
        self
    }

    /// The process id inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event, or `None` after [`ProcessEvent::Exited`] or an error.
    pub async fn next_event(&mut self) -> Option<Result<ProcessEvent>> {
        if self.done {
            return None;
        }
        let events = self.events.get_mut().unwrap_or_else(|p| p.into_inner());
        let next = match self.deadline {
            None => events.next().await,
            Some((at, timeout)) => {
                match tokio::time::timeout_at(at, Pin::new(events).next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.done = true;
                        let kill = self.control.signal(Signal::Kill).await;
                        let mut err = Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "command did not finish within {timeout:?}; it was killed \
                                 with its children"
                            ),
                        )
                        .with_operation("exec")
                        .with_context("pid", self.pid)
                        // Running it again would run a command that hung, maybe with effects.
                        .with_retryable(false);
                        if let Err(e) = kill {
                            err = err.with_context("kill_error", e);
                        }
                        return Some(Err(err));
                    }
                }
            }
        };
        match &next {
            None | Some(Err(_)) | Some(Ok(ProcessEvent::Exited { .. })) => self.done = true,
            _ => {}
        }
        next
    }

    /// Writes to stdin (the command must have been started with stdin open).
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<()> {
        self.control.write_stdin(data.into()).await
    }

    /// Closes stdin.
    pub async fn close_stdin(&self) -> Result<()> {
        self.control.close_stdin().await
    }

    /// Sends a signal to the process and its children.
    pub async fn signal(&self, signal: Signal) -> Result<()> {
        self.control.signal(signal).await
    }

    /// Kills the process and its children (SIGKILL).
    pub async fn kill(&self) -> Result<()> {
        self.control.signal(Signal::Kill).await
    }

    /// Resizes the terminal of a PTY command.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.control.resize(PtySize { cols, rows }).await
    }

    /// A cloneable handle to steer the process from another task.
    pub fn handle(&self) -> ProcessHandle {
        ProcessHandle {
            pid: self.pid,
            control: self.control.clone(),
        }
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .field("control", &self.control)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle to a running process's stdin and signals.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    pid: u32,
    control: Arc<dyn ProcessControl>,
}

impl ProcessHandle {
    /// The process id inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Writes to stdin.
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<()> {
        self.control.write_stdin(data.into()).await
    }
    /// Closes stdin.
    pub async fn close_stdin(&self) -> Result<()> {
        self.control.close_stdin().await
    }
    /// Sends a signal to the process and its children.
    pub async fn signal(&self, signal: Signal) -> Result<()> {
        self.control.signal(signal).await
    }
    /// Kills the process and its children.
    pub async fn kill(&self) -> Result<()> {
        self.control.signal(Signal::Kill).await
    }
    /// Resizes the terminal of a PTY command.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.control.resize(PtySize { cols, rows }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl ProcessControl for Counting {
        async fn write_stdin(&self, _: Bytes) -> Result<()> {
            Ok(())
        }
        async fn close_stdin(&self) -> Result<()> {
            Ok(())
        }
        async fn signal(&self, _: Signal) -> Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_kills_and_times_out() {
        let control = Arc::new(Counting::default());
        let events = futures_util::stream::iter(vec![Ok(ProcessEvent::Stdout("a".into()))])
            .chain(futures_util::stream::pending())
            .boxed();
        let mut p =
            Process::new(7, events, control.clone()).with_timeout(Some(Duration::from_millis(50)));
        assert!(matches!(
            p.next_event().await,
            Some(Ok(ProcessEvent::Stdout(_)))
        ));
        let err = p.next_event().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(
            !err.is_retryable(),
            "a command that timed out is not run again"
        );
        assert_eq!(control.0.load(Ordering::SeqCst), 1);
        assert!(p.next_event().await.is_none());
    }

    #[tokio::test]
    async fn ends_after_exit() {
        let events = futures_util::stream::iter(vec![
            Ok(ProcessEvent::Exited { code: 3 }),
            Ok(ProcessEvent::Stdout("late".into())),
        ])
        .boxed();
        let mut p = Process::new(1, events, Arc::new(Counting::default()));
        assert_eq!(
            p.next_event().await.unwrap().unwrap(),
            ProcessEvent::Exited { code: 3 }
        );
        assert!(p.next_event().await.is_none());
    }
}
