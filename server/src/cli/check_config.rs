//! `kms-broker check-config FILE`: validates a config as `serve` would load it, without
//! serving: [`kms_broker::live::check`], the check a SIGHUP reload runs too. The TLS files
//! are read and parsed (key matched to certificate), every KMS backend is built (tokens and
//! CA files read; no KMS is contacted), and the state dir's metadata is examined (exists, a
//! folder, owner, mode, writable) without taking its lock or writing in it.
//!
//! Ownership checks compare with the user running the command, as `serve` does: run it as
//! the daemon's user.

use std::path::Path;

use super::{out, CliError};
use kms_broker::config::Config;

pub async fn run(path: &Path) -> Result<(), CliError> {
    let bad = |e: &dyn std::fmt::Display| CliError::Usage(format!("bad config: {e}"));
    let config = Config::load(path).map_err(|e| bad(&e))?;
    kms_broker::live::check(&config, None)
        .await
        .map_err(|e| bad(&e))?;
    out!("ok");
    Ok(())
}
