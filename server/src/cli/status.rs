//! `kms-broker status [--json]`: every key's state (RevokeStatus) and every store's
//! (StoreStatus) that the caller may see, as a table or as one JSON document whose field
//! names are stable (README "Operator's runbook").

use serde::Serialize;

use super::connect::{call_failed, DaemonArgs};
use super::{key_id, out, state_name, time, CliError};
use kms_broker::pb;

#[derive(Serialize, Debug)]
pub struct StatusJson {
    pub keys: Vec<KeyJson>,
    pub stores: Vec<StoreJson>,
}

#[derive(Serialize, Debug)]
pub struct KeyJson {
    pub key: String,
    /// `ACTIVE`, `DISABLED`, `REVOKED`, `DESTROYED` or `UNREACHABLE`: the best URI's.
    pub state: String,
    pub checked_at: Option<String>,
    pub detail: String,
    pub uris: Vec<UriJson>,
}

#[derive(Serialize, Debug)]
pub struct UriJson {
    /// Secret parameters redacted by the daemon.
    pub uri: String,
    pub state: String,
    pub checked_at: Option<String>,
    pub detail: String,
}

#[derive(Serialize, Debug)]
pub struct StoreJson {
    pub store: String,
    /// The key that wraps the store's file now; empty while the store has no key file.
    pub key: String,
    pub configured_key: String,
    pub key_versions: Vec<String>,
    pub needs_rewrap: bool,
    pub detail: String,
    pub active: Option<StoreKeyJson>,
    /// Newest first.
    pub previous: Vec<StoreKeyJson>,
    pub previous_count: usize,
}

#[derive(Serialize, Debug)]
pub struct StoreKeyJson {
    /// Lower-case hex, as `drop-key` takes it.
    pub key_id: String,
    pub algorithm: String,
    pub created_at: Option<String>,
}

fn store_key_json(k: &pb::StoreKeyInfo) -> StoreKeyJson {
    StoreKeyJson {
        key_id: key_id(&k.key_id),
        algorithm: k.algorithm.clone(),
        created_at: k.created_at.as_ref().map(ToString::to_string),
    }
}

pub fn store_json(s: &pb::StoreStatus) -> StoreJson {
    StoreJson {
        store: s.store_id.clone(),
        key: s.key.clone(),
        configured_key: s.configured_key.clone(),
        key_versions: s.key_versions.clone(),
        needs_rewrap: s.needs_rewrap,
        detail: s.detail.clone(),
        active: s.active.as_ref().map(store_key_json),
        previous: s.previous.iter().map(store_key_json).collect(),
        previous_count: s.previous.len(),
    }
}

fn key_json(k: &pb::KeyStatus) -> KeyJson {
    KeyJson {
        key: k.key.clone(),
        state: state_name(k.state),
        checked_at: k.checked_at.as_ref().map(ToString::to_string),
        detail: k.detail.clone(),
        uris: k
            .uris
            .iter()
            .map(|u| UriJson {
                uri: u.uri.clone(),
                state: state_name(u.state),
                checked_at: u.checked_at.as_ref().map(ToString::to_string),
                detail: u.detail.clone(),
            })
            .collect(),
    }
}

pub async fn run(daemon: &DaemonArgs, json: bool) -> Result<(), CliError> {
    let mut c = daemon.connect().await?;
    let keys = c
        .revoke_status(pb::RevokeStatusRequest::default())
        .await
        .map_err(|s| call_failed("RevokeStatus", s))?
        .into_inner()
        .keys;
    let stores = c
        .store_status(pb::StoreStatusRequest::default())
        .await
        .map_err(|s| call_failed("StoreStatus", s))?
        .into_inner()
        .stores;
    if json {
        let doc = StatusJson {
            keys: keys.iter().map(key_json).collect(),
            stores: stores.iter().map(store_json).collect(),
        };
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| CliError::Failed(format!("cannot print JSON: {e}")))?;
        out!("{text}");
    } else {
        out!("{}", table(&keys, &stores).trim_end_matches('\n'));
    }
    Ok(())
}

/// Keys (each followed by its URIs, indented), then stores.
fn table(keys: &[pb::KeyStatus], stores: &[pb::StoreStatus]) -> String {
    let mut rows = vec![row(["KEY / URI", "STATE", "CHECKED AT", "DETAIL"])];
    for k in keys {
        rows.push(row([
            &k.key,
            &state_name(k.state),
            &time(k.checked_at.as_ref()),
            &k.detail,
        ]));
        for u in &k.uris {
            rows.push(row([
                &format!("  {}", u.uri),
                &state_name(u.state),
                &time(u.checked_at.as_ref()),
                &u.detail,
            ]));
        }
    }
    let mut out = columns(&rows);
    out.push('\n');
    let mut rows = vec![row([
        "STORE",
        "KEY",
        "CONFIGURED",
        "NEEDS REWRAP",
        "ACTIVE KEY ID",
        "PREVIOUS",
        "KEY VERSIONS",
        "DETAIL",
    ])];
    for s in stores {
        rows.push(row([
            &s.store_id,
            if s.key.is_empty() { "-" } else { &s.key },
            &s.configured_key,
            if s.needs_rewrap { "yes" } else { "no" },
            &s.active
                .as_ref()
                .map_or_else(|| "-".to_owned(), |a| key_id(&a.key_id)),
            &s.previous.len().to_string(),
            &s.key_versions.join(","),
            &s.detail,
        ]));
    }
    out.push_str(&columns(&rows));
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_trim() {
        let rows = vec![row(["a", "bb", "c"]), row(["ccc", "d", ""])];
        assert_eq!(columns(&rows), "a    bb  c\nccc  d\n");
    }
}
