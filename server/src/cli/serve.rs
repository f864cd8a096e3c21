//! `kms-broker serve` and `kms-broker dev-certs`. Exit codes: 0 clean stop, 64 bad config or
//! usage (EX_USAGE), 75 the state dir is in use by another daemon (EX_TEMPFAIL), 1 anything
//! else (process hardening that could not be applied included).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::EX_USAGE;
use kms_broker::config::Config;
use kms_broker::server::{ServeError, Server};

const EX_TEMPFAIL: u8 = 75;

pub fn dev_certs(out: &Path) -> ExitCode {
    match kms_broker::certs::write_dev_certs(out) {
        Ok(()) => {
            println!(
                "wrote {} (DEV ONLY) to {}",
                kms_broker::certs::FILES.join(", "),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kms-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `config` is `None` exactly when `dev` is set (clap enforces it).
pub fn serve(
    config: Option<PathBuf>,
    dev: bool,
    dev_dir: &Path,
    allow_unhardened: bool,
) -> ExitCode {
    // Before any key byte is in memory (`--dev` makes a key file next).
    if let Err(e) = kms_broker::hardening::apply() {
        if !allow_unhardened {
            eprintln!(
                "kms-broker: process hardening failed: {e}; key bytes could leak through core dumps or ptrace. Fix the cause, or pass --allow-unhardened to serve anyway"
            );
            return ExitCode::FAILURE;
        }
        tracing::warn!("process hardening incomplete, serving anyway (--allow-unhardened): {e}");
    }
    let (config, banner) = if dev {
        match kms_broker::dev::prepare(dev_dir) {
            Ok(c) => {
                let dir = c.file.parent().map(PathBuf::from).unwrap_or_default();
                (c, Some(kms_broker::dev::usage(&dir)))
            }
            Err(e) => {
                eprintln!("kms-broker: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let path = config.expect("clap requires --config without --dev");
        match Config::load(&path) {
            Ok(c) => (c, None),
            Err(e) => {
                eprintln!("kms-broker: bad config: {e}");
                return ExitCode::from(EX_USAGE);
            }
        }
    };
    // After the config (it says whether locked memory is required), before the daemon holds
    // keys for callers.
    if let Err(e) = kms_broker::hardening::check_key_memory() {
        use kms_broker::hardening::MemoryLock;
        if config.memory.lock == MemoryLock::Required && !allow_unhardened {
            eprintln!(
                "kms-broker: {e}; or set [memory] lock = \"best-effort\" to serve with key bytes that may be swapped"
            );
            return ExitCode::FAILURE;
        }
        tracing::warn!("key memory may not be locked, serving anyway: {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kms-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, banner)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Config(e)) => {
            eprintln!("kms-broker: bad config: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e @ ServeError::StateDirInUse(_)) => {
            eprintln!("kms-broker: {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
        Err(e) => {
            eprintln!("kms-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, banner: Option<String>) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    if let Some(b) = banner {
        println!("{b}");
    }
    let reloads = tokio::spawn(reload_on_sighup(server.reloader()));
    let result = server.serve(shutdown_signal()).await;
    reloads.abort();
    result
}

/// SIGHUP: reload the config file (the reloader logs the outcome, one line). Signals that
/// arrive during a reload are merged into one more reload after it, which reads the file
/// as it is then.
async fn reload_on_sighup(reloader: kms_broker::live::Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; config changes need a restart");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let _ = reloader.reload().await;
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
