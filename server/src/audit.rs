//! The audit trail (`[audit] path`): one JSON line per call, hash-chained.
//!
//! Each record has `seq`, `time`, `op` (the RPC's name), `key` or `store` (the name
//! the caller asked for, through [`caller_text`]), `peer` (`uid`/`gid`/`pid` and `exe`, the
//! caller's executable read from `/proc/PID/exe` where it can be; or `cert`, the
//! certificate identity), `code` (the gRPC code name), `latency_us`, `kms_requests` (the
//! KMS's own request ids, where its SDK exposes them: [`crate::kms_request`]), `prev` and
//! `hash` (`chain.rs` says how they chain). Never key bytes, plaintext, wrapped blobs, context
//! values or KMS URIs. Besides call records, the trail holds `event` records: `start` (the
//! daemon opened the file), `lost` (how many records could not be written), and `reload`
//! / `reload_refused` (SIGHUP; `detail` says what changed or why it was refused).
//!
//! Cost and durability: a call only queues its record ([`Audit::record`], a non-blocking
//! send on a bounded channel); a dedicated thread (`writer.rs`) writes each record with one
//! write(2) (so a daemon crash loses nothing already queued out to the kernel), fsyncs at
//! most every `sync_interval` (default 1s), on rotation and at shutdown (so a machine crash
//! loses at most that interval).
//!
//! When the queue is full (`queue` records, default 65536: the disk has stalled for a long
//! while), a call does NOT wait for the disk: its record is dropped, counted in
//! `kms_broker_audit_records_lost_total`, and the writer puts a `lost` record with the
//! count into the chain as soon as it can write again. A trail with gaps says so, in the
//! trail itself; alert on the metric. The same holds for a record the disk refused.
//!
//! Rotation: when a record would take the file past `max_bytes`, the file is renamed to
//! `path.1` (older ones shift to `path.2` … `path.KEEP`, the oldest dropped) and a new file
//! begins; its first record's `prev` is the old file's last hash, so each file verifies on
//! its own and the files chain together.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::ConfigError;
use crate::log_limit::{caller_text, LogLimit};
use crate::peer::Peer;
use crate::policy::Operation;

mod chain;
mod config;
mod writer;

pub use chain::{verify, VerifyError, VerifySummary, GENESIS};
pub use config::{AuditConfig, RawAudit};

static DROPPED: LogLimit = LogLimit::new(1);

/// Whether `op` names a store (`store` member) rather than a key (`key` member).
fn targets_store(op: Operation) -> bool {
    matches!(
        op,
        Operation::GetStoreKey
            | Operation::RotateStoreKey
            | Operation::StoreStatus
            | Operation::Rewrap
            | Operation::ImportStoreKey
            | Operation::DropPreviousStoreKey
    )
}

/// One finished call, as the writer needs it.
#[derive(Debug)]
struct Entry {
    time: SystemTime,
    /// The RPC's name.
    rpc: &'static str,
    /// Whether the target is a store id (else a key name).
    store: bool,
    target: String,
    peer: Option<Peer>,
    code: tonic::Code,
    latency: Duration,
    /// The KMS's own request ids ([`crate::kms_request`]).
    kms_requests: Vec<String>,
}

#[derive(Debug)]
enum Msg {
    Call(Entry),
    /// A daemon event other than a call (a config reload), with a line of detail.
    Event {
        name: &'static str,
        detail: String,
    },
    Stop,
}

/// Records not written: `pending` until a `lost` marker records them, `total` for metrics.
#[derive(Debug, Default)]
pub struct Lost {
    pending: AtomicU64,
    total: AtomicU64,
}

impl Lost {
    fn add(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Every record lost since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The handle calls record through; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: SyncSender<Msg>,
    lost: Arc<Lost>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Audit {
    /// Opens the trail (continuing its chain) and starts the writer thread. A path that
    /// cannot be opened is a config error (exit 64): the daemon does not serve unaudited
    /// when asked to audit.
    pub fn open(config: AuditConfig, file: &Path) -> Result<Audit, ConfigError> {
        let path = config.path.clone();
        let queue = config.queue;
        let w = writer::Writer::open(config).map_err(|e| ConfigError {
            file: file.to_owned(),
            field: "audit.path".into(),
            problem: format!("cannot open {} for appending: {e}", path.display()),
            fix: "create its folder and make it writable by the daemon's user (the file is created 0600)".into(),
        })?;
        let (tx, rx) = sync_channel(queue);
        let lost = Arc::new(Lost::default());
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn({
                let lost = lost.clone();
                move || w.run(rx, lost)
            })
            .map_err(|e| ConfigError {
                file: file.to_owned(),
                field: "audit.path".into(),
                problem: format!("cannot start the audit writer: {e}"),
                fix: "raise the process or thread limit".into(),
            })?;
        Ok(Audit {
            tx,
            lost,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queues one call's record. Never blocks: a full queue counts the record as lost.
    pub fn record(&self, call: crate::observe::Call<'_>) {
        let entry = Entry {
            time: SystemTime::now(),
            rpc: call.rpc,
            store: targets_store(call.op),
            target: caller_text(call.target),
            peer: call.peer.cloned(),
            code: call.code,
            latency: call.latency,
            kms_requests: call.kms_requests,
        };
        if let Err(e) = self.tx.try_send(Msg::Call(entry)) {
            self.lost.add(1);
            if let Some(suppressed) = DROPPED.admit() {
                let why = match e {
                    TrySendError::Full(_) => "the writer's queue is full (a stalled disk?)",
                    TrySendError::Disconnected(_) => "the writer has stopped",
                };
                tracing::error!(
                    why,
                    suppressed,
                    "audit trail: a record was lost; a \"lost\" marker will count it"
                );
            }
        }
    }

    /// Records a daemon event (`reload`, `reload_refused`) with its detail: names and
    /// reasons, never secrets. Never blocks, as [`Audit::record`].
    pub fn event(&self, name: &'static str, detail: String) {
        if self.tx.try_send(Msg::Event { name, detail }).is_err() {
            self.lost.add(1);
        }
    }

    /// The loss counter, for metrics.
    pub fn lost_handle(&self) -> Arc<Lost> {
        self.lost.clone()
    }

    /// Writes what is queued, fsyncs, and stops the writer (at shutdown, after the drain).
    pub fn close(&self) {
        // A blocking send: the queue empties as the writer works.
        let _ = self.tx.send(Msg::Stop);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(dir: &Path, max_bytes: u64) -> AuditConfig {
        AuditConfig {
            path: dir.join("audit.jsonl"),
            max_bytes,
            keep: 3,
            queue: 1024,
            sync_interval: Duration::from_secs(1),
        }
    }

    fn call(a: &Audit, n: usize) {
        let peer = Peer::Unix {
            uid: 1,
            gid: 2,
            pid: Some(std::process::id() as i32),
        };
        for _ in 0..n {
            a.record(crate::observe::Call {
                rpc: "WrapKey",
                op: Operation::WrapKey,
                target: "primary",
                peer: Some(&peer),
                code: tonic::Code::Ok,
                latency: Duration::from_micros(90),
                kms_requests: vec!["req-1".into()],
            });
        }
    }

    #[test]
    fn records_chain_across_restarts_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        // A record's size depends on the test binary's path (`exe`), so the first run has
        // room enough never to rotate, wherever the checkout lives.
        let roomy = config(dir.path(), 1 << 20);
        let a = Audit::open(roomy.clone(), Path::new("t.toml")).unwrap();
        call(&a, 10);
        a.close();
        let first = verify(&roomy.path).unwrap();
        assert_eq!(first.records, 11, "a start record and ten calls");
        assert_eq!(first.first_prev.as_deref(), Some(GENESIS));
        assert!(!writer_rotated(&roomy.path, 1).exists());

        // A restart continues the chain; enough records to rotate more than `keep` times.
        let c = config(dir.path(), 4096);
        let a = Audit::open(c.clone(), Path::new("t.toml")).unwrap();
        call(&a, 200);
        a.close();
        let current = verify(&c.path).unwrap();
        // Walk back: each rotated file ends where the next one begins.
        let (mut next_prev, mut next_seq) = (
            current.first_prev.clone().unwrap(),
            current.first_seq.unwrap(),
        );
        for n in 1..=3 {
            let older = verify(&writer_rotated(&c.path, n)).unwrap();
            assert_eq!(
                older.last_hash.as_deref(),
                Some(next_prev.as_str()),
                "path.{n} chains to the file after it"
            );
            assert_eq!(older.last_seq.unwrap() + 1, next_seq);
            (next_prev, next_seq) = (older.first_prev.unwrap(), older.first_seq.unwrap());
        }
        assert!(
            !writer_rotated(&c.path, 4).exists(),
            "only `keep` rotated files"
        );
        assert_eq!(
            current.last_seq,
            Some(211 + 1),
            "seq runs on across the restart"
        );
        let text = std::fs::read_to_string(&c.path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(line["op"], "WrapKey");
        assert_eq!(line["key"], "primary");
        assert_eq!(line["code"], "OK");
        assert_eq!(line["peer"]["uid"], 1);
        assert!(
            line["peer"]["exe"]
                .as_str()
                .is_some_and(|e| e.starts_with('/')),
            "{line}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&c.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    fn writer_rotated(path: &Path, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.{n}", path.display()))
    }

    #[test]
    fn a_torn_tail_is_cut_and_noted() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 1 << 20);
        let a = Audit::open(c.clone(), Path::new("t.toml")).unwrap();
        call(&a, 2);
        a.close();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&c.path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":4,\"ti").unwrap();
        let a = Audit::open(c.clone(), Path::new("t.toml")).unwrap();
        a.close();
        assert_eq!(verify(&c.path).unwrap().records, 4);
        assert!(std::fs::read_to_string(&c.path)
            .unwrap()
            .contains("\"torn_bytes\":12"));
    }

    #[test]
    fn a_full_queue_loses_records_into_a_marker_not_silently() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = sync_channel(1);
        let lost = Arc::new(Lost::default());
        let a = Audit {
            tx,
            lost: lost.clone(),
            thread: Arc::new(Mutex::new(None)),
        };
        call(&a, 5);
        assert_eq!(lost.total(), 4, "one queued, four lost");
        // Now let a writer drain it: the lost marker enters the chain before the next record.
        let w = writer::Writer::open(config(dir.path(), 1 << 20)).unwrap();
        let t = std::thread::spawn({
            let lost = lost.clone();
            move || w.run(rx, lost)
        });
        *a.thread.lock().unwrap() = Some(t);
        a.close();
        let s = verify(&dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(s.lost, 4);
        assert_eq!(s.records, 3, "start, lost marker, the queued call");
    }

    #[test]
    fn config_is_checked() {
        let raw = |t: &str| toml::from_str::<RawAudit>(t);
        assert!(raw("path = \"a\"\nbogus = 1").is_err());
        let c = AuditConfig::from_raw(
            raw("path = \"a.jsonl\"").unwrap(),
            Path::new("/etc/kb"),
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(c.path, Path::new("/etc/kb/a.jsonl"));
        let e = AuditConfig::from_raw(
            raw("path = \"a\"\nmax_bytes = 10").unwrap(),
            Path::new("/"),
            Path::new("f"),
        )
        .unwrap_err();
        assert_eq!(e.field, "audit.max_bytes");
    }
}
