//! The operator commands (CONTRACT "Additions" → Commands). Every command but `check-config`
//! is a client of a running daemon: it reaches the daemon through [`connect`] and never
//! opens the state dir. Exit codes: 0 done, 1 the daemon refused (its gRPC code and message
//! are printed), 64 bad usage or config (EX_USAGE), 69 the daemon cannot be reached
//! (EX_UNAVAILABLE).

use std::future::Future;
use std::process::ExitCode;

pub mod audit;
pub mod check_config;
pub mod connect;
pub mod lifecycle;
pub mod retention;
pub mod serve;
pub mod status;

pub const EX_USAGE: u8 = 64;
pub const EX_UNAVAILABLE: u8 = 69;

/// Why a command failed; each maps to one exit code.
#[derive(Debug)]
pub enum CliError {
    /// The daemon answered with an error status.
    Refused { op: String, status: tonic::Status },
    /// Nothing answered at the socket or endpoint, or the connection broke mid-call.
    Unreachable(String),
    /// The command line, a file it names, or the config is unusable; nothing was asked.
    Usage(String),
    /// Anything else that stopped the command (an unreadable input file, a partial failure).
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Refused { .. } | CliError::Failed(_) => ExitCode::FAILURE,
            CliError::Unreachable(_) => ExitCode::from(EX_UNAVAILABLE),
            CliError::Usage(_) => ExitCode::from(EX_USAGE),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Refused { op, status } => {
                write!(f, "{op} refused: {:?}: {}", status.code(), status.message())
            }
            CliError::Unreachable(m) | CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

/// Runs one command on a small runtime and turns its outcome into the exit code, printing
/// the error on stderr.
pub fn run(command: impl Future<Output = Result<(), CliError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kms-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-broker: {e}");
            e.exit_code()
        }
    }
}

/// `println!` for command output, failing with an error (not a panic, as `println!` would)
/// when stdout is gone, e.g. piped into `head`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))?
    };
}
pub(crate) use out;

pub fn write_line(line: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}")
        .map_err(|e| CliError::Failed(format!("cannot write to stdout: {e}")))
}

/// A store key's id as operators type it (`drop-key`) and see it (`status`): lower-case hex.
pub fn key_id(id: &[u8]) -> String {
    hex::encode(id)
}

/// RFC 3339 in UTC, or `-` when the daemon sent none.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// `ACTIVE`, `REVOKED`, ...: the name the contract uses (metrics, README), without the
/// proto's `KEY_STATE_` prefix.
pub fn state_name(state: i32) -> String {
    let name = kms_broker::pb::KeyState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("KEY_STATE_UNKNOWN_VALUE");
    name.trim_start_matches("KEY_STATE_").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_named_as_the_contract_names_them() {
        assert_eq!(
            state_name(kms_broker::pb::KeyState::Active as i32),
            "ACTIVE"
        );
        assert_eq!(
            state_name(kms_broker::pb::KeyState::Unreachable as i32),
            "UNREACHABLE"
        );
        assert_eq!(state_name(99), "UNKNOWN_VALUE");
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        let refused = CliError::Refused {
            op: "Rewrap".into(),
            status: tonic::Status::not_found("no such store"),
        };
        assert_eq!(refused.exit_code(), ExitCode::FAILURE);
        assert_eq!(
            refused.to_string(),
            "Rewrap refused: NotFound: no such store"
        );
        assert_eq!(
            CliError::Unreachable("x".into()).exit_code(),
            ExitCode::from(EX_UNAVAILABLE)
        );
        assert_eq!(
            CliError::Usage("x".into()).exit_code(),
            ExitCode::from(EX_USAGE)
        );
    }
}
