//! Row 6: 100 store keys on disk, a 25 ms KMS; time from the daemon's start until every
//! one is held (GetStoreKey answers all 100 with no further KMS call).

use std::path::Path;
use std::time::{Duration, Instant};

use kms_broker::backend::mock::mock;
use kms_broker_client::pb::key_broker_client::KeyBrokerClient;
use kms_broker_client::pb::GetStoreKeyRequest;

use super::harness::{config_text, create_stores, ms, unix, wait_until, Daemon, Row};

const STORES: usize = 100;

pub async fn run(root: &Path) -> Vec<Row> {
    let name = "fleet-prewarm";
    let m = mock(name);
    let dir = root.join("prewarm");
    let text = config_text(&dir, name, STORES, "");
    let d = Daemon::start(&dir, &text).await;
    create_stores(&d.sock, STORES).await;
    d.stop().await;

    m.set_latency(Duration::from_millis(25));
    m.reset_calls();
    let t0 = Instant::now();
    let d = Daemon::start(&dir, &text).await;
    // Every pre-warm decrypt has reached the KMS; then ask for all 100 at once: each
    // answer is either held already or joins the pre-warm's call in flight.
    assert!(
        wait_until(Duration::from_secs(30), || m.calls().decrypt
            >= STORES as u64)
        .await
    );
    let started = t0.elapsed();
    let ch = unix(&d.sock).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STORES {
        let mut c = KeyBrokerClient::new(ch.clone());
        tasks.spawn(async move {
            c.get_store_key(GetStoreKeyRequest {
                store_id: format!("s{i}"),
                create: false,
            })
            .await
            .is_ok()
        });
    }
    let ok = tasks.join_all().await.into_iter().filter(|ok| *ok).count();
    let held = t0.elapsed();
    let calls = m.calls();
    m.set_latency(Duration::ZERO);
    d.stop().await;
    vec![Row {
        measure: format!("{STORES} store keys pre-warmed at 25 ms KMS latency: start → all held"),
        target: "≤ 1 s",
        result: format!(
            "{:.0} ms ({ok}/{STORES} served; last pre-warm decrypt sent at {:.0} ms; {} decrypts + {} status checks in all)",
            ms(held),
            ms(started),
            calls.decrypt,
            calls.check
        ),
        met: held <= Duration::from_secs(1) && ok == STORES && calls.decrypt == STORES as u64,
    }]
}
