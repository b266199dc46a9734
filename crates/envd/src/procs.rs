//! The processes started through envd: one pump task per process fans its events out to the
//! streams watching it (`Start`, then any `Connect`), and keeps its end for 30 seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandkit_core::{ErrorKind, Process, ProcessEvent, ProcessHandle};
use sandkit_e2b_protocol::envd::{DataEvent, EndEvent, ProcessConfig, ProcessEvent as WireEvent};
use sandkit_e2b_protocol::ConnectError;

use crate::journal::Journal;
use tokio::sync::mpsc;

/// How long the end of an exited process is kept for `Connect` (envd's value).
const KEEP_ENDED: Duration = Duration::from_secs(30);
/// Largest data event (envd sends at most 32 KiB per event).
const MAX_CHUNK: usize = 32 * 1024;
/// Events buffered per watching stream before the process is made to wait.
const BUFFER: usize = 64;

/// What a watching stream receives.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(WireEvent),
    /// The stream ends with this error (a deadline, a broken backend).
    Fail(ConnectError),
    /// The sandbox went away under the process (killed, or its time to live ran out): the
    /// stream breaks off with no end, as envd's connection does when its sandbox dies.
    Gone,
}

/// Whether the sandbox still runs; asked only when a process ends as if killed.
pub(crate) type AliveProbe =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, bool> + Send + Sync>;

pub(crate) struct Entry {
    pub(crate) pid: u32,
    pub(crate) config: ProcessConfig,
    pub(crate) tag: Option<String>,
    pub(crate) handle: ProcessHandle,
    pub(crate) pty: bool,
    watchers: Mutex<Vec<mpsc::Sender<Item>>>,
    ended: Mutex<Option<(Item, Instant)>>,
}

impl Entry {
    /// The end, if the process has ended.
    pub(crate) fn ended(&self) -> Option<Item> {
        self.ended.lock().unwrap().as_ref().map(|(i, _)| i.clone())
    }

    /// A new stream of the events from now on.
    pub(crate) fn watch(&self) -> mpsc::Receiver<Item> {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.watchers.lock().unwrap().push(tx);
        rx
    }
}

/// The processes of one sandbox.
#[derive(Default)]
pub(crate) struct Processes {
    entries: Mutex<HashMap<u32, Arc<Entry>>>,
    /// Where each process's start and end are told, when the server asked.
    journal: Option<Journal>,
}

impl Processes {
    /// No process yet; each one's start and end will be told to `journal`.
    pub(crate) fn journaled(journal: Journal) -> Self {
        Processes {
            entries: Mutex::default(),
            journal: Some(journal),
        }
    }

    /// Registers a started process and starts pumping its events. Returns the entry and the
    /// first watcher (the `Start` stream).
    pub(crate) fn start(
        self: &Arc<Self>,
        process: Process,
        config: ProcessConfig,
        tag: Option<String>,
        pty: bool,
        user: &str,
        alive: AliveProbe,
    ) -> (Arc<Entry>, mpsc::Receiver<Item>) {
        let entry = Arc::new(Entry {
            pid: process.pid(),
            config,
            tag,
            handle: process.handle(),
            pty,
            watchers: Mutex::new(Vec::new()),
            ended: Mutex::new(None),
        });
        let first = entry.watch();
        if let Some(journal) = &self.journal {
            let command = std::iter::once(entry.config.cmd.as_str())
                .chain(entry.config.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            journal(crate::journal::started(
                entry.pid,
                &command,
                user,
                entry.tag.as_deref(),
            ));
        }
        self.entries
            .lock()
            .unwrap()
            .insert(entry.pid, entry.clone());
        tokio::spawn(pump(self.clone(), entry.clone(), process, alive));
        (entry, first)
    }

    /// A process by pid or tag, running or ended within the last 30 seconds.
    pub(crate) fn find(&self, pid: Option<u32>, tag: Option<&str>) -> Option<Arc<Entry>> {
        let entries = self.entries.lock().unwrap();
        match (pid, tag) {
            (Some(pid), _) => entries.get(&pid).cloned(),
            (None, Some(tag)) => entries
                .values()
                .find(|e| e.tag.as_deref() == Some(tag) && e.ended().is_none())
                .cloned(),
            _ => None,
        }
    }

    /// The processes still running.
    pub(crate) fn running(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<_> = self
            .entries
            .lock()
            .unwrap()
            .values()
            .filter(|e| e.ended().is_none())
            .cloned()
            .collect();
        v.sort_by_key(|e| e.pid);
        v
    }

    fn forget_old(&self) {
        self.entries
            .lock()
            .unwrap()
            .retain(|_, e| match &*e.ended.lock().unwrap() {
                Some((_, at)) => at.elapsed() < KEEP_ENDED,
                None => true,
            });
    }
}

/// Sends an item to every watcher, dropping the ones that went away. Waits for slow ones, so
/// a reader that does not keep up slows the process instead of growing a buffer.
async fn fan_out(entry: &Entry, item: Item) {
    let watchers: Vec<_> = entry.watchers.lock().unwrap().clone();
    let mut gone = Vec::new();
    for (i, w) in watchers.iter().enumerate() {
        if w.send(item.clone()).await.is_err() {
            gone.push(i);
        }
    }
    if !gone.is_empty() {
        entry.watchers.lock().unwrap().retain(|w| !w.is_closed());
    }
}

fn data(stdout: bool, pty: bool, chunk: &[u8]) -> Item {
    let bytes = chunk.to_vec();
    Item::Event(WireEvent::Data(if pty {
        DataEvent::Pty(bytes)
    } else if stdout {
        DataEvent::Stdout(bytes)
    } else {
        DataEvent::Stderr(bytes)
    }))
}

async fn pump(all: Arc<Processes>, entry: Arc<Entry>, mut process: Process, alive: AliveProbe) {
    // Bytes of stdout, stderr and pty output, for the journal.
    let mut bytes = [0u64; 3];
    let end = loop {
        match process.next_event().await {
            Some(Ok(ProcessEvent::Stdout(b))) => {
                bytes[if entry.pty { 2 } else { 0 }] += b.len() as u64;
                for chunk in b.chunks(MAX_CHUNK) {
                    fan_out(&entry, data(true, entry.pty, chunk)).await;
                }
            }
            Some(Ok(ProcessEvent::Stderr(b))) => {
                bytes[1] += b.len() as u64;
                for chunk in b.chunks(MAX_CHUNK) {
                    fan_out(&entry, data(false, entry.pty, chunk)).await;
                }
            }
            // Killed by a signal, maybe because the whole sandbox went: look before saying so.
            Some(Ok(ProcessEvent::Exited { code })) if code >= 128 && !alive().await => {
                break Item::Gone;
            }
            Some(Ok(ProcessEvent::Exited { code })) => {
                break Item::Event(WireEvent::End(EndEvent::exited(code)));
            }
            Some(Err(e)) if e.kind() == ErrorKind::Timeout => {
                // As envd: the deadline killed the process; the streams end with deadline_exceeded.
                let ended = Item::Event(WireEvent::End(EndEvent::signaled("killed")));
                *entry.ended.lock().unwrap() = Some((ended, Instant::now()));
                // Told before the streams hear it, so the log has it once a client does.
                all.tell_end(&entry, None, "deadline", bytes);
                fan_out(
                    &entry,
                    Item::Fail(ConnectError::new(
                        "deadline_exceeded",
                        e.message().to_string(),
                    )),
                )
                .await;
                entry.watchers.lock().unwrap().clear();
                schedule_forget(all);
                return;
            }
            Some(Err(_)) if !alive().await => break Item::Gone,
            Some(Err(e)) => break Item::Fail(ConnectError::new("unavailable", e.to_string())),
            None => {
                break Item::Fail(ConnectError::new(
                    "internal",
                    "the process output ended without an exit",
                ))
            }
        }
    };
    *entry.ended.lock().unwrap() = Some((end.clone(), Instant::now()));
    let (code, how) = match &end {
        Item::Event(WireEvent::End(e)) if e.exited => (Some(e.exit_code), String::new()),
        Item::Event(WireEvent::End(e)) => (None, e.status.clone()),
        Item::Gone => (None, "sandbox ended".to_string()),
        Item::Fail(e) => (None, e.message.clone()),
        Item::Event(_) => (None, "ended".to_string()),
    };
    all.tell_end(&entry, code, &how, bytes);
    fan_out(&entry, end).await;
    entry.watchers.lock().unwrap().clear();
    schedule_forget(all);
}

impl Processes {
    fn tell_end(&self, entry: &Entry, code: Option<i32>, how: &str, bytes: [u64; 3]) {
        if let Some(journal) = &self.journal {
            journal(crate::journal::ended(entry.pid, code, how, bytes));
        }
    }
}

fn schedule_forget(all: Arc<Processes>) {
    tokio::spawn(async move {
        tokio::time::sleep(KEEP_ENDED + Duration::from_millis(100)).await;
        all.forget_old();
    });
}
