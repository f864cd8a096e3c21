//! The broker's unit tests: version 1 blobs through a real file key.

use std::path::Path;

use super::*;
use crate::backend::AadFormat;

async fn broker(dir: &Path) -> (Broker, Arc<dyn KmsBackend>) {
    let key = dir.join("k.bin");
    crate::backend::file::create_key_file(&key).unwrap();
    let text = format!(
        "[server]\nunix_socket = \"s.sock\"\nstate_dir = \"state\"\n[keys.k]\nuris = [\"file://{}\"]\n",
        key.display()
    );
    let config = Config::parse(&dir.join("c.toml"), &text).unwrap();
    let uri = &config.keys.values().next().unwrap().uris[0];
    let backend = backend::connect(uri).await.unwrap();
    (Broker::new(&config).await.unwrap(), backend)
}

/// The layout the previous daemon wrote: no MAC, AAD of format 1.
fn v1_blob(name: &str, uri_id: &str, version: &str, ct: &[u8]) -> Vec<u8> {
    let mut b = b"KMSB\x01".to_vec();
    b.extend_from_slice(&(name.len() as u16).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.push(1);
    for s in [uri_id, version] {
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    b.extend_from_slice(&(ct.len() as u32).to_be_bytes());
    b.extend_from_slice(ct);
    b
}

#[tokio::test]
async fn version_1_blobs_still_unwrap_but_their_header_versions_are_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, backend) = broker(dir.path()).await;
    let name = KeyName::parse("k").unwrap();
    let ctx = BTreeMap::from([("backup".to_owned(), "b1".to_owned())]);
    let aad = Aad::with_format(AadFormat::V1, "k", ctx.clone());
    let ct = backend
        .encrypt(&SecretBytes::copy_from(b"old data key"), &aad)
        .await
        .unwrap();
    let id = broker.key(&name).unwrap().uris[0].id.clone();
    let blob = v1_blob("k", &id, "forged-version", &ct.bytes);
    let env = Envelope::decode(&blob).unwrap();
    let out = broker.unwrap(&env, ctx.clone()).await.unwrap();
    assert_eq!(out.plaintext.expose(), b"old data key");
    assert_eq!(
        out.key_version, ct.key_version,
        "from the key, not the header"
    );
    // The same ciphertext under the current format's AAD does not authenticate.
    let v2 = Envelope::seal(
        &name,
        &[Entry {
            uri_id: id,
            key_version: String::new(),
            ciphertext: ct.bytes,
        }],
        &SecretBytes::copy_from(b"old data key"),
    )
    .unwrap();
    let e = broker
        .unwrap(&Envelope::decode(&v2).unwrap(), ctx)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_reload_keeps_unchanged_uris_and_rebuilds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = broker(dir.path()).await;
    let name = KeyName::parse("k").unwrap();
    let key = dir.path().join("k.bin");
    let text = |extra: &str| {
        format!(
            "[server]\nunix_socket = \"s.sock\"\nstate_dir = \"state\"\n[keys.k]\nuris = [\"file://{}\"]\n[keys.k2]\nuris = [\"file://{}\"]\n{extra}",
            key.display(),
            dir.path().join("k2.bin").display()
        )
    };
    // The same [kms] settings as `old`'s config (the defaults).
    let same = Config::parse(&dir.path().join("c.toml"), &text("")).unwrap();
    let new = old.reload(&same, &same).await.unwrap();
    let first = |b: &Broker, n: &KeyName| b.key(n).unwrap().uris[0].clone();
    assert!(Arc::ptr_eq(&first(&old, &name), &first(&new, &name)));
    let k2 = KeyName::parse("k2").unwrap();
    assert_eq!(first(&new, &k2).status().detail, "not checked yet");
    assert_eq!(new.uris().count(), 2);
    // One clock: a change on either broker wakes the other's watchers.
    assert!(std::ptr::eq(old.clock(), new.clock()));

    // Other KMS settings: every backend is rebuilt with them.
    let config = Config::parse(
        &dir.path().join("c.toml"),
        &text("[kms]\nmax_attempts = 2\n"),
    )
    .unwrap();
    let rebuilt = new.reload(&same, &config).await.unwrap();
    assert!(!Arc::ptr_eq(&first(&new, &name), &first(&rebuilt, &name)));
}

#[tokio::test]
async fn keys_listing_one_kms_key_share_its_backend_and_state_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    for f in [&a, &b] {
        crate::backend::file::create_key_file(f).unwrap();
    }
    let text = format!(
        "[server]\nunix_socket = \"s.sock\"\nstate_dir = \"state\"\n\
         [keys.k1]\nuris = [\"file://{a}\", \"file://{b}\"]\n[keys.k2]\nuris = [\"file://{b}\"]\n",
        a = a.display(),
        b = b.display()
    );
    let config = Config::parse(&dir.path().join("c.toml"), &text).unwrap();
    let broker = Broker::new(&config).await.unwrap();
    let uri = |br: &Broker, key: &str, i: usize| {
        br.key(&KeyName::parse(key).unwrap()).unwrap().uris[i].clone()
    };
    assert!(Arc::ptr_eq(&uri(&broker, "k1", 1), &uri(&broker, "k2", 0)));
    let listed: Vec<_> = broker.uris().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        listed,
        ["k1", "k1"],
        "each distinct URI once, under the first key"
    );

    broker.poll_once().await;
    assert_eq!(uri(&broker, "k2", 0).state(), KeyState::Active);
    let reloaded = broker.reload(&config, &config).await.unwrap();
    assert!(Arc::ptr_eq(
        &uri(&broker, "k2", 0),
        &uri(&reloaded, "k1", 1)
    ));
    assert!(Arc::ptr_eq(
        &uri(&reloaded, "k1", 1),
        &uri(&reloaded, "k2", 0)
    ));
    assert_eq!(reloaded.uris().count(), 2);
}
