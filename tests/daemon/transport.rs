//! Transports and authorization: the Unix socket's mode, mutual TLS, the policy, and
//! reflection/health through grpcurl 1.8.6.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use kms_broker::backend::mock::mock;
use kms_broker::certs;
use kms_broker_client::pb::{
    GetStoreKeyRequest, RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
};
use tonic::Code;

use crate::common::standins::require_bin;
use crate::common::{my_gid, my_uid, Daemon};

fn wrap(key: &str) -> WrapKeyRequest {
    WrapKeyRequest {
        key: key.into(),
        plaintext: b"0123456789abcdef".to_vec(),
        context: HashMap::new(),
    }
}

fn body(mock_name: &str, policy: &str) -> String {
    format!(
        "[keys.open]\nuris = [\"mock://{mock_name}-open\"]\n[keys.secret]\nuris = [\"mock://{mock_name}-secret\"]\n[stores.s1]\nkey = \"open\"\n{policy}"
    )
}

#[tokio::test]
async fn socket_mode_and_uid_policy() {
    mock("tp-uid-open");
    let policy = format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"RevokeStatus\"]\nkeys = [\"open\"]\n",
        my_uid()
    );
    let d = Daemon::start(&body("tp-uid", &policy)).await;
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let mut c = d.unix().await;
    c.wrap_key(wrap("open")).await.unwrap();
    // A key the caller may not use answers exactly like a key that does not exist.
    let denied = c.wrap_key(wrap("secret")).await.unwrap_err();
    let missing = c.wrap_key(wrap("no-such-key")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(missing.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message().replace("secret", "X"),
        missing.message().replace("no-such-key", "X")
    );
    // Not granted at all.
    let e = c
        .get_store_key(GetStoreKeyRequest {
            store_id: "s1".into(),
            create: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // RevokeStatus with no key lists only what the caller may see.
    let all = c
        .revoke_status(RevokeStatusRequest { key: String::new() })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = all.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, ["open"]);
    d.stop().await;
}

#[tokio::test]
async fn gid_policy_and_another_uid_denied() {
    mock("tp-gid-open");
    let policy = format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\"]\n[[policy]]\npeer = \"gid:{}\"\nallow = [\"RevokeStatus\"]\n",
        my_uid().wrapping_add(1),
        my_gid()
    );
    let d = Daemon::start(&body("tp-gid", &policy)).await;
    let mut c = d.unix().await;
    let e = c.wrap_key(wrap("open")).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "the uid rule is for someone else"
    );
    c.revoke_status(RevokeStatusRequest { key: "open".into() })
        .await
        .unwrap();
    d.stop().await;
}

#[tokio::test]
async fn mutual_tls_identities_and_refusals() {
    let m = mock("tp-tls-open");
    let policy = format!(
        "[[policy]]\npeer = \"cert:backup-job\"\nallow = [\"WrapKey\", \"UnwrapKey\"]\nkeys = [\"open\"]\n[[policy]]\npeer = \"uid:{}\"\nallow = [\"GetStoreKey\"]\n",
        my_uid()
    );
    let d = Daemon::start(&body("tp-tls", &policy)).await;

    // The granted certificate wraps and unwraps over TCP.
    let mut ok = d.tls("backup-job").await;
    let w = ok.wrap_key(wrap("open")).await.unwrap().into_inner();
    let u = ok
        .unwrap_key(UnwrapKeyRequest {
            wrapped: w.wrapped,
            context: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.plaintext, b"0123456789abcdef");
    // GetStoreKey is never served over TCP, whatever the policy.
    let e = ok
        .get_store_key(GetStoreKeyRequest {
            store_id: "s1".into(),
            create: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Another certificate from the same CA: known, but not allowed.
    let mut other = d.tls("someone-else").await;
    assert_eq!(
        other.wrap_key(wrap("open")).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A certificate with neither SAN nor CN: no identity.
    let anon = certs::issue(&d.ca, None, &[], false).unwrap();
    let mut anon = d.tls_with(Some(&anon), &d.ca.cert).await.unwrap();
    assert_eq!(
        anon.wrap_key(wrap("open")).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // No certificate, or one from another CA: the handshake fails; nothing is served.
    let before = m.calls().encrypt;
    match d.tls_with(None, &d.ca.cert).await {
        Err(_) => {}
        Ok(mut c) => assert!(
            c.wrap_key(wrap("open")).await.is_err(),
            "a client without a certificate was served"
        ),
    }
    let rogue_ca = certs::make_ca("rogue").unwrap();
    let rogue = certs::issue(&rogue_ca, Some("backup-job"), &["backup-job"], false).unwrap();
    match d.tls_with(Some(&rogue), &d.ca.cert).await {
        Err(_) => {}
        Ok(mut c) => assert!(
            c.wrap_key(wrap("open")).await.is_err(),
            "a wrong-CA client was served"
        ),
    }
    assert_eq!(m.calls().encrypt, before);
    d.stop().await;
}

fn grpcurl(args: &[&str]) -> (bool, String) {
    let bin = require_bin("grpcurl").expect("checked by the caller");
    let out = Command::new(bin).args(args).output().expect("run grpcurl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_through_grpcurl_on_both_transports() {
    if require_bin("grpcurl").is_none() {
        return;
    }
    mock("tp-grpcurl-open");
    let policy = format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [\"RevokeStatus\"]\n[[policy]]\npeer = \"cert:ops\"\nallow = [\"RevokeStatus\"]\n",
        my_uid()
    );
    let d = Daemon::start(&body("tp-grpcurl", &policy)).await;
    let sock = d.socket.to_str().unwrap().to_owned();
    let pem = certs::issue(&d.ca, Some("ops"), &["ops"], false).unwrap();
    let dir = d.dir.join("ops");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), &pem.cert).unwrap();
    std::fs::write(dir.join("k.pem"), &pem.key).unwrap();
    std::fs::write(dir.join("ca.pem"), &d.ca.cert).unwrap();
    let (cert, key, ca) = (
        dir.join("c.pem").display().to_string(),
        dir.join("k.pem").display().to_string(),
        dir.join("ca.pem").display().to_string(),
    );
    let addr = format!("127.0.0.1:{}", d.tcp.port());

    let unix_flags = ["-plaintext", "-unix", "-authority", "localhost"];
    let tls_flags = [
        "-cacert",
        ca.as_str(),
        "-cert",
        cert.as_str(),
        "-key",
        key.as_str(),
    ];
    for (flags, target) in [
        (&unix_flags[..], sock.as_str()),
        (&tls_flags[..], addr.as_str()),
    ] {
        // grpcurl [flags] [-d JSON] TARGET VERB...
        let run = |data: Option<&str>, verb: &[&str]| {
            let mut a: Vec<&str> = flags.to_vec();
            if let Some(d) = data {
                a.extend(["-d", d]);
            }
            a.push(target);
            a.extend_from_slice(verb);
            grpcurl(&a)
        };
        let (ok, out) = run(None, &["list"]);
        assert!(ok, "{out}");
        assert!(out.contains("kmsbroker.v1.KeyBroker"), "{out}");
        assert!(out.contains("grpc.health.v1.Health"), "{out}");
        let (ok, out) = run(None, &["describe", "kmsbroker.v1.KeyBroker"]);
        assert!(ok && out.contains("GetStoreKey"), "{out}");
        let (ok, out) = run(
            Some("{\"service\":\"kmsbroker.v1.KeyBroker\"}"),
            &["grpc.health.v1.Health/Check"],
        );
        assert!(ok && out.contains("SERVING"), "{out}");
        let (ok, out) = run(
            Some("{\"key\":\"open\"}"),
            &["kmsbroker.v1.KeyBroker/RevokeStatus"],
        );
        assert!(ok && out.contains("\"key\": \"open\""), "{out}");
    }
    // Without a client certificate grpcurl gets nothing over TCP.
    let (ok, _) = grpcurl(&["-cacert", ca.as_str(), addr.as_str(), "list"]);
    assert!(!ok);
    d.stop().await;
}

#[tokio::test]
async fn health_goes_not_serving_on_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    mock("tp-health-open");
    let d = Daemon::start(&body("tp-health", "")).await;
    let ch = d.unix_channel().await;
    let mut h = HealthClient::new(ch);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: "kmsbroker.v1.KeyBroker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(d.stop());
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .expect("an update before the stream closes");
    assert_eq!(
        next.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    stopping.await.unwrap();
}

/// Lists the services and fetches the KeyBroker's file descriptor through one reflection
/// version (`v1` or `v1alpha`, whose generated types have the same shape).
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        let ask = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let requests = vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "kmsbroker.v1.KeyBroker".into(),
            )),
        ];
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect(stringify!($version))
            .into_inner();
        let services = match answers.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{}: {other:?}", stringify!($version)),
        };
        let files = match answers.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::FileDescriptorResponse(f)) => f.file_descriptor_proto,
            other => panic!("{}: {other:?}", stringify!($version)),
        };
        (services, files)
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_both_describe_the_service() {
    mock("tp-reflect-open");
    let d = Daemon::start(&body("tp-reflect", "")).await;
    let (v1_services, v1_files) = reflect!(v1, d.unix_channel().await);
    let (alpha_services, alpha_files) = reflect!(v1alpha, d.unix_channel().await);
    for (services, files) in [(&v1_services, &v1_files), (&alpha_services, &alpha_files)] {
        for want in ["kmsbroker.v1.KeyBroker", "grpc.health.v1.Health"] {
            assert!(services.iter().any(|s| s == want), "{want}: {services:?}");
        }
        // A serialized FileDescriptorProto carries its names as UTF-8.
        let text = String::from_utf8_lossy(&files.concat()).into_owned();
        for want in [
            "kmsbroker/v1/broker.proto",
            "GetStoreKey",
            "RevokeStatusResponse",
        ] {
            assert!(text.contains(want), "{want} not described");
        }
    }
    assert_eq!(
        v1_files, alpha_files,
        "both versions serve the same descriptor"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_san_without_dns_or_uri_names_no_one_even_with_a_granted_cn() {
    mock("tp-san-open");
    let policy =
        "[[policy]]\npeer = \"cert:backup-job\"\nallow = [\"WrapKey\", \"RevokeStatus\"]\n";
    let d = Daemon::start(&body("tp-san", policy)).await;
    // The CN names a granted identity, but the certificate has a SAN extension (an IP
    // address only): the SAN is what its issuer vouched for, so the CN is not used.
    let ip_only = certs::issue(&d.ca, Some("backup-job"), &["127.0.0.1"], false).unwrap();
    let mut c = d.tls_with(Some(&ip_only), &d.ca.cert).await.unwrap();
    let e = c.wrap_key(wrap("open")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // The same CN without any SAN extension is the identity.
    let cn_only = certs::issue(&d.ca, Some("backup-job"), &[], false).unwrap();
    let mut c = d.tls_with(Some(&cn_only), &d.ca.cert).await.unwrap();
    c.wrap_key(wrap("open")).await.unwrap();
    d.stop().await;
}

#[tokio::test]
async fn an_oversized_request_is_refused_before_the_service_sees_it() {
    let m = mock("tp-big-open");
    let policy = format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\"]\n",
        my_uid()
    );
    let d = Daemon::start(&body("tp-big", &policy)).await;
    let mut c = d.unix().await;
    let big = |n: usize| WrapKeyRequest {
        key: "open".into(),
        plaintext: vec![1; n],
        context: HashMap::new(),
    };
    // Within the transport's limit, the service's own check answers.
    let e = c.wrap_key(big(200 * 1024)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Above 256 KiB (tonic's default would take 4 MiB), the transport refuses it.
    let e = c.wrap_key(big(300 * 1024)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    let e = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: vec![0; 1024 * 1024],
            context: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert_eq!(m.calls().encrypt, 0);
    // The connection is still good.
    c.wrap_key(wrap("open")).await.unwrap();
    // Health and reflection take only small requests.
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let e = HealthClient::new(d.unix_channel().await)
        .check(HealthCheckRequest {
            service: "x".repeat(64 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    d.stop().await;
}

#[tokio::test]
async fn a_health_watcher_does_not_hold_shutdown_for_the_grace_period() {
    use kms_broker::config::Config;
    use kms_broker::server::Server;
    use std::time::Duration;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    mock("tp-watch-open");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certs::write_dev_certs(&dir.join("certs")).unwrap();
    // The daemon never creates its state dir.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir.join("state"))
        .unwrap();
    // A grace far longer than the hang guard below: waiting for the watcher would fail.
    let text = crate::common::config_text(dir, &body("tp-watch", ""))
        .replace("shutdown_grace = \"2s\"", "shutdown_grace = \"120s\"");
    let path = dir.join("kms.toml");
    let server = Server::bind(Config::parse(&path, &text).unwrap())
        .await
        .unwrap();
    let socket = server.unix_path().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let ch = crate::common::try_unix_channel(&socket).await.unwrap();
    let mut watch = HealthClient::new(ch)
        .watch(HealthCheckRequest {
            service: "kmsbroker.v1.KeyBroker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    stop.send(()).unwrap();
    let seen = crate::common::must_return("the watcher's end", Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Ok(Some(m)) = watch.message().await {
            seen.push(m.status);
        }
        seen
    })
    .await;
    assert_eq!(seen.last(), Some(&(ServingStatus::NotServing as i32)));
    crate::common::must_return("the drain", Duration::from_secs(30), serving)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_hung_kms_is_answered_by_the_kms_deadline_not_cut_by_the_request_timeout() {
    use std::time::Duration;
    let m = mock("tp-hung-open");
    let policy = format!(
        "[kms]\nattempt_timeout = \"200ms\"\ndeadline = \"500ms\"\nmax_attempts = 2\n[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\"]\n",
        my_uid()
    );
    let d = Daemon::start(&body("tp-hung", &policy)).await;
    let mut c = d.unix().await;
    m.set_latency(Duration::from_secs(60));
    // The request timeout is derived above the KMS deadline, so the caller hears the
    // KMS's verdict (UNAVAILABLE), not a cut call (CANCELLED / DEADLINE_EXCEEDED).
    let e = crate::common::must_return("a call to a hung KMS", Duration::from_secs(20), async {
        c.wrap_key(wrap("open")).await.unwrap_err()
    })
    .await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    m.set_latency(Duration::ZERO);
    d.stop().await;
}
