use std::os::unix::fs::DirBuilderExt;

use super::*;
use crate::fs::files_in;

fn record(byte: u8) -> WrappedStoreKey {
    WrappedStoreKey::new(&StoreKey::generate(Algorithm::Aes256), vec![byte; 40])
}

fn sample() -> StoreKeyFile {
    let mut f = StoreKeyFile::new(StoreId::parse("store-1").unwrap(), "primary", record(1));
    f.rotate(record(2));
    f.rotate(record(3));
    f
}

#[test]
fn write_read_round_trip_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let f = sample();
    assert_eq!(f.previous.len(), 2);
    assert_eq!(f.previous[0].wrapped, vec![2; 40], "newest first");
    write_store_file(dir.path(), &f).unwrap();
    let path = path_for(dir.path(), &f.store_id);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let back = read_store_file(dir.path(), &f.store_id).unwrap().unwrap();
    assert_eq!(back, f);
    assert_eq!(files_in(dir.path()), ["store-store-1.json"]);
    let other = StoreId::parse("store-2").unwrap();
    assert!(read_store_file(dir.path(), &other).unwrap().is_none());
}

#[test]
fn store_key_bytes_round_trip() {
    let k = StoreKey::generate(Algorithm::Aes128);
    let w = WrappedStoreKey::new(&k, vec![0; 8]);
    let back = w.open(k.to_key_file_bytes()).unwrap();
    assert_eq!(back.key_id, k.key_id);
    assert!(back.key.ct_eq(k.key.expose()));
    assert!(!format!("{k:?}").contains(&hex::encode(k.key.expose())));
    let other = StoreKey::generate(Algorithm::Aes128).to_key_file_bytes();
    assert!(w
        .open(other)
        .unwrap_err()
        .to_string()
        .contains("another key id"));
    let long = StoreKey::generate(Algorithm::Aes256).to_key_file_bytes();
    assert!(w.open(long).unwrap_err().to_string().contains("64 bytes"));
}

#[test]
fn corrupt_or_insecure_files_are_errors_not_none() {
    let dir = tempfile::tempdir().unwrap();
    let id = StoreId::parse("s").unwrap();
    let path = path_for(dir.path(), &id);
    let good = String::from_utf8(sample().to_json()).unwrap();
    // Garbage, and a valid file of another store (copied or renamed by hand).
    for (text, want) in [
        ("{\"format\":1,", "not JSON"),
        (&*good, "store \"store-1\""),
    ] {
        write_atomic(&path, text.as_bytes()).unwrap();
        let e = read_store_file(dir.path(), &id).unwrap_err();
        assert!(matches!(e, StoreFileError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert!(e.to_string().contains("do not delete it"), "{e}");
    }
    write_atomic(&path, good.replace("store-1", "s").as_bytes()).unwrap();
    assert!(read_store_file(dir.path(), &id).unwrap().is_some());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let e = read_store_file(dir.path(), &id).unwrap_err();
    let fix = format!("chmod 600 {}", path.display());
    assert!(e.to_string().contains(&fix), "{e}");
}

#[test]
fn a_write_past_a_bound_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = sample();
    write_store_file(dir.path(), &f).unwrap();
    let path = path_for(dir.path(), &f.store_id);
    let before = fs::read(&path).unwrap();
    while f.previous.len() <= MAX_PREVIOUS {
        f.rotate(record(f.previous.len() as u8 + 10));
    }
    let e = write_store_file(dir.path(), &f).unwrap_err();
    assert!(matches!(e, StoreFileError::Unwritable { .. }), "{e}");
    assert!(e.to_string().contains("at most 100"), "{e}");
    assert_eq!(fs::read(&path).unwrap(), before, "the old file stays");
    assert_eq!(files_in(dir.path()), ["store-store-1.json"]);
    // Two keys with one key id would read as corrupt: never written either.
    let mut f = sample();
    f.previous[1].key_id = f.active.key_id;
    let other = tempfile::tempdir().unwrap();
    let e = create_store_file(other.path(), &f).unwrap_err();
    assert!(e.to_string().contains("share a key_id"), "{e}");
    assert!(files_in(other.path()).is_empty());
}

#[test]
fn oversized_or_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = sample();
    let path = path_for(dir.path(), &f.store_id);
    let mut big = f.to_json();
    big.resize(MAX_STORE_FILE as usize + 1, b' ');
    write_atomic(&path, &big).unwrap();
    let e = read_store_file(dir.path(), &f.store_id).unwrap_err();
    assert!(matches!(e, StoreFileError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("at most"), "{e}");
    write_store_file(dir.path(), &f).unwrap();
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(4242)), None).unwrap();
        let e = read_store_file(dir.path(), &f.store_id).unwrap_err();
        assert!(matches!(e, StoreFileError::Refused(_)), "{e}");
        assert!(e.to_string().contains("uid 4242"), "{e}");
    }
}

#[test]
fn path_for_stays_inside_the_state_dir() {
    let dir = Path::new("/var/lib/kms-broker");
    // Every character of the alphabet alone (`.` alone is refused, below) and edge shapes.
    let mut ids: Vec<String> = "abcXYZ019_-".chars().map(String::from).collect();
    ids.extend(["...", "..a", "a..", "-", "_.", &"a".repeat(128)].map(String::from));
    for raw in ids {
        let id = StoreId::parse(&raw).unwrap();
        let p = path_for(dir, &id);
        assert_eq!(p.parent(), Some(dir), "{raw}");
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            format!("store-{raw}.json")
        );
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "/a",
        "../a",
        "a\\b",
        "a b",
        "é",
        &"a".repeat(129),
    ] {
        assert!(StoreId::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_state_dir_is_checked_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a/state");
    let e = ensure_state_dir(&state).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(msg.contains(&state.display().to_string()), "{msg}");
    assert!(msg.contains("install -d -m 0700"), "{msg}");
    assert!(!dir.path().join("a").exists(), "nothing was created");

    fs::create_dir(dir.path().join("a")).unwrap();
    fs::write(&state, b"").unwrap();
    let e = ensure_state_dir(&state).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    fs::remove_file(&state).unwrap();

    fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
    ensure_state_dir(&state).unwrap();
    // Group- or world-writable: whoever can write it can swap store key files.
    for mode in [0o770, 0o702, 0o777, 0o1777] {
        fs::set_permissions(&state, fs::Permissions::from_mode(mode)).unwrap();
        let e = ensure_state_dir(&state).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{mode:o}: {e}");
    }
    // Readable by others is not a risk to the store files (they are 0600 each).
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    ensure_state_dir(&state).unwrap();
    // Owned by another user: refused even when its mode is private.
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(&state, Some(rustix::fs::Uid::from_raw(4242)), None).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        let e = ensure_state_dir(&state).unwrap_err();
        assert!(e.to_string().contains("uid 4242"), "{e}");
    }
}
