//! WrapKey / UnwrapKey: round trips, bad input, multi-URI keys.

use std::collections::HashMap;

use kms_broker::backend::mock::mock;
use kms_broker_client::pb::{UnwrapKeyRequest, WrapKeyRequest};
use tonic::Code;

use crate::common::{allow_me_everything, Daemon};

fn one_key(uri: &str) -> String {
    format!("[keys.k]\nuris = [\"{uri}\"]\n{}", allow_me_everything())
}

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn wrap_req(key: &str, plaintext: &[u8], context: HashMap<String, String>) -> WrapKeyRequest {
    WrapKeyRequest {
        key: key.into(),
        plaintext: plaintext.to_vec(),
        context,
    }
}

#[tokio::test]
async fn round_trip_with_a_file_key_and_context() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.bin");
    kms_broker::backend::file::create_key_file(&key).unwrap();
    let d = Daemon::start(&one_key(&format!("file://{}", key.display()))).await;
    let mut c = d.unix().await;
    let secret = b"backup data key 0123456789abcdef";
    let w = c
        .wrap_key(wrap_req("k", secret, ctx(&[("backup", "b1")])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.key, "k");
    assert!(!w.key_version.is_empty());
    assert!(
        !w.wrapped.windows(secret.len()).any(|win| win == secret),
        "plaintext visible in the blob"
    );
    let u = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: w.wrapped.clone(),
            context: ctx(&[("backup", "b1")]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.plaintext, secret);
    assert_eq!(u.key, "k");
    assert_eq!(u.key_version, w.key_version);

    // The same blob with another context, or none, does not authenticate.
    for bad in [
        ctx(&[("backup", "b2")]),
        ctx(&[]),
        ctx(&[("backup", "b1"), ("x", "y")]),
    ] {
        let e = c
            .unwrap_key(UnwrapKeyRequest {
                wrapped: w.wrapped.clone(),
                context: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    d.stop().await;
}

#[tokio::test]
async fn bad_blobs_are_invalid_argument() {
    let m = mock("wrap-bad-blobs");
    let d = Daemon::start(&one_key("mock://wrap-bad-blobs")).await;
    let mut c = d.unix().await;
    let w = c
        .wrap_key(wrap_req("k", b"0123456789abcdef", ctx(&[])))
        .await
        .unwrap()
        .into_inner();
    let blob = w.wrapped;

    let mut tampered = blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let truncated = blob[..blob.len() - 3].to_vec();
    let garbage = b"definitely not an envelope".to_vec();
    // An edited key name: the name is bound into the AAD, so this fails even though `k2`
    // would otherwise be a valid name (here it is also unconfigured).
    let mut renamed = blob.clone();
    let pos = renamed.windows(1).position(|w| w == b"k").unwrap();
    renamed[pos] = b'j';
    for (what, wrapped) in [
        ("tampered", tampered),
        ("truncated", truncated),
        ("garbage", garbage),
        ("empty", Vec::new()),
    ] {
        let e = c
            .unwrap_key(UnwrapKeyRequest {
                wrapped,
                context: ctx(&[]),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    let e = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: renamed,
            context: ctx(&[]),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "a blob naming an unconfigured key: {e:?}"
    );
    assert!(
        m.calls().decrypt >= 1,
        "the tampered blob reached the KMS and failed there"
    );
    d.stop().await;
}

#[tokio::test]
async fn plaintext_size_key_name_and_context_limits() {
    mock("wrap-limits");
    let d = Daemon::start(&one_key("mock://wrap-limits")).await;
    let mut c = d.unix().await;
    for (what, req, code) in [
        (
            "empty plaintext",
            wrap_req("k", b"", ctx(&[])),
            Code::InvalidArgument,
        ),
        (
            "oversize plaintext",
            wrap_req("k", &[7u8; 4097], ctx(&[])),
            Code::InvalidArgument,
        ),
        (
            "no key name",
            wrap_req("", b"x", ctx(&[])),
            Code::InvalidArgument,
        ),
        (
            "a URI as key",
            wrap_req("mock://wrap-limits", b"x", ctx(&[])),
            Code::InvalidArgument,
        ),
        (
            "reserved context",
            wrap_req("k", b"x", ctx(&[("kms-broker:store_id", "s")])),
            Code::InvalidArgument,
        ),
        (
            "unknown key",
            wrap_req("nope", b"x", ctx(&[])),
            Code::NotFound,
        ),
    ] {
        let e = c.wrap_key(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
    }
    let max = c
        .wrap_key(wrap_req("k", &[7u8; 4096], ctx(&[])))
        .await
        .unwrap()
        .into_inner();
    let back = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: max.wrapped,
            context: ctx(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.plaintext, vec![7u8; 4096]);
    d.stop().await;
}

#[tokio::test]
async fn two_uri_key_survives_the_loss_of_either() {
    let a = mock("multi-a");
    let b = mock("multi-b");
    let body = format!(
        "[keys.k]\nuris = [\"mock://multi-a\", \"mock://multi-b\"]\n[revocation]\npoll_interval = \"200ms\"\n[kms]\nattempt_timeout = \"300ms\"\ndeadline = \"1s\"\n{}",
        allow_me_everything()
    );
    let d = Daemon::start(&body).await;
    let mut c = d.unix().await;
    let w = c
        .wrap_key(wrap_req("k", b"region-proof", ctx(&[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.calls().encrypt, 1);
    assert_eq!(b.calls().encrypt, 1);
    let unwrap = |wrapped: Vec<u8>| UnwrapKeyRequest {
        wrapped,
        context: ctx(&[]),
    };

    // Region A lost (unreachable): B unwraps.
    a.set_fault(Some(kms_broker::backend::mock::MockFault::Unavailable));
    let u = c
        .unwrap_key(unwrap(w.wrapped.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.plaintext, b"region-proof");
    a.set_fault(None);

    // Region B revoked: A unwraps; WrapKey refuses (it could not wrap under every URI).
    b.revoke();
    crate::common::wait_for_state(&mut c, "k", kms_broker_client::pb::KeyState::Active).await;
    let u = c
        .unwrap_key(unwrap(w.wrapped.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.plaintext, b"region-proof");
    let e = c.wrap_key(wrap_req("k", b"x", ctx(&[]))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("REVOKED"), "{}", e.message());

    // Both gone: the key is unusable.
    a.disable();
    let st =
        crate::common::wait_for_state(&mut c, "k", kms_broker_client::pb::KeyState::Disabled).await;
    assert_eq!(st.uris.len(), 2);
    let e = c.unwrap_key(unwrap(w.wrapped.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    d.stop().await;
}

#[tokio::test]
async fn rotation_at_the_kms_keeps_old_blobs() {
    let m = mock("wrap-rotate");
    let d = Daemon::start(&one_key("mock://wrap-rotate")).await;
    let mut c = d.unix().await;
    let old = c
        .wrap_key(wrap_req("k", b"old", ctx(&[])))
        .await
        .unwrap()
        .into_inner();
    let v2 = m.rotate();
    let new = c
        .wrap_key(wrap_req("k", b"new", ctx(&[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.key_version, v2);
    assert_ne!(old.key_version, new.key_version);
    for (w, want) in [(old, &b"old"[..]), (new, &b"new"[..])] {
        let u = c
            .unwrap_key(UnwrapKeyRequest {
                wrapped: w.wrapped,
                context: ctx(&[]),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(u.plaintext, want);
        assert_eq!(u.key_version, w.key_version);
    }
    d.stop().await;
}
