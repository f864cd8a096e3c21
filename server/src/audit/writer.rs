//! The audit trail's writer: one dedicated thread owns the file, so no call ever waits for
//! the disk. It seals each record into the chain, writes it with one write(2) (flushed per
//! record: a crash of the daemon loses nothing already written), fsyncs at most once per
//! `sync_interval` and on rotation and shutdown, and rotates by size.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::chain::{self, GENESIS};
use super::{AuditConfig, Entry, Lost, Msg};
use crate::log_limit::LogLimit;

static WRITE_ERRORS: LogLimit = LogLimit::new(1);

/// How long the writer lets records gather while calls keep coming.
const BATCH_NAP: Duration = Duration::from_millis(1);
/// How long a caller's executable path is reused for the same pid: `/proc/PID/exe` is a
/// path walk per record otherwise. A pid reused within this window would show the previous
/// process's executable; the `pid` itself is always the kernel's.
const EXE_TTL: Duration = Duration::from_secs(1);

/// The open file and where the chain stands.
#[derive(Debug)]
pub(super) struct Writer {
    config: AuditConfig,
    file: File,
    size: u64,
    prev: String,
    seq: u64,
    dirty: bool,
    exe_cache: HashMap<i32, (Instant, Option<String>)>,
}

/// The JSON shape of a record: members in this order, `prev` last (the seal appends `hash`).
#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<PeerRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    kms_requests: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    torn_bytes: Option<u64>,
    prev: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PeerRecord<'a> {
    Unix {
        uid: u32,
        gid: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        exe: Option<String>,
    },
    Cert {
        cert: &'a str,
    },
    Unidentified {
        unidentified: bool,
    },
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The caller's executable, best effort: the process may be gone, or not ours to read.
fn exe_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The last complete line of `file` (at most 64 KiB back) and how many bytes follow it
/// without a newline (a torn write from a crash).
fn tail(file: &mut File) -> std::io::Result<(Option<String>, u64)> {
    let len = file.seek(SeekFrom::End(0))?;
    let from = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = (buf.len() - complete) as u64;
    let last = buf[..complete.saturating_sub(1)]
        .rsplit(|b| *b == b'\n')
        .next()
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned());
    Ok((last, torn))
}

impl Writer {
    /// Opens (or creates, 0600) the trail and finds where its chain stands: the last record
    /// of the file, or of `path.1` if a rotation was cut short. A torn last line (a crash
    /// mid-write) is cut off and its size noted in the start record.
    pub(super) fn open(config: AuditConfig) -> std::io::Result<Writer> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&config.path)?;
        let (mut last, torn) = tail(&mut file)?;
        let mut size = file.metadata()?.len();
        if torn > 0 {
            size -= torn;
            file.set_len(size)?;
        }
        if last.is_none() {
            if let Ok(mut older) = File::open(rotated(&config.path, 1)) {
                last = tail(&mut older)?.0;
            }
        }
        let (prev, seq) = match &last {
            Some(line) => {
                let seq = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .unwrap_or(0);
                let prev = chain::hash_of(line).unwrap_or(GENESIS).to_owned();
                (prev, seq)
            }
            None => (GENESIS.to_owned(), 0),
        };
        let mut w = Writer {
            config,
            file,
            size,
            prev,
            seq,
            dirty: false,
            exe_cache: HashMap::new(),
        };
        w.event("start", None, None, (torn > 0).then_some(torn))?;
        w.sync();
        Ok(w)
    }

    fn event(
        &mut self,
        event: &str,
        detail: Option<&str>,
        lost: Option<u64>,
        torn: Option<u64>,
    ) -> std::io::Result<()> {
        let record = Record {
            seq: self.seq + 1,
            time: rfc3339(SystemTime::now()),
            event: Some(event),
            detail,
            op: None,
            key: None,
            store: None,
            peer: None,
            code: None,
            latency_us: None,
            kms_requests: &[],
            lost,
            torn_bytes: torn,
            prev: &self.prev,
        };
        let unsealed = serde_json::to_string(&record).map_err(std::io::Error::other)?;
        self.append(&unsealed)
    }

    fn exe(&mut self, pid: i32) -> Option<String> {
        let now = Instant::now();
        if let Some((at, exe)) = self.exe_cache.get(&pid) {
            if now.duration_since(*at) < EXE_TTL {
                return exe.clone();
            }
        }
        if self.exe_cache.len() >= 4096 {
            self.exe_cache
                .retain(|_, (at, _)| now.duration_since(*at) < EXE_TTL);
        }
        let exe = exe_of(pid);
        self.exe_cache.insert(pid, (now, exe.clone()));
        exe
    }

    fn call(&mut self, e: &Entry) -> std::io::Result<()> {
        let peer = match &e.peer {
            Some(crate::peer::Peer::Unix { uid, gid, pid }) => PeerRecord::Unix {
                uid: *uid,
                gid: *gid,
                pid: *pid,
                exe: pid.and_then(|p| self.exe(p)),
            },
            Some(crate::peer::Peer::Tls { identity }) => PeerRecord::Cert { cert: identity },
            None => PeerRecord::Unidentified { unidentified: true },
        };
        let (key, store) = if e.store {
            (None, Some(e.target.as_str()))
        } else {
            (Some(e.target.as_str()), None)
        };
        let record = Record {
            seq: self.seq + 1,
            time: rfc3339(e.time),
            event: None,
            detail: None,
            op: Some(e.rpc),
            key,
            store,
            peer: Some(peer),
            code: Some(crate::observe::code_name(e.code)),
            latency_us: Some(u64::try_from(e.latency.as_micros()).unwrap_or(u64::MAX)),
            kms_requests: &e.kms_requests,
            lost: None,
            torn_bytes: None,
            prev: &self.prev,
        };
        let unsealed = serde_json::to_string(&record).map_err(std::io::Error::other)?;
        self.append(&unsealed)
    }

    /// Seals and writes one record; rotates first if it would pass `max_bytes`. On a failed
    /// write, cuts off whatever part reached the file, so the chain stays whole.
    fn append(&mut self, unsealed: &str) -> std::io::Result<()> {
        let (mut line, hash) = chain::seal(unsealed);
        line.push('\n');
        if self.size > 0 && self.size + line.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += line.len() as u64;
        self.prev = hash;
        self.seq += 1;
        self.dirty = true;
        Ok(())
    }

    /// `path` → `path.1` → … → `path.KEEP` (the oldest beyond is replaced), then a new
    /// `path`, whose first record's `prev` is the old file's last hash.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        let path = &self.config.path;
        for n in (1..self.config.keep).rev() {
            let from = rotated(path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(path, n + 1))?;
            }
        }
        std::fs::rename(path, rotated(path, 1))?;
        self.file = open_append(path)?;
        self.size = 0;
        sync_dir(path);
        Ok(())
    }

    fn sync(&mut self) {
        if self.dirty {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(path = %self.config.path.display(), error = %e, "audit trail: fsync failed");
            }
            self.dirty = false;
        }
    }

    /// Writes the "lost" marker for records dropped since the last one, if any.
    fn note_lost(&mut self, lost: &Lost) {
        let n = lost.pending.swap(0, Ordering::Relaxed);
        if n > 0 && self.event("lost", None, Some(n), None).is_err() {
            lost.pending.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Handles one message; false once the writer must stop.
    fn handle(&mut self, msg: Msg, lost: &Lost) -> bool {
        match msg {
            Msg::Call(entry) => {
                self.note_lost(lost);
                if let Err(e) = self.call(&entry) {
                    lost.add(1);
                    if let Some(suppressed) = WRITE_ERRORS.admit() {
                        tracing::error!(path = %self.config.path.display(), error = %e, suppressed, "audit trail: cannot write a record; it is counted as lost");
                    }
                }
                true
            }
            Msg::Event { name, detail } => {
                self.note_lost(lost);
                if self.event(name, Some(&detail), None, None).is_err() {
                    lost.add(1);
                }
                true
            }
            Msg::Stop => false,
        }
    }

    /// The thread's loop: until `Msg::Stop` (or every sender is gone), then fsync.
    ///
    /// Under load the writer does not block on the channel: after a record it naps for
    /// [`BATCH_NAP`] and then writes everything that arrived meanwhile (still one write(2)
    /// per record). So a busy daemon pays no thread wake-up per call; an idle one pays one
    /// for its first record.
    pub(super) fn run(mut self, rx: Receiver<Msg>, lost: Arc<Lost>) {
        let mut last_sync = Instant::now();
        let mut running = true;
        while running {
            let wait = self
                .config
                .sync_interval
                .saturating_sub(last_sync.elapsed())
                .max(Duration::from_millis(1));
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    running = self.handle(msg, &lost);
                    while running {
                        std::thread::sleep(BATCH_NAP);
                        let mut any = false;
                        while running {
                            let Ok(msg) = rx.try_recv() else { break };
                            any = true;
                            running = self.handle(msg, &lost);
                        }
                        if last_sync.elapsed() >= self.config.sync_interval {
                            self.sync();
                            last_sync = Instant::now();
                        }
                        if !any {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => running = false,
                Err(RecvTimeoutError::Timeout) => self.note_lost(&lost),
            }
            if last_sync.elapsed() >= self.config.sync_interval {
                self.sync();
                last_sync = Instant::now();
            }
        }
        self.note_lost(&lost);
        self.sync();
    }
}
