//! The lifecycle through the client crate: data written under every store-key generation
//! stays readable after rotations and a restart; status, re-wrap and the revocation watch.

mod common;

use aes_gcm::aead::{Aead, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, KeyInit};
use common::{returns, Setup, ALL, LONG_STARTUP};
use kms_broker::backend::mock::mock;
use kms_broker_client::{KeyState, StoreKey};
use tokio_stream::StreamExt;

const LIFECYCLE: &[&str] = &["RotateStoreKey", "StoreStatus", "Rewrap"];

/// A CockroachDB-like data file: the id of the store key that encrypted it, then
/// nonce || AES-256-GCM ciphertext.
fn write_data(key: &StoreKey, text: &str) -> (Vec<u8>, Vec<u8>) {
    let cipher = Aes256Gcm::new_from_slice(key.key.expose()).unwrap();
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let mut out = nonce.to_vec();
    out.extend(cipher.encrypt(&nonce, text.as_bytes()).unwrap());
    (key.key_id.to_vec(), out)
}

fn read_data(keys: &[&StoreKey], (key_id, data): &(Vec<u8>, Vec<u8>)) -> String {
    let key = keys
        .iter()
        .find(|k| k.key_id.as_slice() == key_id.as_slice())
        .expect("the key that wrote it is still handed out");
    let cipher = Aes256Gcm::new_from_slice(key.key.expose()).unwrap();
    let (nonce, ct) = data.split_at(12);
    String::from_utf8(cipher.decrypt(nonce.into(), ct).unwrap()).unwrap()
}

#[tokio::test]
async fn data_written_under_every_generation_stays_readable() {
    let t = Setup::new("generations");
    let allow: Vec<&str> = ALL.iter().chain(LIFECYCLE).copied().collect();
    let daemon = t.start(&allow).await;
    let client = t.client(LONG_STARTUP).await;
    let mut files = Vec::new();
    for generation in 0..3 {
        if generation > 0 {
            let st = returns(client.rotate_store_key("s1")).await.unwrap();
            assert_eq!(st.previous.len(), generation);
        }
        let keys = returns(client.get_store_key("s1", generation == 0))
            .await
            .unwrap();
        assert_eq!(keys.previous.len(), generation);
        files.push(write_data(
            &keys.active,
            &format!("written under generation {generation}"),
        ));
    }
    daemon.stop().await;

    let daemon = t.start(&allow).await;
    let keys = returns(client.get_store_key("s1", false)).await.unwrap();
    let all: Vec<&StoreKey> = std::iter::once(&keys.active)
        .chain(&keys.previous)
        .collect();
    for (generation, file) in files.iter().enumerate() {
        assert_eq!(
            read_data(&all, file),
            format!("written under generation {generation}")
        );
    }
    let st = returns(client.store_status(Some("s1"))).await.unwrap();
    assert_eq!(st[0].previous.len(), 2);
    assert_eq!(
        st[0].active.as_ref().unwrap().key_id,
        keys.active.key_id.to_vec()
    );
    let report = returns(client.rewrap(None, false)).await.unwrap();
    assert_eq!(report.rewrapped, 0, "nothing to re-wrap: {report:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn the_revocation_watch_is_a_stream() {
    let t = Setup::new("watch");
    let m = mock(&t.mock);
    let daemon = t.start(ALL).await;
    let client = t.client(LONG_STARTUP).await;
    let mut events = returns(client.watch_revoke_status(Some("k1")))
        .await
        .unwrap();
    let first = returns(events.next()).await.unwrap().unwrap();
    assert_eq!(first.keys[0].key, "k1");
    // The first event may come before the first poll; wait for ACTIVE, then revoke.
    let mut last = first;
    while last.keys[0].state != KeyState::Active {
        last = returns(events.next()).await.unwrap().unwrap();
    }
    m.revoke();
    let ev = returns(events.next()).await.unwrap().unwrap();
    assert!(ev.epoch > last.epoch);
    assert_eq!(ev.keys[0].state, KeyState::Revoked);
    m.restore_access();
    daemon.stop().await;
    assert!(
        returns(events.next()).await.is_none(),
        "the stream ends with the daemon"
    );
}
