//! `kms-broker`: thin CLI over the library (STYLE lesson 1): parsing and dispatch only; each
//! command's work is in `cli/`. Exit codes: 0 success, 1 a refused call or any other failure,
//! 64 bad config or usage (EX_USAGE), 69 the daemon cannot be reached (EX_UNAVAILABLE), 75
//! the state dir is in use by another daemon (EX_TEMPFAIL, `serve` only).

#![forbid(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::connect::DaemonArgs;
use tracing_subscriber::EnvFilter;

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
        /// Serve even if process hardening (no core dumps, no ptrace, open-file limit,
        /// locked key memory) cannot be applied. Without it, that failure stops the daemon.
        #[arg(long)]
        allow_unhardened: bool,
    },
    /// Write a dev CA, a server certificate (localhost, 127.0.0.1) and a client certificate.
    DevCerts {
        #[arg(long)]
        out: PathBuf,
    },
    /// Every key's state (per URI) and every store's status, as a table.
    Status {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// One JSON document instead of the table (field names in the README).
        #[arg(long)]
        json: bool,
    },
    /// Make a new active store key; the old ones stay readable as previous keys.
    Rotate {
        #[command(flatten)]
        daemon: DaemonArgs,
        store_id: String,
    },
    /// Re-wrap store key files under their configured key's current version (and move
    /// stores whose configured key changed).
    Rewrap {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Only this store (default: every store the policy lets you re-wrap).
        #[arg(long = "store")]
        store: Option<String>,
        /// Say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore store key files from wrapped copies (GetStoreKey's `wrapped_copy`, or a
    /// backed-up `store-<id>.json`); the daemon unwraps every key in each first.
    Import {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Drop one previous store key: data still encrypted under it becomes unreadable.
    DropKey {
        #[command(flatten)]
        daemon: DaemonArgs,
        store_id: String,
        /// The key's id, 64 hex digits, as `status` shows it.
        key_id: String,
        /// Confirm that no data needs that key any more.
        #[arg(long)]
        yes: bool,
    },
    /// Validate a config as `serve` would load it, without serving (exit 64 on error).
    CheckConfig { file: PathBuf },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check an audit file's hash chain (exit 1 naming the first bad record).
    Verify { file: PathBuf },
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

    let command = match Cli::try_parse() {
        Ok(cli) => cli.command,
        // Help and version go to stdout and exit 0; a usage error is EX_USAGE (64), as
        // documented, not clap's own 2.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match command {
        Command::Serve {
            config,
            dev,
            dev_dir,
            allow_unhardened,
        } => cli::serve::serve(config, dev, &dev_dir, allow_unhardened),
        Command::DevCerts { out } => cli::serve::dev_certs(&out),
        Command::Status { daemon, json } => cli::run(cli::status::run(&daemon, json)),
        Command::Rotate { daemon, store_id } => {
            cli::run(cli::lifecycle::rotate(&daemon, &store_id))
        }
        Command::Rewrap {
            daemon,
            store,
            dry_run,
        } => cli::run(cli::lifecycle::rewrap(&daemon, store.as_deref(), dry_run)),
        Command::Import { daemon, files } => cli::run(cli::retention::import(&daemon, &files)),
        Command::DropKey {
            daemon,
            store_id,
            key_id,
            yes,
        } => cli::run(cli::retention::drop_key(&daemon, &store_id, &key_id, yes)),
        Command::CheckConfig { file } => cli::run(cli::check_config::run(&file)),
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => cli::audit::verify(&file),
    }
}
