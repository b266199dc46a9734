//! The `e2b-local` command: an E2B-compatible server over the configured sandkit backend.

use std::process::ExitCode;

use clap::Parser;
use sandkit_e2b_local::ServeArgs;

/// Serve E2B's API and envd over a local sandkit backend (Docker by default), so the official E2B
/// SDKs run against this machine:
///
///   E2B_API_KEY=KEY E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:49983
#[derive(Debug, Parser)]
#[command(name = "e2b-local", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// The sandkit configuration file (default: SANDKIT_CONFIG, else ./sandkit.toml).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = sandkit_e2b_local::init_logging("info", args.serve.audit_log.as_deref()) {
        eprintln!("e2b-local: {e}");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2b-local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Options are checked before the backend is reached.
    args.serve.config()?;
    let mut builder = sandkit_config::Config::builder();
    if let Some(path) = &args.config {
        builder = builder.file(path);
    }
    let config = builder.load().map_err(|e| e.to_string())?;
    if config.core.runtime == sandkit_config::RuntimeKind::E2b {
        return Err(
            "e2b-local serves a local backend; set runtime = \"docker\" (RUNTIME=docker)".into(),
        );
    }
    let config = sandkit_e2b_local::serving_config(config);
    let runtime = config.runtime().await.map_err(|e| e.to_string())?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    args.serve.serve(runtime, shutdown).await
}
