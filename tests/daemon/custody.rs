//! Key custody under attack and fault (issue 6): revocation fails closed against late KMS
//! answers, real-call denials take effect at once, and every byte of a wrapped blob is
//! authenticated.

use std::collections::HashMap;
use std::time::Duration;

use kms_broker::backend::mock::mock;
use kms_broker::envelope::Envelope;
use kms_broker::key_name::KeyName;
use kms_broker::secret::SecretBytes;
use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
};
use tonic::Code;

use crate::common::{allow_me_everything, must_return, wait_for_state, Client, Daemon};

/// `uris` mock names; KMS calls get seconds (not the harness's usual 200 ms) so a slow answer
/// is a slow answer, not a timeout.
fn body(uris: &[&str], poll: &str) -> String {
    let uris: Vec<String> = uris.iter().map(|n| format!("\"mock://{n}\"")).collect();
    format!(
        "[keys.k]\nuris = [{}]\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"{poll}\"\ngrace_period = \"15m\"\n[kms]\nattempt_timeout = \"5s\"\ndeadline = \"10s\"\nmax_attempts = 1\n{}",
        uris.join(", "),
        allow_me_everything()
    )
}

fn store(create: bool) -> GetStoreKeyRequest {
    GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    }
}

async fn wrap(c: &mut Client, pt: &[u8]) -> Vec<u8> {
    c.wrap_key(WrapKeyRequest {
        key: "k".into(),
        plaintext: pt.to_vec(),
        context: HashMap::from([("backup".into(), "b1".into())]),
    })
    .await
    .expect("wrap")
    .into_inner()
    .wrapped
}

async fn unwrap(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap_key(UnwrapKeyRequest {
        wrapped: blob.to_vec(),
        context: HashMap::from([("backup".into(), "b1".into())]),
    })
    .await
    .map(|r| std::mem::take(&mut r.into_inner().plaintext))
}

async fn state(c: &mut Client) -> KeyState {
    let s = c
        .revoke_status(RevokeStatusRequest { key: "k".into() })
        .await
        .unwrap()
        .into_inner();
    KeyState::try_from(s.keys[0].state).unwrap()
}

/// A Decrypt admitted before a revocation answers (successfully) after the poll saw it: the
/// late success must neither hand the key out nor lift the denial.
#[tokio::test]
async fn a_late_success_does_not_undo_a_revocation() {
    let m = mock("cu-late");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(tmp.path(), &body(&["cu-late"], "200ms"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    let key = c.get_store_key(store(true)).await.unwrap().into_inner();
    // A restart so that the store key must be unwrapped again, slowly: the pre-warm's
    // Decrypt (or our own call's) is the one in flight.
    d.stop().await;
    m.set_reply_latency(Duration::from_millis(1500));
    let before = m.calls().decrypt;
    let d = Daemon::start_in(tmp.path(), &body(&["cu-late"], "200ms"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    let mut slow = d.unix().await;
    let call = tokio::spawn(async move { slow.get_store_key(store(false)).await });
    must_return("the slow Decrypt to start", Duration::from_secs(5), async {
        while m.calls().decrypt == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The KMS decided "yes"; now the customer disables the key and the poller sees it.
    m.disable();
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    let late = call.await.unwrap().unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("DISABLED"), "{}", late.message());
    assert_eq!(
        state(&mut c).await,
        KeyState::Disabled,
        "the late success lifted nothing"
    );
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "nothing was held: {e:?}"
    );
    // Only a fresh check lifts it.
    m.set_reply_latency(Duration::ZERO);
    m.enable();
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let back = c.get_store_key(store(false)).await.unwrap().into_inner();
    assert_eq!(back.active.unwrap().key, key.active.unwrap().key);
    d.stop().await;
}

/// A denial seen by a real call marks the URI at once (no poll in between) and the store
/// key held in memory is no longer handed out.
#[tokio::test]
async fn a_denied_decrypt_marks_the_key_at_once_and_drops_held_keys() {
    let m = mock("cu-denied");
    let d = Daemon::start(&body(&["cu-denied"], "1h")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    c.get_store_key(store(true)).await.unwrap();
    let blob = wrap(&mut c, b"data key").await;
    let checks = m.calls().check;
    m.revoke();
    let e = unwrap(&mut c, &blob).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(state(&mut c).await, KeyState::Revoked);
    assert_eq!(
        m.calls().check,
        checks,
        "no poll ran: the Decrypt's answer did it"
    );
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("REVOKED"), "{}", e.message());
    m.restore_access();
    d.stop().await;
}

/// Any changed byte anywhere in a wrapped blob fails to unwrap, key versions included, and
/// none of it changes the key's state.
#[tokio::test]
async fn every_byte_of_a_wrapped_blob_is_authenticated() {
    mock("cu-flip-a");
    mock("cu-flip-b");
    let d = Daemon::start(&body(&["cu-flip-a", "cu-flip-b"], "1h")).await;
    let mut c = d.unix().await;
    let blob = wrap(&mut c, b"a 32-byte data key, say........").await;
    assert_eq!(
        unwrap(&mut c, &blob).await.unwrap(),
        b"a 32-byte data key, say........"
    );
    for i in 0..blob.len() {
        let mut b = blob.clone();
        b[i] ^= 0x01;
        match unwrap(&mut c, &b).await {
            Ok(_) => panic!(
                "byte {i} of {} changed and the blob still unwrapped",
                blob.len()
            ),
            Err(e) => assert!(
                matches!(e.code(), Code::InvalidArgument | Code::NotFound),
                "byte {i}: {e:?}"
            ),
        }
    }
    assert_eq!(state(&mut c).await, KeyState::Active);
    d.stop().await;
}

/// A blob that repeats an entry is refused before any KMS call; a v2 blob relabelled as
/// version 1 (its MAC stripped) does not authenticate.
#[tokio::test]
async fn duplicate_entries_and_downgrades_are_refused() {
    let m = mock("cu-dup");
    let d = Daemon::start(&body(&["cu-dup"], "1h")).await;
    let mut c = d.unix().await;
    let pt = SecretBytes::copy_from(b"a data key");
    let blob = wrap(&mut c, pt.expose()).await;
    let env = Envelope::decode(&blob).unwrap();
    let dup = vec![env.entries[0].clone(); 16];
    let forged = Envelope::seal(&KeyName::parse("k").unwrap(), &dup, &pt).unwrap();
    let decrypts = m.calls().decrypt;
    let e = unwrap(&mut c, &forged).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(m.calls().decrypt, decrypts, "refused before any KMS call");

    let mut v1 = blob[..blob.len() - 32].to_vec();
    v1[4] = 1;
    let e = unwrap(&mut c, &v1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(state(&mut c).await, KeyState::Active);
    d.stop().await;
}

/// An entry for a URI since removed from the config is skipped, so old blobs survive
/// retiring a region; a blob with no configured URI left is refused.
#[tokio::test]
async fn blobs_survive_retiring_one_of_their_uris() {
    mock("cu-region-a");
    mock("cu-region-b");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(tmp.path(), &body(&["cu-region-a", "cu-region-b"], "1h"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    let blob = wrap(&mut c, b"dk").await;
    d.stop().await;
    let d = Daemon::start_in(tmp.path(), &body(&["cu-region-b"], "1h"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    assert_eq!(unwrap(&mut c, &blob).await.unwrap(), b"dk");
    d.stop().await;
    let d = Daemon::start_in(tmp.path(), &body(&["cu-region-c"], "1h"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    let e = unwrap(&mut c, &blob).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    d.stop().await;
}
