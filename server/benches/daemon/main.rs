//! Per-call overhead, coalescing and start-up of the real daemon (both transports), with the
//! mock KMS so the KMS itself costs (almost) nothing. Prints a table; BENCHMARKS.md records
//! it.
//!
//! Two baselines, measured in the same run:
//! - the same KMS work called in-process through the backend trait: the ratio is all the
//!   daemon adds per call (gRPC, policy, envelope, state checks, logging);
//! - `grpc.health.v1.Health/Check` on the same transport and connection: the gRPC floor,
//!   so the ratio is what the daemon's own work adds over an empty call.
//!
//! Run (without the cloud SDKs, which the mock path never touches, so it builds in minutes):
//! `cargo bench -p kms-broker --no-default-features --features mock-kms --bench daemon`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use kms_broker::backend::mock::mock;
use kms_broker::backend::{Aad, KmsBackend};
use kms_broker::config::Config;
use kms_broker::secret::SecretBytes;
use kms_broker::server::Server;
use kms_broker_client::pb::key_broker_client::KeyBrokerClient;
use kms_broker_client::pb::{GetStoreKeyRequest, UnwrapKeyRequest, WrapKeyRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod coalesce;
mod echo;
mod fleet;
mod harness;
mod memory;
mod observability;
mod prewarm;
mod revoke;
mod rss;
mod storm;

const N: usize = 2000;

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (p(0.5), p(0.99), v.iter().sum::<Duration>() / v.len() as u32)
}

/// One table row; `base` is a baseline's mean and its short name, for the ratio column.
fn row(name: &str, v: Vec<Duration>, base: Option<(Duration, &str)>) -> Duration {
    let (p50, p99, mean) = stats(v);
    let ratio = base
        .map(|(b, what)| format!("{:.1}x {what}", mean.as_secs_f64() / b.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {name:<44} | {:>9.1} | {:>9.1} | {:>9.1} | {ratio:<16} |",
        us(p50),
        us(p99),
        us(mean)
    );
    mean
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Creates a state dir (0700), as an operator would: the daemon never creates it.
fn make_state_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
}

fn config(dir: &Path, mock_name: &str) -> Config {
    config_with(dir, mock_name, "")
}

/// The bench config (the fleet rows' harness, with one store `s`) plus `extra` sections
/// (`[audit]`, `[metrics]`).
fn config_with(dir: &Path, mock_name: &str, extra: &str) -> Config {
    let extra = format!("[stores.s]\nkey = \"k\"\n{extra}");
    harness::parse(dir, &harness::config_text(dir, mock_name, 0, &extra))
}

async fn unix(path: &Path) -> Channel {
    try_unix(path).await.unwrap()
}

async fn try_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
}

async fn tls(dir: &Path, port: u16) -> Channel {
    let r = |f: &str| std::fs::read(dir.join("certs").join(f)).unwrap();
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(r("ca.pem")))
        .identity(Identity::from_pem(r("client.pem"), r("client-key.pem")))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(cfg)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Starts `kms-broker serve` ten times with a file key and times each start until a
/// RevokeStatus on the Unix socket is answered. Returns the median and the slowest.
async fn process_startup(dir: &Path) -> (Duration, Duration) {
    let key = dir.join("startup.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let sock = dir.join("startup.sock");
    let config = dir.join("startup.toml");
    make_state_dir(&dir.join("startup-state"));
    std::fs::write(
        &config,
        format!(
            "[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n[keys.k]\nuris = [\"file://{}\"]\n\
             [[policy]]\npeer = \"uid:{uid}\"\nallow = [\"RevokeStatus\"]\n",
            sock.display(),
            dir.join("startup-state").display(),
            key.display()
        ),
    )
    .unwrap();
    let mut times = Vec::new();
    for _ in 0..10 {
        let _ = std::fs::remove_file(&sock);
        let t = Instant::now();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kms-broker"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("KMS_BROKER_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        loop {
            if sock.exists() {
                if let Ok(ch) = try_unix(&sock).await {
                    let mut c = KeyBrokerClient::new(ch);
                    if c.revoke_status(kms_broker_client::pb::RevokeStatusRequest::default())
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the daemon did not start"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(t.elapsed());
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

fn wrap_req() -> WrapKeyRequest {
    WrapKeyRequest {
        key: "k".into(),
        plaintext: vec![7u8; 32],
        context: HashMap::from([("backup".into(), "b1".into())]),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Logging on, as in production, but to nowhere: its formatting cost is part of the call.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(if std::env::var_os("BENCH_NO_LOG").is_some() {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        })
        .init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    if std::env::var_os("BENCH_MEMORY_ONLY").is_some() {
        memory::run();
        return;
    }
    // BENCH_FLEET_ONLY=1 runs only issue 8's table (BENCH_FLEET_ROWS=1,3 picks rows).
    if std::env::var_os("BENCH_FLEET_ONLY").is_some() {
        fleet::run(dir).await;
        return;
    }

    println!("| operation ({N} sequential calls unless noted)  |  p50 (µs) |  p99 (µs) | mean (µs) | vs baseline      |");
    println!("|----------------------------------------------|-----------|-----------|-----------|------------------|");

    // Baseline: the KMS work alone, in-process.
    mock("bench");
    let backend = kms_broker::backend::mock::MockBackend::named("bench");
    let aad = Aad::new("k", BTreeMap::from([("backup".into(), "b1".into())]));
    let pt = SecretBytes::new(vec![7u8; 32]);
    let mut v = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let ct = backend.encrypt(&pt, &aad).await.unwrap();
        let _ = backend
            .decrypt(&ct.bytes, &ct.key_version, &aad)
            .await
            .unwrap();
        v.push(t.elapsed());
    }
    let base_pair = stats(v.clone()).2;
    row("baseline: mock encrypt+decrypt, in-process", v, None);

    // Start-up: bind (config → backends → listeners) until the first call is answered.
    let t = Instant::now();
    let server = Server::bind(config(dir, "bench")).await.unwrap();
    let port = server.tcp_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let unix_channel = unix(&dir.join("b.sock")).await;
    let mut c = KeyBrokerClient::new(unix_channel.clone());
    c.revoke_status(kms_broker_client::pb::RevokeStatusRequest::default())
        .await
        .unwrap();
    let startup = t.elapsed();

    for (label, channel) in [("unix", unix_channel), ("mTLS", tls(dir, port).await)] {
        let mut c = KeyBrokerClient::new(channel.clone());
        // The gRPC floor: an empty call on the same connection.
        let mut health = HealthClient::new(channel);
        let mut v = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            health.check(HealthCheckRequest::default()).await.unwrap();
            v.push(t.elapsed());
        }
        let floor = row(&format!("baseline: Health/Check over {label}"), v, None);
        let mut wraps = Vec::with_capacity(N);
        let mut pair = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            let w = c.wrap_key(wrap_req()).await.unwrap().into_inner();
            let t1 = t.elapsed();
            c.unwrap_key(UnwrapKeyRequest {
                wrapped: w.wrapped,
                context: HashMap::from([("backup".into(), "b1".into())]),
            })
            .await
            .unwrap();
            wraps.push(t1);
            pair.push(t.elapsed());
        }
        row(
            &format!("WrapKey over {label}"),
            wraps,
            Some((floor, "gRPC floor")),
        );
        let both = row(
            &format!("WrapKey+UnwrapKey over {label}"),
            pair,
            Some((base_pair, "in-process")),
        );
        println!(
            "| {:<44} | {:>9} | {:>9} | {:>9} | {:<16} |",
            "",
            "",
            "",
            "",
            format!(
                "{:.1}x 2 gRPC floors",
                both.as_secs_f64() / (2.0 * floor.as_secs_f64())
            )
        );
    }

    c.get_store_key(GetStoreKeyRequest {
        store_id: "s".into(),
        create: true,
    })
    .await
    .unwrap();
    let mut v = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        c.get_store_key(GetStoreKeyRequest {
            store_id: "s".into(),
            create: false,
        })
        .await
        .unwrap();
        v.push(t.elapsed());
    }
    row("GetStoreKey, held (no KMS call), unix", v, None);

    // Throughput with 16 concurrent callers.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..N / 16 {
                c.wrap_key(wrap_req()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_sec = (N / 16 * 16) as f64 / t.elapsed().as_secs_f64();
    println!();
    println!("WrapKey throughput, 16 concurrent callers on the Unix socket: {per_sec:.0} calls/s");
    println!(
        "Start-up in-process (bind + backends + first answered call): {:.1} ms",
        startup.as_secs_f64() * 1e3
    );

    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // Start-up of the real binary: exec → config → listeners → first answered call.
    let (p50, max) = process_startup(dir).await;
    println!(
        "Start-up of the kms-broker process (exec to first answered call, 10 starts): p50 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );

    observability::observability_overhead(dir).await;

    // Coalescing: 64 node processes ask for a store key the daemon does not hold yet, while
    // each KMS call takes 50 ms.
    let m = mock("bench-coalesce");
    let tmp2 = tempfile::tempdir().unwrap();
    let dir2 = tmp2.path();
    kms_broker::certs::write_dev_certs(&dir2.join("certs")).unwrap();
    for round in 0..2 {
        let server = Server::bind(config(dir2, "bench-coalesce")).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let c = KeyBrokerClient::new(unix(&dir2.join("b.sock")).await);
        if round == 0 {
            let mut c = c.clone();
            c.get_store_key(GetStoreKeyRequest {
                store_id: "s".into(),
                create: true,
            })
            .await
            .unwrap();
        } else {
            m.set_latency(Duration::from_millis(50));
            m.reset_calls();
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let mut c = c.clone();
                tasks.push(tokio::spawn(async move {
                    c.get_store_key(GetStoreKeyRequest {
                        store_id: "s".into(),
                        create: false,
                    })
                    .await
                    .unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            println!(
                "Coalescing: 64 concurrent first GetStoreKey calls, 50 ms KMS: {} KMS decrypt call(s), all answered in {:.1} ms",
                m.calls().decrypt,
                t.elapsed().as_secs_f64() * 1e3
            );
            m.set_latency(Duration::ZERO);
        }
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }

    fleet::run(dir).await;
}
