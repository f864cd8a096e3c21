//! `kms-broker audit verify FILE`: checks an audit file's hash chain on its own (wherever it
//! was copied), with no daemon. Exit 0 and a summary; 1 naming the first bad record.

use std::path::Path;
use std::process::ExitCode;

use kms_broker::audit::{verify as verify_chain, VerifyError};

pub fn verify(file: &Path) -> ExitCode {
    match verify_chain(file) {
        Ok(s) => {
            println!(
                "ok: {} records (seq {}..{}), {} lost; first prev {}; last hash {}",
                s.records,
                s.first_seq.map_or("-".into(), |n| n.to_string()),
                s.last_seq.map_or("-".into(), |n| n.to_string()),
                s.lost,
                s.first_prev.as_deref().unwrap_or("-"),
                s.last_hash.as_deref().unwrap_or("-"),
            );
            // A hash chain cannot see its own end cut off: compare the last hash with one
            // kept elsewhere.
            ExitCode::SUCCESS
        }
        Err(e @ VerifyError::Bad { .. }) => {
            eprintln!("kms-broker: {}: {e}", file.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kms-broker: {e}");
            ExitCode::FAILURE
        }
    }
}
