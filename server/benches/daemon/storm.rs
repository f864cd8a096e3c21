//! Row 3: a fleet restart storm. 1,000 stores exist; the daemon restarts against a KMS
//! with a 100 calls/s quota that throttles above it, and 1,000 nodes each ask for their
//! own store key at once, through the client crate (which retries `Unavailable` with
//! jittered backoff, 50 ms doubling to 2 s, for up to 30 s). Pre-warm runs too.

use std::path::Path;
use std::time::{Duration, Instant};

use kms_broker::backend::mock::mock;
use kms_broker_client::{Client, ClientOptions};

use super::harness::{config_text, create_stores, ms, Daemon, Row};

const NODES: usize = 1000;
const QUOTA: u32 = 100;

pub async fn run(root: &Path) -> Vec<Row> {
    let name = "fleet-storm";
    let m = mock(name);
    let dir = root.join("storm");
    let text = config_text(&dir, name, NODES, "");
    let d = Daemon::start(&dir, &text).await;
    create_stores(&d.sock, NODES).await;
    d.stop().await;

    m.reset_calls();
    m.set_rate_limit(Some(QUOTA));
    // Drain the bucket's burst first? No: a KMS that was idle has its full second of
    // burst, as here.
    let t0 = Instant::now();
    let d = Daemon::start(&dir, &text).await;
    let endpoint = format!("unix://{}", d.sock.display());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..NODES {
        let endpoint = endpoint.clone();
        tasks.spawn(async move {
            // One client (one connection) per node, as 1,000 node processes would have.
            let node = Client::connect(&endpoint, ClientOptions::default())
                .await
                .unwrap();
            let r = node.get_store_key(&format!("s{i}"), false).await;
            (r.map(|_| ()).map_err(|e| e.to_string()), t0.elapsed())
        });
    }
    let mut errors = Vec::new();
    let mut last = Duration::ZERO;
    for (r, took) in tasks.join_all().await {
        last = last.max(took);
        if let Err(e) = r {
            errors.push(e);
        }
    }
    let calls = m.calls();
    m.set_rate_limit(None);
    d.stop().await;
    let total = calls.decrypt + calls.encrypt + calls.check;
    let budget = (NODES as f64 * 1.2) as u64;
    // The quota lets 1,000 decrypts through in 10 s (less the first second's burst).
    let limit = Duration::from_secs_f64(1.3 * NODES as f64 / f64::from(QUOTA));
    let example = errors.first().cloned().unwrap_or_default();
    vec![
        Row {
            measure: format!(
                "restart storm, {NODES} nodes × distinct store, KMS quota {QUOTA}/s: errors surfaced to nodes"
            ),
            target: "0",
            result: if errors.is_empty() {
                "0".into()
            } else {
                format!("{} (e.g. `{}`)", errors.len(), example.chars().take(160).collect::<String>())
            },
            met: errors.is_empty(),
        },
        Row {
            measure: "restart storm: total KMS calls (throttled ones included)".into(),
            target: "≤ 1.2 × 1,000",
            result: format!(
                "{total} ({} decrypt, {} status check, {} encrypt)",
                calls.decrypt, calls.check, calls.encrypt
            ),
            met: total <= budget,
        },
        Row {
            measure: "restart storm: start → last node served".into(),
            target: "≤ 13 s (1.3 × 10 s)",
            result: format!("{:.1} s", ms(last) / 1e3),
            met: last <= limit && errors.is_empty(),
        },
    ]
}
