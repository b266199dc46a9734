//! [`Operation`]: the calls of the contract, by name, as layers, errors and spans see them.

use std::fmt;

/// One method of the contract ([`Runtime`](crate::Runtime), [`Sandbox`](crate::Sandbox),
/// [`FileStore`](crate::FileStore), [`Process`](crate::Process)). Layers decide on it
/// ([`layer::Call::operation`](crate::layer::Call::operation)), errors name it
/// ([`Error::operation`](crate::Error::operation)) and spans carry it (`op`), all with the same
/// [`Operation::as_str`].
///
/// ```
/// use sandkit_core::Operation;
///
/// assert_eq!(Operation::ReadStream.as_str(), "read_stream");
/// assert_eq!(Operation::ListFiles.to_string(), "list_files");
/// assert!(!Operation::Spawn.repeatable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Runtime::create`](crate::Runtime::create).
    Create,
    /// [`Runtime::connect`](crate::Runtime::connect).
    Connect,
    /// [`Runtime::list`](crate::Runtime::list): sandboxes.
    List,
    /// [`Runtime::info`](crate::Runtime::info) and [`Sandbox::info`](crate::Sandbox::info).
    Info,
    /// [`Runtime::kill`](crate::Runtime::kill) and [`Sandbox::kill`](crate::Sandbox::kill).
    Kill,
    /// [`Runtime::snapshots`](crate::Runtime::snapshots).
    Snapshots,
    /// [`Runtime::delete_snapshot`](crate::Runtime::delete_snapshot).
    DeleteSnapshot,
    /// [`Runtime::create_volume`](crate::Runtime::create_volume).
    CreateVolume,
    /// [`Runtime::volumes`](crate::Runtime::volumes).
    Volumes,
    /// [`Runtime::remove_volume`](crate::Runtime::remove_volume).
    RemoveVolume,
    /// [`Sandbox::spawn`](crate::Sandbox::spawn).
    Spawn,
    /// [`Sandbox::processes`](crate::Sandbox::processes).
    Processes,
    /// [`Sandbox::files_as`](crate::Sandbox::files_as).
    FilesAs,
    /// [`Sandbox::set_timeout`](crate::Sandbox::set_timeout).
    SetTimeout,
    /// [`Sandbox::pause`](crate::Sandbox::pause).
    Pause,
    /// [`Sandbox::watch`](crate::Sandbox::watch).
    Watch,
    /// [`Sandbox::metrics`](crate::Sandbox::metrics).
    Metrics,
    /// [`Sandbox::set_network_policy`](crate::Sandbox::set_network_policy).
    SetNetworkPolicy,
    /// [`Sandbox::snapshot`](crate::Sandbox::snapshot).
    Snapshot,
    /// [`Sandbox::fork`](crate::Sandbox::fork).
    Fork,
    /// [`Sandbox::get_host`](crate::Sandbox::get_host).
    GetHost,
    /// [`FileStore::write_stream`](crate::FileStore::write_stream).
    WriteStream,
    /// [`FileStore::read_stream`](crate::FileStore::read_stream).
    ReadStream,
    /// [`FileStore::list`](crate::FileStore::list): a directory's entries.
    ListFiles,
    /// [`FileStore::stat`](crate::FileStore::stat).
    Stat,
    /// [`FileStore::mkdir`](crate::FileStore::mkdir).
    Mkdir,
    /// [`FileStore::rename`](crate::FileStore::rename).
    Rename,
    /// [`FileStore::remove`](crate::FileStore::remove).
    Remove,
    /// [`Process::write_stdin`](crate::Process::write_stdin).
    WriteStdin,
    /// [`Process::close_stdin`](crate::Process::close_stdin).
    CloseStdin,
    /// [`Process::signal`](crate::Process::signal).
    Signal,
    /// [`Process::resize`](crate::Process::resize).
    Resize,
}

impl Operation {
    /// The name in errors and spans: the method's (`list_files` for a directory's entries).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Connect => "connect",
            Operation::List => "list",
            Operation::Info => "info",
            Operation::Kill => "kill",
            Operation::Snapshots => "snapshots",
            Operation::DeleteSnapshot => "delete_snapshot",
            Operation::CreateVolume => "create_volume",
            Operation::Volumes => "volumes",
            Operation::RemoveVolume => "remove_volume",
            Operation::Spawn => "spawn",
            Operation::Processes => "processes",
            Operation::FilesAs => "files_as",
            Operation::SetTimeout => "set_timeout",
            Operation::Pause => "pause",
            Operation::Watch => "watch",
            Operation::Metrics => "metrics",
            Operation::SetNetworkPolicy => "set_network_policy",
            Operation::Snapshot => "snapshot",
            Operation::Fork => "fork",
            Operation::GetHost => "get_host",
            Operation::WriteStream => "write_stream",
            Operation::ReadStream => "read_stream",
            Operation::ListFiles => "list_files",
            Operation::Stat => "stat",
            Operation::Mkdir => "mkdir",
            Operation::Rename => "rename",
            Operation::Remove => "remove",
            Operation::WriteStdin => "write_stdin",
            Operation::CloseStdin => "close_stdin",
            Operation::Signal => "signal",
            Operation::Resize => "resize",
        }
    }

    /// Whether running the call again is safe by its nature: false for a spawn (the command
    /// may have started), a fork, a write of a stream (it is consumed) and a write to a
    /// process's stdin. A call may be unrepeatable for its arguments too (an unnamed
    /// snapshot): see [`layer::Call::repeatable`](crate::layer::Call::repeatable).
    pub fn repeatable(self) -> bool {
        !matches!(
            self,
            Operation::Spawn | Operation::Fork | Operation::WriteStream | Operation::WriteStdin
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Operation> for &'static str {
    fn from(op: Operation) -> &'static str {
        op.as_str()
    }
}
