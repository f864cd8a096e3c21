//! What the audit trail and the metrics add per call (BENCHMARKS.md section 3).

use std::path::Path;
use std::time::{Duration, Instant};

use kms_broker::backend::mock::mock;
use kms_broker::server::Server;
use kms_broker_client::pb::key_broker_client::KeyBrokerClient;

use super::{config_with, row, stats, unix, wrap_req, N};

/// What the audit trail and the metrics add to a WrapKey over the Unix socket: four
/// daemons (plain, audit, metrics, both) measured in interleaved rounds, so drift of the
/// machine hits each alike.
pub async fn observability_overhead(dir: &Path) {
    mock("bench-ops");
    let variants = [
        ("WrapKey over unix, no audit, no metrics", ""),
        (
            "WrapKey over unix, audit on",
            "[audit]\npath = \"audit.jsonl\"\n",
        ),
        (
            "WrapKey over unix, metrics on",
            "[metrics]\nlisten = \"127.0.0.1:0\"\n",
        ),
        (
            "WrapKey over unix, audit and metrics on",
            "[audit]\npath = \"audit.jsonl\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        ),
    ];
    let mut running = Vec::new();
    for (i, (_, extra)) in variants.iter().enumerate() {
        let d = dir.join(format!("ops{i}"));
        kms_broker::certs::write_dev_certs(&d.join("certs")).unwrap();
        let server = Server::bind(config_with(&d, "bench-ops", extra))
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let mut c = KeyBrokerClient::new(unix(&d.join("b.sock")).await);
        for _ in 0..200 {
            c.wrap_key(wrap_req()).await.unwrap();
        }
        running.push((c, stop, task));
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for _round in 0..8 {
        for (i, (c, _, _)) in running.iter_mut().enumerate() {
            for _ in 0..N / 4 {
                let t = Instant::now();
                c.wrap_key(wrap_req()).await.unwrap();
                samples[i].push(t.elapsed());
            }
        }
    }
    println!();
    println!("| audit trail and metrics ({} calls each, interleaved) |  p50 (µs) |  p99 (µs) | mean (µs) | vs none          |", N * 2);
    println!("|----------------------------------------------|-----------|-----------|-----------|------------------|");
    let plain = stats(samples[0].clone()).2;
    for (i, v) in samples.into_iter().enumerate() {
        let base = (i > 0).then_some((plain, "none"));
        row(variants[i].0, v, base);
    }
    for (_, stop, task) in running {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
