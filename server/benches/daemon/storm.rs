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
const NAME: &str = "fleet-storm";

pub async fn run(root: &Path) -> Vec<Row> {
    let name = NAME;
    let dir = root.join("storm");
    // `[kms]` with nothing in it: the protection's defaults.
    let text = config_text(&dir, name, NODES, "[kms]\n");
    let d = Daemon::start(&dir, &text).await;
    create_stores(&d.sock, NODES).await;
    d.stop().await;
    let mut rows = storm(&dir, &text, "").await;
    // The same storm with the daemon's own KMS retries off: what is left comes from the
    // nodes' retries and the pre-warm.
    let text = config_text(&dir, name, NODES, "[kms]\nmax_attempts = 1\n");
    rows.extend(storm(&dir, &text, ", daemon KMS retries off (max_attempts = 1)").await);
    // The daemon told the KMS's quota: its token bucket makes the calls wait in the daemon
    // (within the caller's deadline) instead of spending them on throttled answers.
    let text = config_text(
        &dir,
        name,
        NODES,
        "[kms]\nrate_per_second = 100\nburst = 100\ndeadline = \"15s\"\n",
    );
    rows.extend(storm(&dir, &text, ", daemon rate_per_second = quota").await);
    rows
}

async fn storm(dir: &Path, text: &str, variant: &str) -> Vec<Row> {
    let m = mock(NAME);
    let (dir, text) = (dir.to_owned(), text.to_owned());
    m.reset_calls();
    // The KMS was idle: its bucket holds a full second's burst.
    m.set_rate_limit(Some(QUOTA));
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
                "restart storm, {NODES} nodes × distinct store, KMS quota {QUOTA}/s{variant}: errors surfaced to nodes"
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
            measure: format!("restart storm{variant}: total KMS calls (throttled ones included)"),
            target: "≤ 1.2 × 1,000",
            result: format!(
                "{total} ({} decrypt, {} status check, {} encrypt)",
                calls.decrypt, calls.check, calls.encrypt
            ),
            met: total <= budget,
        },
        Row {
            measure: format!("restart storm{variant}: start → last node served"),
            target: "≤ 13 s (1.3 × 10 s)",
            result: format!("{:.1} s", ms(last) / 1e3),
            met: last <= limit && errors.is_empty(),
        },
    ]
}
