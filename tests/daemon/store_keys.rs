//! GetStoreKey: creation, persistence, restarts, no plaintext on disk, coalescing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kms_broker::backend::mock::mock;
use kms_broker_client::pb::GetStoreKeyRequest;
use tonic::Code;

use crate::common::{allow_me_everything, Daemon};

fn req(id: &str, create: bool) -> GetStoreKeyRequest {
    GetStoreKeyRequest {
        store_id: id.into(),
        create,
    }
}

fn stores_body(uri: &str) -> String {
    format!(
        "[keys.k]\nuris = [\"{uri}\"]\n[stores.s1]\nkey = \"k\"\n[stores.s128]\nkey = \"k\"\nalgorithm = \"AES-128\"\n{}",
        allow_me_everything()
    )
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
        .collect()
}

#[tokio::test]
async fn create_then_get_is_stable_across_restart_and_never_plaintext_on_disk() {
    let m = mock("sk-stable");
    let d = Daemon::start(&stores_body("mock://sk-stable")).await;
    let mut c = d.unix().await;

    let e = c.get_store_key(req("s1", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "no key yet and no create: {e:?}");
    assert!(
        files_in(&d.state_dir()).is_empty(),
        "a failed get wrote nothing"
    );

    let first = c.get_store_key(req("s1", true)).await.unwrap().into_inner();
    let a = first.active.unwrap();
    assert_eq!(a.key_id.len(), 32);
    assert_eq!(a.key.len(), 32);
    assert_eq!(a.algorithm, "AES-256");
    assert!(a.created_at.is_some());
    assert!(first.previous.is_empty());

    let k128 = c
        .get_store_key(req("s128", true))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!((k128.key.len(), k128.algorithm.as_str()), (16, "AES-128"));

    // create=true again returns the same key, it does not mint another.
    let again = c
        .get_store_key(req("s1", true))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!(
        (again.key_id.clone(), again.key.clone()),
        (a.key_id.clone(), a.key.clone())
    );

    // On disk: 0600 files in a 0700 dir, and neither the key nor the id||key file anywhere.
    let state = d.state_dir();
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files = files_in(&state);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f:?}"
        );
        let bytes = std::fs::read(f).unwrap();
        for secret in [&a.key, &k128.key] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == &secret[..]),
                "plaintext key in {f:?}"
            );
            let hex = hex::encode(secret);
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&hex),
                "hex key in {f:?}"
            );
        }
    }

    // A restart (fresh memory) unwraps the same key from disk through the KMS.
    let decrypts = m.calls().decrypt;
    let d = d.restart().await;
    let mut c = d.unix().await;
    let after = c
        .get_store_key(req("s1", false))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!(after.key_id, a.key_id);
    assert_eq!(after.key, a.key);
    assert_eq!(after.algorithm, "AES-256");
    // The restart pre-warms both stores' keys: one unwrap each, however the first
    // GetStoreKey interleaves with it.
    crate::common::must_return("the pre-warm", std::time::Duration::from_secs(5), async {
        while m.calls().decrypt < decrypts + 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    c.get_store_key(req("s128", false)).await.unwrap();
    assert_eq!(
        m.calls().decrypt,
        decrypts + 2,
        "one unwrap per store after the restart"
    );
    d.stop().await;
}

#[tokio::test]
async fn bad_and_unknown_store_ids_write_nothing() {
    mock("sk-ids");
    let d = Daemon::start(&stores_body("mock://sk-ids")).await;
    let mut c = d.unix().await;
    for (id, code) in [
        ("../../etc/passwd", Code::InvalidArgument),
        ("..", Code::InvalidArgument),
        ("a/b", Code::InvalidArgument),
        ("", Code::InvalidArgument),
        (&"x".repeat(129), Code::InvalidArgument),
        ("nul\0byte", Code::InvalidArgument),
        ("not-configured", Code::NotFound),
    ] {
        let e = c.get_store_key(req(id, true)).await.unwrap_err();
        assert_eq!(e.code(), code, "{id:?}: {e:?}");
    }
    assert!(files_in(&d.state_dir()).is_empty());
    assert!(!d.dir.join("etc").exists());
    d.stop().await;
}

#[tokio::test]
async fn concurrent_first_calls_are_coalesced() {
    let m = mock("sk-coalesce");
    let d = Daemon::start(&stores_body("mock://sk-coalesce")).await;
    let mut c = d.unix().await;
    let created = c
        .get_store_key(req("s1", true))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    let d = d.restart().await;
    m.reset_calls();
    m.set_latency(std::time::Duration::from_millis(100));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = d.unix().await;
        tasks.push(tokio::spawn(async move {
            c.get_store_key(req("s1", false)).await
        }));
    }
    for t in tasks {
        let k = t.await.unwrap().unwrap().into_inner().active.unwrap();
        assert_eq!(k.key, created.key);
    }
    assert_eq!(m.calls().decrypt, 1, "16 concurrent calls, one KMS unwrap");
    m.set_latency(std::time::Duration::ZERO);
    d.stop().await;
}

#[tokio::test]
async fn a_corrupt_state_file_fails_loudly_and_is_kept() {
    mock("sk-corrupt");
    let d = Daemon::start(&stores_body("mock://sk-corrupt")).await;
    let mut c = d.unix().await;
    c.get_store_key(req("s1", true)).await.unwrap();
    let d = d.restart().await;
    let file = files_in(&d.state_dir()).pop().unwrap();
    std::fs::write(&file, b"{ torn").unwrap();
    let mut c = d.unix().await;
    for create in [false, true] {
        let e = c.get_store_key(req("s1", create)).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"{ torn",
        "never replaced by a new key"
    );
    d.stop().await;
}
