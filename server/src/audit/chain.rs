//! The hash chain of the audit trail: how a record line is sealed, and [`verify`].
//!
//! A record is one JSON object on one line. Its last member is `"hash"`, the lowercase hex
//! SHA-256 of the record's canonical bytes: the exact line as written, without its
//! `,"hash":"…"` member (so `{…,"prev":"…"}`). The member before it, `"prev"`, is the hash
//! of the record before (across rotated files too; 64 zeros before the very first record).
//! So editing a byte breaks that record's hash, and removing, inserting or reordering
//! records breaks a `prev` link. Every record also has `seq`, one more than the record
//! before, which lets [`verify`] say WHICH of those happened.
//!
//! What a chain of plain hashes cannot show: a file cut short at its end, or one rewritten
//! whole by someone who recomputes every hash. [`VerifySummary::last_hash`] is the value to
//! keep elsewhere (shipped with the logs, or in a ticket) to detect both.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// `prev` of the very first record of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_OPEN: &str = ",\"hash\":\"";
const HASH_CLOSE: &str = "\"}";
/// Lines longer than this are not records (a record is well under 1 KiB).
const MAX_LINE: usize = 64 * 1024;

/// Seals `unsealed` (a serialized JSON object whose last member is `prev`): returns the
/// line to write (without its newline) and the record's hash.
pub fn seal(unsealed: &str) -> (String, String) {
    let hash = hex::encode(Sha256::digest(unsealed.as_bytes()));
    let body = unsealed.strip_suffix('}').unwrap_or(unsealed);
    (format!("{body}{HASH_OPEN}{hash}{HASH_CLOSE}"), hash)
}

/// The `hash` member of a sealed line, if the line has that shape.
pub fn hash_of(line: &str) -> Option<&str> {
    let rest = line.strip_suffix(HASH_CLOSE)?;
    let at = rest.len().checked_sub(64)?;
    let (head, hash) = rest.split_at_checked(at)?;
    head.ends_with(HASH_OPEN)
        .then_some(hash)
        .filter(|h| h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One line checked on its own: its seal, its `seq` and `prev`.
#[derive(Debug)]
struct Checked {
    seq: u64,
    prev: String,
    hash: String,
    lost: u64,
}

fn check_line(line: &str) -> Result<Checked, String> {
    let hash = hash_of(line).ok_or("not a sealed record (no trailing \"hash\" member)")?;
    let unsealed = format!(
        "{}}}",
        &line[..line.len() - HASH_CLOSE.len() - 64 - HASH_OPEN.len()]
    );
    if hex::encode(Sha256::digest(unsealed.as_bytes())) != hash {
        return Err("its hash does not match its content: the record was edited".into());
    }
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let seq = v["seq"].as_u64().ok_or("no \"seq\" number")?;
    let prev = v["prev"].as_str().ok_or("no \"prev\" hash")?.to_owned();
    let lost = v["lost"].as_u64().unwrap_or(0);
    Ok(Checked {
        seq,
        prev,
        hash: hash.to_owned(),
        lost,
    })
}

/// What a file that verifies holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// `prev` of the first record: [`GENESIS`], or the last hash of the file before it.
    pub first_prev: Option<String>,
    /// Keep this elsewhere: it detects a later cut or rewrite of the file's end.
    pub last_hash: Option<String>,
    /// Records the daemon could not write (its queue was full, or the disk failed), as the
    /// trail's own "lost" markers count them.
    pub lost: u64,
}

/// The first bad record of a file.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: cannot read: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("line {line}: {why}")]
    Bad { line: usize, why: String },
}

/// Checks the chain of one audit file on its own, wherever it was copied: every record's
/// hash, and that each record follows the one before. Names the first bad line.
pub fn verify(path: &Path) -> Result<VerifySummary, VerifyError> {
    let io = |error| VerifyError::Io {
        path: path.display().to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut lines: Vec<Checked> = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        let line_no = lines.len() + 1;
        let bad = |why: String| VerifyError::Bad { line: line_no, why };
        if buf.last() != Some(&b'\n') {
            return Err(bad(if n > MAX_LINE {
                format!("longer than {MAX_LINE} bytes: not a record")
            } else {
                "no newline at its end: a torn or truncated record".into()
            }));
        }
        let text = std::str::from_utf8(&buf[..n - 1]).map_err(|_| bad("not UTF-8".into()))?;
        lines.push(check_line(text).map_err(bad)?);
    }
    for i in 1..lines.len() {
        let (before, this) = (&lines[i - 1], &lines[i]);
        if this.prev == before.hash && this.seq == before.seq + 1 {
            continue;
        }
        let line = i + 1;
        let expected = before.seq + 1;
        let why = if this.seq == expected {
            format!("its \"prev\" is not line {i}'s hash: a record was replaced or edited")
        } else if let Some(at) = lines.iter().position(|c| c.seq == expected) {
            format!(
                "records reordered: seq {} follows seq {}; seq {expected} is at line {}",
                this.seq,
                before.seq,
                at + 1
            )
        } else if this.seq > expected {
            format!(
                "{} record(s) removed before this line (seq jumps from {} to {})",
                this.seq - expected,
                before.seq,
                this.seq
            )
        } else {
            format!(
                "records reordered or repeated: seq {} after seq {}",
                this.seq, before.seq
            )
        };
        return Err(VerifyError::Bad { line, why });
    }
    Ok(VerifySummary {
        records: lines.len() as u64,
        first_seq: lines.first().map(|c| c.seq),
        last_seq: lines.last().map(|c| c.seq),
        first_prev: lines.first().map(|c| c.prev.clone()),
        last_hash: lines.last().map(|c| c.hash.clone()),
        lost: lines.iter().map(|c| c.lost).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let (line, hash) = seal(&format!(
                    "{{\"seq\":{seq},\"op\":\"WrapKey\",\"key\":\"k\",\"prev\":\"{prev}\"}}"
                ));
                prev = hash;
                line
            })
            .collect()
    }

    fn verify_lines(lines: &[String]) -> Result<VerifySummary, VerifyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        verify(&path)
    }

    fn bad_line(r: Result<VerifySummary, VerifyError>) -> (usize, String) {
        match r {
            Err(VerifyError::Bad { line, why }) => (line, why),
            other => panic!("expected a bad line, got {other:?}"),
        }
    }

    #[test]
    fn a_whole_chain_verifies_and_reports_its_ends() {
        let lines = chain(5);
        let s = verify_lines(&lines).unwrap();
        assert_eq!(s.records, 5);
        assert_eq!((s.first_seq, s.last_seq), (Some(1), Some(5)));
        assert_eq!(s.first_prev.as_deref(), Some(GENESIS));
        assert_eq!(s.last_hash.as_deref(), hash_of(&lines[4]));
    }

    #[test]
    fn an_edited_line_is_named() {
        let mut lines = chain(5);
        lines[2] = lines[2].replace("\"key\":\"k\"", "\"key\":\"x\"");
        let (line, why) = bad_line(verify_lines(&lines));
        assert_eq!(line, 3);
        assert!(why.contains("edited"), "{why}");
    }

    #[test]
    fn a_deleted_line_is_named() {
        let mut lines = chain(5);
        lines.remove(1);
        let (line, why) = bad_line(verify_lines(&lines));
        assert_eq!(line, 2);
        assert!(why.contains("1 record(s) removed"), "{why}");
    }

    #[test]
    fn a_swapped_pair_is_named() {
        let mut lines = chain(6);
        lines.swap(2, 3);
        let (line, why) = bad_line(verify_lines(&lines));
        assert_eq!(line, 3);
        assert!(why.contains("reordered") && why.contains("line 4"), "{why}");
    }

    #[test]
    fn a_rehashed_edit_still_breaks_the_next_link() {
        let mut lines = chain(4);
        // Edit line 2 AND recompute its own hash: line 3's prev no longer matches.
        let unsealed = format!("{}}}", &lines[1][..lines[1].len() - 75]).replace("\"k\"", "\"y\"");
        lines[1] = seal(&unsealed).0;
        let (line, why) = bad_line(verify_lines(&lines));
        assert_eq!(line, 3);
        assert!(why.contains("replaced"), "{why}");
    }

    #[test]
    fn a_torn_last_line_and_garbage_are_named() {
        let lines = chain(2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, format!("{}\n{}", lines[0], &lines[1][..20])).unwrap();
        let (line, why) = bad_line(verify(&path));
        assert_eq!(line, 2);
        assert!(why.contains("torn"), "{why}");
        let (line, _) = bad_line(verify_lines(&[lines[0].clone(), "hello".into()]));
        assert_eq!(line, 2);
        assert!(hash_of("x\"hash\":\"zz\"}").is_none());
    }
}
