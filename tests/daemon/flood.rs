//! A connection flood against the real binary under a low open-file limit: thousands of
//! idle and half-open TCP connections (no certificate) must not starve the Unix socket,
//! make the daemon spin, or stay open past the TLS handshake timeout.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kms_broker_client::pb::{GetStoreKeyRequest, KeyState, RevokeStatusRequest, WrapKeyRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::standins::{free_port, ChildGuard};
use crate::common::{allow_me_everything, config_text, must_return, unix_client};

const BIN: &str = env!("CARGO_BIN_EXE_kms-broker");
/// The daemon's open-file limit (soft and hard, so it cannot raise it).
const NOFILE: u32 = 512;
/// Its TCP connection cap: a quarter of NOFILE, as the daemon would clamp it anyway.
const TCP_CAP: usize = 128;
const CONNECTIONS: usize = 2000;

/// CPU-seconds (user + system) the process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon alive");
    // Fields after the command name (which may hold spaces): state is the first, utime
    // and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    ticks as f64 / per_second as f64
}

fn make_state_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("state"))
        .unwrap();
}

/// One attacker connection: connected, and either idle or having sent the first three
/// bytes of a TLS record and then nothing.
async fn attacker(port: u16, half_open: bool) -> Option<TcpStream> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    if half_open {
        s.write_all(&[0x16, 0x03, 0x01]).await.ok()?;
    }
    Some(s)
}

/// Whether the daemon has cut `s` (EOF or reset), waiting at most `limit`.
async fn is_cut(mut s: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A TLS alert before the close: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_flood_under_a_low_descriptor_limit_starves_nothing() {
    // This process holds every attacker connection.
    let own_limit = kms_broker::hardening::raise_open_files().unwrap_or(1024);
    let connections = CONNECTIONS.min(own_limit.saturating_sub(200) as usize);
    assert!(
        connections > 4 * TCP_CAP,
        "this test needs an open-file hard limit above {}",
        4 * TCP_CAP + 200
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    make_state_dir(dir);
    let key = dir.join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let port = free_port();
    let body = format!(
        "[keys.k]\nuris = [\"file://{}\"]\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"1s\"\n[limits]\ntls_handshake_timeout = \"1s\"\nmax_tcp_connections = {TCP_CAP}\n{}",
        key.display(),
        allow_me_everything()
    );
    let text = config_text(dir, &body).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = dir.join("kms.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let daemon = ChildGuard::spawn(
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -n {NOFILE} && exec \"$0\" serve --config \"$1\""
            ))
            .arg(BIN)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log),
    );
    let pid = daemon.0.id();
    let sock = dir.join("broker.sock");
    must_return("the daemon's start", Duration::from_secs(20), async {
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // A store created and held before the flood.
    let mut c = unix_client(&sock).await;
    let req = |create| GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    };
    let held = c
        .get_store_key(req(true))
        .await
        .unwrap()
        .into_inner()
        .active;

    // The flood: half idle, half half-open.
    let streams: Vec<TcpStream> =
        futures_util::future::join_all((0..connections).map(|i| attacker(port, i % 2 == 1)))
            .await
            .into_iter()
            .flatten()
            .collect();
    assert!(
        streams.len() > 4 * TCP_CAP,
        "only {} of {connections} attacker connections were made",
        streams.len()
    );

    // The Unix socket still answers: a new connection, the held store key, the file key
    // opened for a wrap, and the poller (1 s) still seeing the key ACTIVE.
    let before = cpu_seconds(pid);
    let started = std::time::Instant::now();
    must_return(
        "the Unix socket during the flood",
        Duration::from_secs(10),
        async {
            let mut fresh = unix_client(&sock).await;
            let again = fresh.get_store_key(req(false)).await.unwrap().into_inner();
            assert_eq!(again.active, held, "the same held store key");
            fresh
                .wrap_key(WrapKeyRequest {
                    key: "k".into(),
                    plaintext: vec![7; 32],
                    context: Default::default(),
                })
                .await
                .expect("the file key can still be opened");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let status = fresh
                .revoke_status(RevokeStatusRequest { key: "k".into() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                status.keys[0].state,
                KeyState::Active as i32,
                "{}",
                status.keys[0].detail
            );
        },
    )
    .await;
    // Not spinning on EMFILE: a hang guard, far above what handshake timeouts cost.
    let used = cpu_seconds(pid) - before;
    let per_second = used / started.elapsed().as_secs_f64();
    assert!(
        per_second < 0.5,
        "the daemon used {used:.2} CPU-seconds in {:?} of flood",
        started.elapsed()
    );

    // Every attacker connection is cut: the first after the handshake timeout, the rest
    // as they get their turn from the kernel's backlog.
    let total = streams.len();
    let cut = must_return("cutting the flood", Duration::from_secs(120), async {
        futures_util::future::join_all(
            streams
                .into_iter()
                .map(|s| is_cut(s, Duration::from_secs(110))),
        )
        .await
    })
    .await;
    let open = cut.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of {total} attacker connections still open");

    // Cheap refusals stay out of the log: no line per connection.
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(
        log.lines().count() < 50,
        "{} log lines for the flood:\n{}",
        log.lines().count(),
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    drop(daemon);
}
