//! The runner: registers cases as `backend::area::case` trials, runs them through
//! libtest-mimic, and cleans up what they created.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::FutureExt;
use libtest_mimic::{Arguments, Failed, Trial};
use sandkit_core::{
    Capabilities, FileStore, ListFilter, Runtime, Sandbox, SandboxExt, SandboxSpec,
};
use tokio::sync::OnceCell;

use crate::{actions, filestore, sandbox};

/// What a case returns. Assertions panic; backend errors come back through `?`.
pub type CaseResult = sandkit_core::Result<()>;
/// A boxed case future.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// The metadata key every sandbox made by the suite carries.
pub const SUITE_LABEL: &str = "sandkit-conformance";

/// One registered case.
pub struct Case<C> {
    /// The area (`files`, `exec`, ...).
    pub area: &'static str,
    /// The case name.
    pub name: &'static str,
    /// Which capabilities it needs.
    pub needs: fn(&Capabilities) -> bool,
    /// The case.
    pub run: fn(C) -> CaseFuture,
}

impl<C> Clone for Case<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Case<C> {}
impl<C> std::fmt::Debug for Case<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.area, self.name)
    }
}

/// Needs nothing beyond the core contract.
pub fn always(_: &Capabilities) -> bool {
    true
}

/// What the FileStore cases need from a store under test.
#[async_trait]
pub trait FsHarness: Send + Sync + 'static {
    /// The store.
    fn store(&self) -> &dyn FileStore;
    /// Where fresh case directories are made (`""` for a store root, `/tmp` in a sandbox).
    fn scratch_root(&self) -> String;
    /// Creates a symbolic link `link` pointing to `target`, by whatever means the store has.
    async fn symlink(&self, target: &str, link: &str) -> sandkit_core::Result<()>;
}

/// The context a FileStore case gets: the harness and a fresh, empty directory of its own.
#[derive(Clone)]
pub struct FsCtx {
    harness: Arc<dyn FsHarness>,
    dir: String,
}

impl std::fmt::Debug for FsCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsCtx").field("dir", &self.dir).finish()
    }
}

impl FsCtx {
    /// The store under test.
    pub fn store(&self) -> &dyn FileStore {
        self.harness.store()
    }
    /// A path inside this case's directory.
    pub fn path(&self, rel: &str) -> String {
        if self.dir.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{}", self.dir, rel)
        }
    }
    /// This case's directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }
    /// Creates a symbolic link inside the case directory.
    pub async fn symlink(&self, target: &str, link_rel: &str) -> CaseResult {
        self.harness.symlink(target, &self.path(link_rel)).await
    }
}

/// A sandbox-backed [`FsHarness`]: the shared sandbox's file store, links made with `ln -s`.
#[derive(Debug)]
struct SandboxFs {
    target: Arc<SandboxTarget>,
}

impl SandboxFs {
    fn sandbox(&self) -> &dyn Sandbox {
        self.target
            .shared
            .get()
            .expect("the shared sandbox is made before the case runs")
            .as_ref()
    }
}

#[async_trait]
impl FsHarness for SandboxFs {
    fn store(&self) -> &dyn FileStore {
        self.sandbox().files()
    }
    fn scratch_root(&self) -> String {
        "/tmp".into()
    }
    async fn symlink(&self, target: &str, link: &str) -> sandkit_core::Result<()> {
        let out = self
            .sandbox()
            .exec(sandkit_core::CommandSpec::program(
                "ln",
                ["-s", target, link],
            ))
            .await?;
        assert!(out.success(), "ln -s failed: {out:?}");
        Ok(())
    }
}

/// Sandboxes made by the cases of one backend, killed when the case ends (pass or fail).
pub struct SandkitCtx {
    target: Arc<SandboxTarget>,
    made: Mutex<Vec<String>>,
}

impl std::fmt::Debug for SandkitCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandkitCtx")
            .field("backend", &self.target.label)
            .finish()
    }
}

impl SandkitCtx {
    /// The runtime under test.
    pub fn runtime(&self) -> &dyn Runtime {
        self.target.runtime.as_ref()
    }
    /// The runtime under test, shared.
    pub fn runtime_arc(&self) -> Arc<dyn Runtime> {
        self.target.runtime.clone()
    }
    /// Records a sandbox made by other means (a session) for clean-up.
    pub fn track(&self, id: &str) {
        self.made.lock().unwrap().push(id.to_string());
    }
    /// The spec every case starts from: the target's template plus the suite label.
    pub fn spec(&self) -> SandboxSpec {
        self.target.spec.clone()
    }
    /// Options of the target.
    pub fn target(&self) -> &SandboxTarget {
        &self.target
    }
    /// Creates a sandbox from `spec`, recorded for clean-up.
    pub async fn create(&self, spec: SandboxSpec) -> sandkit_core::Result<Box<dyn Sandbox>> {
        let sandbox = self.target.runtime.create(spec).await?;
        self.made.lock().unwrap().push(sandbox.id().to_string());
        Ok(sandbox)
    }
    /// Creates a sandbox from [`SandkitCtx::spec`].
    pub async fn fresh(&self) -> sandkit_core::Result<Box<dyn Sandbox>> {
        self.create(self.spec()).await
    }
    /// A sandbox shared by the cases that only run commands in it.
    pub async fn shared(&self) -> sandkit_core::Result<&dyn Sandbox> {
        self.target.shared().await
    }

    async fn cleanup(&self) {
        let ids = std::mem::take(&mut *self.made.lock().unwrap());
        for id in ids {
            // Already killed by the case is fine; anything else is reported by the leak check.
            if let Err(e) = self.target.runtime.kill(&id).await {
                if e.kind() != sandkit_core::ErrorKind::NotFound {
                    eprintln!("warning: cleaning up sandbox {id}: {e}");
                }
            }
        }
    }
}

/// A backend to run the Sandbox cases against.
pub struct SandboxTarget {
    label: String,
    runtime: Arc<dyn Runtime>,
    spec: SandboxSpec,
    shared: OnceCell<Box<dyn Sandbox>>,
    /// Whether the image has `python3` and bash: the host-port case serves with python, and the
    /// agent-operation cases (`actions::*`) run.
    pub has_python: bool,
}

impl std::fmt::Debug for SandboxTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxTarget")
            .field("label", &self.label)
            .field("spec", &self.spec)
            .finish()
    }
}

impl SandboxTarget {
    /// A target named `label` (the first part of every trial name) over `runtime`, whose
    /// sandboxes are made from `spec`. The cases run it inside the standard stack of
    /// [layers](sandkit_core::layer::standard), as programs get it from `Config::runtime`:
    /// pass the backend itself.
    pub fn new(label: impl Into<String>, runtime: Arc<dyn Runtime>, spec: SandboxSpec) -> Self {
        SandboxTarget {
            label: label.into(),
            runtime: sandkit_core::layer::standard(
                runtime,
                Some(sandkit_core::layer::RetryLayer::default()),
            ),
            spec,
            shared: OnceCell::new(),
            has_python: false,
        }
    }
    async fn shared(&self) -> sandkit_core::Result<&dyn Sandbox> {
        let sandbox = self
            .shared
            .get_or_try_init(|| self.runtime.create(self.spec.clone()))
            .await?;
        Ok(sandbox.as_ref())
    }

    /// Says whether the image has `python3`.
    pub fn with_python(mut self, has_python: bool) -> Self {
        self.has_python = has_python;
        self
    }
}

/// The behaviour suite for one test binary.
///
/// ```no_run
/// use sandkit_conformance::Suite;
/// use std::sync::Arc;
///
/// fn main() -> std::process::ExitCode {
///     let mut suite = Suite::new();
///     let store = Arc::new(MyHarness::new());
///     suite.add_filestore("mystore", store);
///     suite.run()
/// }
/// # struct MyHarness;
/// # impl MyHarness { fn new() -> Self { MyHarness } }
/// # #[async_trait::async_trait]
/// # impl sandkit_conformance::FsHarness for MyHarness {
/// #   fn store(&self) -> &dyn sandkit_core::FileStore { unimplemented!() }
/// #   fn scratch_root(&self) -> String { String::new() }
/// #   async fn symlink(&self, _: &str, _: &str) -> sandkit_core::Result<()> { Ok(()) }
/// # }
/// ```
pub struct Suite {
    rt: Arc<tokio::runtime::Runtime>,
    run_id: String,
    trials: Vec<Trial>,
    targets: Vec<Arc<SandboxTarget>>,
    finish: Vec<Box<dyn FnOnce() -> CaseFuture + Send>>,
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("run_id", &self.run_id)
            .field("trials", &self.trials.len())
            .finish()
    }
}

impl Default for Suite {
    fn default() -> Self {
        Self::new()
    }
}

impl Suite {
    /// An empty suite with its own tokio runtime.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Suite {
            rt: Arc::new(rt),
            run_id: format!("{:016x}", rand::random::<u64>()),
            trials: Vec::new(),
            targets: Vec::new(),
            finish: Vec::new(),
        }
    }

    /// The suite's tokio runtime, for setting up backends before registering them.
    pub fn tokio(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The id of this run, put in every sandbox's metadata under [`SUITE_LABEL`].
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Registers the FileStore cases against `harness`, named `label::files::case`.
    pub fn add_filestore(&mut self, label: &str, harness: Arc<dyn FsHarness>) {
        for case in filestore::cases() {
            let harness = harness.clone();
            let rt = self.rt.clone();
            let name = format!("{label}::{}::{}", case.area, case.name);
            self.trials.push(Trial::test(name, move || {
                rt.block_on(run_fs_case(case, harness))
            }));
        }
    }

    /// Registers every Sandbox case (and the FileStore cases through a sandbox) against a
    /// backend. Cases whose capability is missing show as ignored.
    pub fn add_sandbox(&mut self, mut target: SandboxTarget) {
        target
            .spec
            .metadata
            .insert(SUITE_LABEL.into(), self.run_id.clone());
        let caps = target.runtime.capabilities();
        let target = Arc::new(target);
        self.targets.push(target.clone());
        let mut cases = sandbox::cases();
        if target.has_python {
            // The agent operations need bash and python3 in the image.
            cases.extend(actions::cases());
        }
        for case in cases {
            let name = format!("{}::{}::{}", target.label, case.area, case.name);
            let t = target.clone();
            let rt = self.rt.clone();
            let trial = Trial::test(name, move || rt.block_on(run_sandkit_case(case, t)));
            self.trials
                .push(trial.with_ignored_flag(!(case.needs)(&caps)));
        }
        // The FileStore cases, through the shared sandbox's file store.
        for case in filestore::cases() {
            let name = format!("{}::{}::{}", target.label, case.area, case.name);
            let (t, rt) = (target.clone(), self.rt.clone());
            self.trials.push(Trial::test(name, move || {
                rt.block_on(async move {
                    t.shared()
                        .await
                        .map_err(|e| Failed::from(format!("creating the sandbox: {e}")))?;
                    run_fs_case(case, Arc::new(SandboxFs { target: t })).await
                })
            }));
        }
    }

    /// Registers every case a backend would run, all ignored, with the reason in the log:
    /// for a backend that is not available here (no engine, no credentials).
    pub fn add_ignored(&mut self, label: &str, reason: &str) {
        eprintln!("note: {label} cases are ignored: {reason}");
        for case in sandbox::cases() {
            self.trials.push(
                Trial::test(format!("{label}::{}::{}", case.area, case.name), || Ok(()))
                    .with_ignored_flag(true),
            );
        }
        for case in filestore::cases() {
            self.trials.push(
                Trial::test(format!("{label}::{}::{}", case.area, case.name), || Ok(()))
                    .with_ignored_flag(true),
            );
        }
    }

    /// Adds a backend-specific trial (run with the suite's tokio runtime).
    pub fn add_trial<F, Fut>(&mut self, name: String, ignored: bool, case: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = CaseResult> + Send,
    {
        let rt = self.rt.clone();
        self.trials.push(
            Trial::test(name, move || {
                rt.block_on(async move { finish(AssertUnwindSafe(case()).catch_unwind().await) })
            })
            .with_ignored_flag(ignored),
        );
    }

    /// Adds a check run after every trial and the shared sandboxes' end, on the suite's tokio
    /// runtime, before the leak check (a backend's own clean-up and what must hold after it); its failure fails the run.
    pub fn add_finish<F, Fut>(&mut self, check: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = CaseResult> + Send + 'static,
    {
        self.finish.push(Box::new(move || Box::pin(check())));
    }

    /// Runs the trials (honouring the usual test-binary arguments), kills the shared
    /// sandboxes, runs the finishing checks, and fails the run if any sandbox labelled with
    /// this run is left.
    pub fn run(self) -> ExitCode {
        let mut args = Arguments::from_args();
        if args.test_threads.is_none() {
            args.test_threads = Some(8);
        }
        let conclusion = libtest_mimic::run(&args, self.trials);
        self.rt.block_on(async {
            for target in &self.targets {
                if let Some(sandbox) = target.shared.get() {
                    if let Err(e) = sandbox.kill().await {
                        eprintln!("warning: killing the shared sandbox {}: {e}", sandbox.id());
                    }
                }
            }
        });
        let mut finished_ok = true;
        for check in self.finish {
            let result = self.rt.block_on(AssertUnwindSafe(check()).catch_unwind());
            if let Err(e) = finish(result) {
                eprintln!(
                    "error: a finishing check failed: {}",
                    e.message().unwrap_or_default()
                );
                finished_ok = false;
            }
        }
        let mut leaked = Vec::new();
        self.rt.block_on(async {
            // Targets may share a runtime, so every shared sandbox is gone before this looks.
            for target in &self.targets {
                let filter = ListFilter::all().metadata(SUITE_LABEL, self.run_id.clone());
                if let Ok(left) = target.runtime.list(&filter).await {
                    for info in left {
                        if leaked.iter().any(|l: &String| l.starts_with(&info.id)) {
                            continue;
                        }
                        leaked.push(format!(
                            "{} (template {}, metadata {:?}, state {:?})",
                            info.id, info.template, info.metadata, info.state
                        ));
                        let _ = target.runtime.kill(&info.id).await;
                    }
                }
            }
        });
        if conclusion.has_failed() || !finished_ok {
            return ExitCode::from(101);
        }
        if !leaked.is_empty() {
            eprintln!("error: sandboxes left after the suite (now killed): {leaked:?}");
            return ExitCode::from(101);
        }
        ExitCode::SUCCESS
    }
}

fn finish(result: std::thread::Result<CaseResult>) -> Result<(), Failed> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failed::from(format!("error: {e}"))),
        Err(panic) => Err(Failed::from(panic_message(&panic))),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "the case panicked".into()
    }
}

async fn run_fs_case(case: Case<FsCtx>, harness: Arc<dyn FsHarness>) -> Result<(), Failed> {
    let root = harness.scratch_root();
    let name = format!(
        "sandkit-conf-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    let dir = if root.is_empty() {
        name
    } else {
        format!("{}/{}", root.trim_end_matches('/'), name)
    };
    harness
        .store()
        .mkdir(&dir)
        .await
        .map_err(|e| Failed::from(format!("making the case directory: {e}")))?;
    let ctx = FsCtx {
        harness: harness.clone(),
        dir: dir.clone(),
    };
    let result = AssertUnwindSafe((case.run)(ctx)).catch_unwind().await;
    let cleanup = harness.store().remove(&dir).await;
    finish(result)?;
    cleanup.map_err(|e| Failed::from(format!("removing the case directory: {e}")))
}

async fn run_sandkit_case(
    case: Case<Arc<SandkitCtx>>,
    target: Arc<SandboxTarget>,
) -> Result<(), Failed> {
    let ctx = Arc::new(SandkitCtx {
        target,
        made: Mutex::new(Vec::new()),
    });
    let result = AssertUnwindSafe((case.run)(ctx.clone()))
        .catch_unwind()
        .await;
    ctx.cleanup().await;
    finish(result)
}
