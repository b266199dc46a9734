//! [`LocalRuntime`] and [`LocalSandbox`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sandkit_core::{
    Capabilities, CommandSpec, Error, ErrorKind, FileStore, FsEventStream, ListFilter, Metrics,
    Process, ProcessInfo, Result, Runtime, Sandbox, SandboxInfo, SandboxSpec,
    DEFAULT_SANDBOX_TIMEOUT,
};
use tokio::sync::watch;

use crate::files::LocalFiles;
use crate::metrics::CpuSampler;
use crate::process::{self, Defaults, Registry};
use crate::users::{self, Ident};

const BACKEND: &str = "local";

/// Sandboxes that are this machine: commands run as processes of the current one, files are
/// the machine's files. **No isolation**: use it for trusted code, for tests, and inside a
/// container (where `sandkit-agent` runs it).
///
/// A sandbox lives as long as this runtime's process: `connect` and `list` see the sandboxes
/// this value made, and killing one (or its time to live passing) kills every process its
/// commands started, wherever they went (each carries `SANDKIT_LOCAL_SANDBOX=<id>` in its
/// environment).
///
/// ```no_run
/// # async fn run() -> sandkit_core::Result<()> {
/// use sandkit_core::{Runtime, SandboxExt, SandboxSpec};
/// let runtime = sandkit_local::LocalRuntime::new();
/// let sandbox = runtime.create(SandboxSpec::new().cwd("/tmp")).await?;
/// assert_eq!(sandbox.exec_shell("pwd").await?.stdout_text(), "/tmp\n");
/// sandbox.kill().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct LocalRuntime {
    sandboxes: Arc<Mutex<HashMap<String, Arc<State>>>>,
}

impl LocalRuntime {
    /// A runtime with no sandboxes yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, id: &str) -> Result<Arc<State>> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .filter(|s| !s.killed.load(Ordering::SeqCst))
            .cloned()
            .ok_or_else(|| gone(id))
    }
}

fn gone(id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("sandbox {id} doesn't exist (killed, expired, or made by another process)"),
    )
    .with_backend(BACKEND)
    .with_context("sandbox_id", id)
}

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("the local backend cannot {what}: it runs on this machine, without isolation"),
    )
    .with_backend(BACKEND)
    .with_operation("create")
}

/// One sandbox's state, shared by every handle to it.
#[derive(Debug)]
struct State {
    id: String,
    template: String,
    metadata: std::collections::BTreeMap<String, String>,
    started_at: SystemTime,
    defaults: Defaults,
    processes: Arc<Registry>,
    /// When it expires; `None` for a sandbox with no time to live.
    deadline: watch::Sender<Option<SystemTime>>,
    killed: AtomicBool,
    cpu: CpuSampler,
    /// Whether its commands carry [`process::MARK`].
    marked: bool,
}

impl State {
    /// What relative paths are relative to for `who`: the sandbox's directory, else their home.
    fn files_base(&self, who: &Ident) -> PathBuf {
        PathBuf::from(
            self.defaults
                .cwd
                .clone()
                .unwrap_or_else(|| who.home.clone()),
        )
    }

    fn kill(&self) -> bool {
        let first = !self.killed.swap(true, Ordering::SeqCst);
        if first {
            self.processes.kill_all();
            if self.marked {
                // What its commands left behind: backgrounded, double-forked, in new sessions.
                process::kill_marked(&self.id);
            }
            tracing::debug!(sandbox = %self.id, "local sandbox killed");
        }
        first
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let timeout = spec.timeout.unwrap_or(DEFAULT_SANDBOX_TIMEOUT);
        let sandbox = LocalSandbox::make(spec, Some(timeout), true)?;
        self.sandboxes
            .lock()
            .unwrap()
            .insert(sandbox.state.id.clone(), sandbox.state.clone());
        expire_later(&sandbox.state, Arc::downgrade(&self.sandboxes));
        Ok(Box::new(sandbox))
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        let state = self.get(id).map_err(|e| e.with_operation("connect"))?;
        Ok(Box::new(LocalSandbox::from_state(state)))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        let all: Vec<_> = self.sandboxes.lock().unwrap().values().cloned().collect();
        Ok(all
            .iter()
            .filter(|s| !s.killed.load(Ordering::SeqCst))
            .map(|s| info(s))
            .filter(|i| filter.matches(i))
            .collect())
    }

    async fn kill(&self, id: &str) -> Result<()> {
        let state = self
            .sandboxes
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| gone(id).with_operation("kill"))?;
        if !state.kill() {
            // Killed through a handle a moment ago; its expiry task had not yet taken it off.
            return Err(gone(id).with_operation("kill"));
        }
        Ok(())
    }
}

/// Kills the sandbox when its deadline passes, following every change of it.
fn expire_later(state: &Arc<State>, all: Weak<Mutex<HashMap<String, Arc<State>>>>) {
    let mut deadline = state.deadline.subscribe();
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let at = *deadline.borrow_and_update();
            let wait = match at {
                Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
                None => Duration::MAX,
            };
            tokio::select! {
                changed = deadline.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))) => {
                    if at.is_some_and(|at| at <= SystemTime::now()) {
                        break;
                    }
                }
            }
        }
        let Some(state) = weak.upgrade() else { return };
        if let Some(all) = all.upgrade() {
            all.lock().unwrap().remove(&state.id);
        }
        if state.kill() {
            tracing::info!(sandbox = %state.id, "local sandbox expired");
        }
    });
}

fn info(s: &State) -> SandboxInfo {
    let mut i = SandboxInfo::new(s.id.clone(), s.template.clone(), BACKEND);
    i.metadata = s.metadata.clone();
    i.started_at = s.started_at;
    i.expires_at = *s.deadline.borrow();
    i
}

/// One local sandbox: see [`LocalRuntime`].
#[derive(Debug)]
pub struct LocalSandbox {
    state: Arc<State>,
    files: LocalFiles,
}

/// What this backend can do beyond the core contract.
fn capabilities() -> Capabilities {
    let mut caps = Capabilities::none();
    caps.pty = true;
    caps.host_ports = true;
    caps.watch = true;
    caps.metrics = true;
    caps
}

impl LocalSandbox {
    /// This machine as one sandbox with no time to live, for a program that serves it (the
    /// agent inside a container): `spec`'s env, cwd and user are the defaults of its commands.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a default user the machine does not have;
    /// [`ErrorKind::Unsupported`] for what a local sandbox cannot do (templates, mounts, limits).
    pub fn this_machine(spec: SandboxSpec) -> Result<LocalSandbox> {
        LocalSandbox::make(spec, None, false)
    }

    /// A sandbox of `spec`; `marked`: its commands carry [`process::MARK`] in their
    /// environment, so that `kill` finds whatever they started (a sandbox that is the whole
    /// machine, the agent's, is not marked: its container ends with it).
    fn make(spec: SandboxSpec, timeout: Option<Duration>, marked: bool) -> Result<LocalSandbox> {
        if spec.template.as_deref().is_some_and(|t| t != BACKEND) {
            return Err(unsupported(
                "use templates (leave the template unset, or 'local')",
            ));
        }
        // Mounts, limits, network policies, hosts entries, auto-pause: what Capabilities lack.
        sandkit_core::layer::check_spec(BACKEND, capabilities(), &spec)?;
        // No network at all cannot be held here either.
        if spec.network.is_some() {
            return Err(unsupported("change the network"));
        }
        let user = match &spec.user {
            Some(u) => lookup_user(u)?,
            None => users::current(),
        };
        let id = format!("{:016x}", rand::random::<u64>());
        let (deadline, _) = watch::channel(timeout.map(|t| SystemTime::now() + t));
        let state = Arc::new(State {
            id: id.clone(),
            template: BACKEND.into(),
            metadata: spec.metadata,
            started_at: SystemTime::now(),
            marked,
            defaults: Defaults {
                env: spec
                    .env
                    .into_iter()
                    .chain(marked.then(|| (process::MARK.to_string(), id.clone())))
                    .collect(),
                cwd: spec.cwd,
                user,
            },
            processes: Arc::new(Registry::default()),
            deadline,
            killed: AtomicBool::new(false),
            cpu: CpuSampler::default(),
        });
        Ok(LocalSandbox::from_state(state))
    }

    fn from_state(state: Arc<State>) -> LocalSandbox {
        let files = LocalFiles::new(state.files_base(&state.defaults.user), None);
        LocalSandbox { state, files }
    }

    fn alive(&self, op: &'static str) -> Result<()> {
        if self.state.killed.load(Ordering::SeqCst) {
            return Err(gone(&self.state.id).with_operation(op));
        }
        Ok(())
    }
}

fn lookup_user(name: &str) -> Result<Ident> {
    users::lookup(name).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("no user '{name}' on this machine: {e}"),
        )
        .with_backend(BACKEND)
        .with_context("user", name)
    })
}

#[async_trait]
impl Sandbox for LocalSandbox {
    fn id(&self) -> &str {
        &self.state.id
    }

    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        self.alive("spawn")?;
        let user = match &spec.user {
            Some(u) if *u != self.state.defaults.user.name => lookup_user(u)?,
            _ => self.state.defaults.user.clone(),
        };
        if !user.is_current() && unsafe { libc::geteuid() } != 0 {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot run as '{}': this process is not root, so commands run as itself",
                    user.name
                ),
            )
            .with_backend(BACKEND)
            .with_operation("spawn"));
        }
        process::spawn(&spec, &self.state.defaults, user, &self.state.processes)
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.alive("processes")?;
        Ok(self.state.processes.list())
    }

    fn files(&self) -> &dyn FileStore {
        &self.files
    }

    fn files_as(&self, user: &str) -> Result<Box<dyn FileStore>> {
        let who = lookup_user(user).map_err(|e| e.with_operation("files_as"))?;
        Ok(Box::new(LocalFiles::new(
            self.state.files_base(&who),
            Some(who),
        )))
    }

    async fn info(&self) -> Result<SandboxInfo> {
        self.alive("info")?;
        Ok(info(&self.state))
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.alive("set_timeout")?;
        if self.state.deadline.borrow().is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this sandbox has no time to live (it is the machine a server runs on)",
            )
            .with_backend(BACKEND)
            .with_operation("set_timeout"));
        }
        self.state
            .deadline
            .send_replace(Some(SystemTime::now() + timeout));
        Ok(())
    }

    async fn kill(&self) -> Result<()> {
        if !self.state.kill() {
            return Err(gone(&self.state.id).with_operation("kill"));
        }
        // Wakes the expiry task, which takes the sandbox off its runtime's list.
        self.state
            .deadline
            .send_replace(Some(SystemTime::UNIX_EPOCH));
        Ok(())
    }

    async fn pause(&self) -> Result<()> {
        Err(Error::unsupported(BACKEND, "pause"))
    }

    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        self.alive("watch")?;
        let root = self.state.files_base(&self.state.defaults.user).join(path);
        crate::watch::watch(&root, path, recursive)
    }

    async fn metrics(&self) -> Result<Metrics> {
        self.alive("metrics")?;
        Ok(self.state.cpu.measure().await)
    }

    async fn get_host(&self, port: u16) -> Result<String> {
        self.alive("host")?;
        Ok(format!("127.0.0.1:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this backend cannot hold is refused, never dropped: a network policy or hosts
    /// entries silently ignored would leave the sandbox more open than asked.
    #[tokio::test]
    async fn network_rules_are_refused() {
        // The backend alone, without the layers, refuses them too.
        let rt = LocalRuntime::new();
        for spec in [
            SandboxSpec::new().network_policy(
                sandkit_core::NetworkPolicy::new().deny_out([sandkit_core::ALL_TRAFFIC]),
            ),
            SandboxSpec::new().add_host("x.test", "10.0.0.1".parse().unwrap()),
        ] {
            let e = rt.create(spec).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        }
    }
}
