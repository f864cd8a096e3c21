//! `kms-broker rotate STORE_ID` and `kms-broker rewrap [--store STORE_ID] [--dry-run]`.

use super::connect::{call_failed, DaemonArgs};
use super::{key_id, out, time, CliError};
use kms_broker::pb;

/// One line about a store's keys: the active id and the previous ids, newest first.
pub fn describe_keys(s: &pb::StoreStatus) -> String {
    let active = s.active.as_ref().map_or_else(
        || "none".to_owned(),
        |a| {
            format!(
                "{} ({}, created {})",
                key_id(&a.key_id),
                a.algorithm,
                time(a.created_at.as_ref())
            )
        },
    );
    let previous: Vec<String> = s.previous.iter().map(|p| key_id(&p.key_id)).collect();
    let previous = if previous.is_empty() {
        "none".to_owned()
    } else {
        previous.join(", ")
    };
    format!("active key {active}; previous keys (newest first): {previous}")
}

pub async fn rotate(daemon: &DaemonArgs, store_id: &str) -> Result<(), CliError> {
    let mut c = daemon.connect().await?;
    let status = c
        .rotate_store_key(pb::RotateStoreKeyRequest {
            store_id: store_id.to_owned(),
        })
        .await
        .map_err(|s| call_failed("RotateStoreKey", s))?
        .into_inner();
    out!(
        "store {}: rotated; {}",
        status.store_id,
        describe_keys(&status)
    );
    Ok(())
}

/// What wraps a store's file: key name and per-URI versions.
fn wrapping(s: &pb::StoreStatus) -> String {
    let key = if s.key.is_empty() { "-" } else { &s.key };
    format!("{key} [{}]", s.key_versions.join(", "))
}

/// A dry run is one call. A real run lists the stores with a dry run first, then re-wraps
/// them one call each, so that each store's line is printed as soon as it is done, an
/// interrupted run shows how far it got, and a store the daemon refuses is reported (exit 1
/// at the end) without stopping the others.
pub async fn rewrap(
    daemon: &DaemonArgs,
    store: Option<&str>,
    dry_run: bool,
) -> Result<(), CliError> {
    let mut c = daemon.connect().await?;
    let call = |store_id: &str, dry_run| pb::RewrapRequest {
        store_id: store_id.to_owned(),
        dry_run,
    };
    let plan = c
        .rewrap(call(store.unwrap_or(""), true))
        .await
        .map_err(|s| call_failed("Rewrap", s))?
        .into_inner();
    if dry_run {
        for s in &plan.stores {
            if s.needs_rewrap {
                out!(
                    "store {}: would re-wrap: {} → configured key {} ({})",
                    s.store_id,
                    wrapping(s),
                    s.configured_key,
                    s.detail
                );
            } else {
                out!("store {}: up to date: {}", s.store_id, wrapping(s));
            }
        }
        out!(
            "{} store file(s) would be re-wrapped (dry run: nothing changed)",
            plan.rewrapped
        );
        return Ok(());
    }
    let (mut total, mut failed) = (0, 0);
    for before in &plan.stores {
        if !before.needs_rewrap {
            out!(
                "store {}: up to date: {}",
                before.store_id,
                wrapping(before)
            );
            continue;
        }
        // One store's refusal (its old key revoked, say) does not hold up the others; an
        // unreachable daemon stops the run.
        let done = match c.rewrap(call(&before.store_id, false)).await {
            Ok(r) => r.into_inner(),
            Err(status) => match call_failed("Rewrap", status) {
                e @ CliError::Unreachable(_) => {
                    eprintln!("{total} store file(s) re-wrapped before the daemon was lost");
                    return Err(e);
                }
                e => {
                    eprintln!("store {}: not re-wrapped: {e}", before.store_id);
                    failed += 1;
                    continue;
                }
            },
        };
        total += done.rewrapped;
        for after in &done.stores {
            if done.rewrapped > 0 {
                out!(
                    "store {}: re-wrapped: {} → {}",
                    after.store_id,
                    wrapping(before),
                    wrapping(after)
                );
            } else {
                // Another caller (or the heal) got there first.
                out!("store {}: up to date: {}", after.store_id, wrapping(after));
            }
            if after.needs_rewrap {
                out!(
                    "store {}: still needs a re-wrap: {}",
                    after.store_id,
                    after.detail
                );
            }
        }
    }
    out!("{total} store file(s) re-wrapped");
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} store(s) not re-wrapped (see above)"
        )));
    }
    Ok(())
}
