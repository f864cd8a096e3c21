//! `kms-broker import FILE...` (restore store key files from wrapped copies) and
//! `kms-broker drop-key STORE_ID KEY_ID_HEX --yes` (the explicit act a retention rule asks
//! for).

use std::io::Read;
use std::path::PathBuf;

use super::connect::{call_failed, Client, DaemonArgs};
use super::lifecycle::describe_keys;
use super::{key_id, out, time, CliError};
use kms_broker::pb;

/// The largest copy read: the daemon's own bound on a store key file.
const MAX_COPY: u64 = 4 << 20;

fn read_copy(path: &PathBuf) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    file.take(MAX_COPY + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_COPY {
        return Err(format!(
            "larger than {MAX_COPY} bytes: not a store key file"
        ));
    }
    Ok(buf)
}

/// Imports each copy in turn; a refused or unreadable copy does not stop the others, but
/// makes the exit code 1. An unreachable daemon stops at once (69).
pub async fn import(daemon: &DaemonArgs, files: &[PathBuf]) -> Result<(), CliError> {
    let mut c = daemon.connect().await?;
    let mut failed = 0;
    for path in files {
        let copy = match read_copy(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        match c
            .import_store_key(pb::ImportStoreKeyRequest { wrapped_copy: copy })
            .await
        {
            Ok(r) => {
                let s = r.into_inner();
                out!(
                    "{}: store {} restored (every key in it unwrapped); {}",
                    path.display(),
                    s.store_id,
                    describe_keys(&s)
                );
            }
            Err(status) => match call_failed("ImportStoreKey", status) {
                e @ CliError::Unreachable(_) => return Err(e),
                e => {
                    eprintln!("{}: {e}", path.display());
                    failed += 1;
                }
            },
        }
    }
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} of {} copies not imported",
            files.len()
        )));
    }
    Ok(())
}

/// Without `yes`, only says what would be lost (asking StoreStatus for the key's details
/// when the policy allows) and exits 64 with nothing changed.
pub async fn drop_key(
    daemon: &DaemonArgs,
    store_id: &str,
    key_id_hex: &str,
    yes: bool,
) -> Result<(), CliError> {
    let id = hex::decode(key_id_hex.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "KEY_ID_HEX {key_id_hex:?} is not 64 hex digits (a store key id, as `kms-broker status` shows it)"
            ))
        })?;
    let mut c = daemon.connect().await?;
    if !yes {
        let what = describe_previous(&mut c, store_id, &id).await;
        return Err(CliError::Usage(format!(
            "refusing without --yes: dropping {what} of store {store_id} makes every piece of data still encrypted under it unreadable, for good. Nothing was changed. Check that no data needs it (re-encrypted or expired), then run again with --yes"
        )));
    }
    let s = c
        .drop_previous_store_key(pb::DropPreviousStoreKeyRequest {
            store_id: store_id.to_owned(),
            key_id: id.clone(),
        })
        .await
        .map_err(|s| call_failed("DropPreviousStoreKey", s))?
        .into_inner();
    out!(
        "store {}: dropped previous key {}; {}",
        s.store_id,
        key_id(&id),
        describe_keys(&s)
    );
    Ok(())
}

/// "previous key ID (AES-256, created T)", as well as the daemon lets us know it.
async fn describe_previous(c: &mut Client, store_id: &str, id: &[u8]) -> String {
    let shown = key_id(id);
    let status = c
        .store_status(pb::StoreStatusRequest {
            store_id: store_id.to_owned(),
        })
        .await;
    let Ok(status) = status else {
        return format!("key {shown}");
    };
    let stores = status.into_inner().stores;
    let Some(store) = stores.first() else {
        return format!("key {shown}");
    };
    if store.active.as_ref().is_some_and(|a| a.key_id == id) {
        return format!("key {shown} (the ACTIVE key, which the daemon will refuse to drop)");
    }
    match store.previous.iter().find(|p| p.key_id == id) {
        Some(p) => format!(
            "previous key {shown} ({}, created {})",
            p.algorithm,
            time(p.created_at.as_ref())
        ),
        None => format!("key {shown} (not among the store's previous keys)"),
    }
}
