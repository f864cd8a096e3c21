//! Crash injection in a store key's lifecycle: the real binary dies at every step of a
//! rotation and of a re-wrap that moves a store to another key. After each, every key ever
//! handed out is still there, the file is whole, and running the operation again finishes
//! it.

use std::path::Path;

use kms_broker_client::pb::{
    GetStoreKeyRequest, GetStoreKeyResponse, RewrapRequest, RotateStoreKeyRequest,
    StoreStatusRequest,
};

use super::{config_text, must_return, my_policy, wait_for_abort, Client, Setup, HANG};

/// The steps a rotation or re-wrap passes, in order, and whether the new file is in place
/// once the step is reached.
const STEPS: &[(&str, bool)] = &[
    ("atomic-write:temp-created", false),
    ("atomic-write:half-written", false),
    ("atomic-write:written", false),
    ("atomic-write:synced", false),
    ("atomic-write:committed", true),
    ("atomic-write:dir-synced", true),
];

/// Keys `a` and `b` (a file key each) and store `s1` under `store_key`.
fn setup(store_key: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    kms_broker::certs::write_dev_certs(&dir.join("certs")).unwrap();
    for k in ["a", "b"] {
        kms_broker::backend::file::create_key_file(&dir.join(format!("{k}.bin"))).unwrap();
    }
    let config = dir.join("kms.toml");
    write_config(&dir, &config, store_key);
    Setup {
        _tmp: tmp,
        dir,
        config,
    }
}

fn write_config(dir: &Path, config: &Path, store_key: &str) {
    let body = format!(
        "[keys.a]\nuris = [\"file://{}\"]\n[keys.b]\nuris = [\"file://{}\"]\n[stores.s1]\nkey = \"{store_key}\"\n{}",
        dir.join("a.bin").display(),
        dir.join("b.bin").display(),
        my_policy(),
    );
    std::fs::write(config, config_text(dir, &body)).unwrap();
}

async fn keys(c: &mut Client) -> GetStoreKeyResponse {
    let req = GetStoreKeyRequest {
        store_id: "s1".into(),
        create: false,
    };
    must_return("GetStoreKey", HANG, c.get_store_key(req))
        .await
        .expect("the store's keys")
        .into_inner()
}

async fn wrapped_under(c: &mut Client) -> String {
    c.store_status(StoreStatusRequest {
        store_id: "s1".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stores
    .remove(0)
    .key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_rotation_loses_no_key() {
    for &(step, committed) in [("store-rotate:wrapped", false)].iter().chain(STEPS) {
        let s = setup("a");
        let (daemon, mut c) = s.start(None).await;
        let req = GetStoreKeyRequest {
            store_id: "s1".into(),
            create: true,
        };
        let first = c.get_store_key(req).await.unwrap().into_inner();
        let k0 = first.active.unwrap();
        drop(daemon);

        let (mut daemon, mut c) = s.start(Some(step)).await;
        let rotate = RotateStoreKeyRequest {
            store_id: "s1".into(),
        };
        assert!(c.rotate_store_key(rotate.clone()).await.is_err(), "{step}");
        wait_for_abort(&mut daemon, step);
        drop(daemon);

        let (daemon, mut c) = s.start(None).await;
        let after = keys(&mut c).await;
        let all: Vec<_> = after.active.iter().chain(&after.previous).collect();
        assert!(
            all.iter().any(|k| k.key_id == k0.key_id && k.key == k0.key),
            "{step}: the key handed out before the crash is gone"
        );
        if committed {
            assert_ne!(after.active.as_ref().unwrap().key_id, k0.key_id, "{step}");
            assert_eq!(after.previous.len(), 1, "{step}");
        } else {
            assert_eq!(after.active.as_ref().unwrap().key_id, k0.key_id, "{step}");
            assert!(after.previous.is_empty(), "{step}");
        }
        // Rotating again works, and the result survives a restart.
        c.rotate_store_key(rotate).await.unwrap();
        let again = keys(&mut c).await;
        drop(daemon);
        let (_daemon, mut c) = s.start(None).await;
        assert_eq!(keys(&mut c).await, again, "{step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_move_finishes_when_run_again() {
    for &(step, committed) in [("store-rewrap:wrapped", false)].iter().chain(STEPS) {
        let s = setup("a");
        let (daemon, mut c) = s.start(None).await;
        let req = GetStoreKeyRequest {
            store_id: "s1".into(),
            create: true,
        };
        let k0 = c.get_store_key(req).await.unwrap().into_inner();
        drop(daemon);

        // The operator points the store at key b; the re-wrap dies at `step`.
        write_config(&s.dir, &s.config, "b");
        let (mut daemon, mut c) = s.start(Some(step)).await;
        let rewrap = RewrapRequest {
            store_id: String::new(),
            dry_run: false,
        };
        assert!(c.rewrap(rewrap.clone()).await.is_err(), "{step}");
        wait_for_abort(&mut daemon, step);
        drop(daemon);

        let (daemon, mut c) = s.start(None).await;
        assert_eq!(
            keys(&mut c).await.active,
            k0.active,
            "{step}: the key is the same"
        );
        let under = wrapped_under(&mut c).await;
        assert_eq!(under, if committed { "b" } else { "a" }, "{step}");
        // Run again: it finishes (or has nothing left to do).
        let n = c.rewrap(rewrap).await.unwrap().into_inner().rewrapped;
        assert_eq!(n, u32::from(!committed), "{step}");
        assert_eq!(wrapped_under(&mut c).await, "b", "{step}");
        drop(daemon);
        // Key a is gone: the store opens through b alone.
        std::fs::remove_file(s.dir.join("a.bin")).unwrap();
        let (_daemon, mut c) = s.start(None).await;
        assert_eq!(keys(&mut c).await.active, k0.active, "{step}");
    }
}
