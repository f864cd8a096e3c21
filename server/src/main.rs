//! `kms-broker`: thin CLI over the library (STYLE lesson 1). Exit codes: 0 clean stop,
//! 64 bad config or usage (EX_USAGE), 75 the state dir is in use by another daemon
//! (EX_TEMPFAIL), 1 anything else (process hardening that could not be applied included).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kms_broker::config::Config;
use kms_broker::server::{ServeError, Server};
use tracing_subscriber::EnvFilter;

const EX_USAGE: u8 = 64;
const EX_TEMPFAIL: u8 = 75;

/// vaultrs logs every Vault error response at ERROR; the backend already classifies and
/// reports them once, so its own lines would only repeat them on every poll.
const DEFAULT_LOG: &str = "info,vaultrs=off,rustify=off";

#[derive(Parser, Debug)]
#[command(
    name = "kms-broker",
    version,
    about = "gRPC key-management sidecar: the one process on a node that talks to the KMS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the KeyBroker API on the Unix socket (and mutual TLS, if configured).
    Serve {
        /// The TOML config file.
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Zero set-up development mode: dev certificates, a file key and a config under --dev-dir.
        #[arg(long)]
        dev: bool,
        /// Where --dev keeps its files.
        #[arg(long, default_value = ".dev", requires = "dev")]
        dev_dir: PathBuf,
        /// Serve even if process hardening (no core dumps, no ptrace, open-file limit)
        /// cannot be applied. Without it, that failure stops the daemon.
        #[arg(long)]
        allow_unhardened: bool,
    },
    /// Write a dev CA, a server certificate (localhost, 127.0.0.1) and a client certificate.
    DevCerts {
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KMS_BROKER_LOG")
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Both ring and aws-lc-rs can end up linked (through SDKs); rustls then refuses to
    // guess, so pick one for the whole process before any TLS is set up.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let cli = Cli::parse();
    match cli.command {
        Command::DevCerts { out } => match kms_broker::certs::write_dev_certs(&out) {
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
        },
        Command::Serve {
            config,
            dev,
            dev_dir,
            allow_unhardened,
        } => {
            // Before any key byte is in memory (`--dev` makes a key file next).
            if let Err(e) = kms_broker::hardening::apply() {
                if !allow_unhardened {
                    eprintln!(
                        "kms-broker: process hardening failed: {e}; key bytes could leak through core dumps or ptrace. Fix the cause, or pass --allow-unhardened to serve anyway"
                    );
                    return ExitCode::FAILURE;
                }
                tracing::warn!(
                    "process hardening incomplete, serving anyway (--allow-unhardened): {e}"
                );
            }
            let (config, banner) = if dev {
                match kms_broker::dev::prepare(&dev_dir) {
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
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("kms-broker: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, banner)) {
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
    }
}

async fn serve(config: Config, banner: Option<String>) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    if let Some(b) = banner {
        println!("{b}");
    }
    server.serve(shutdown_signal()).await
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
