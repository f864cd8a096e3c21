//! The client against the real daemon over TCP with mutual TLS.

mod common;

use std::path::{Path, PathBuf};

use common::{code, fast_options, returns, Setup, ALL, LONG_STARTUP};
use kms_broker::certs::{issue, make_ca, Pem};
use kms_broker_client::{Client, ClientError, ClientOptions, Code, TlsFiles};

const IDENTITY: &str = "client-test-node";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    // 0600: the daemon refuses a private key that group or others can read.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write PEM");
    path
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate for
/// [`IDENTITY`]; returns the client's files.
fn certs(dir: &Path) -> TlsFiles {
    let ca = make_ca("client-test CA").expect("CA");
    let server = issue(&ca, Some("localhost"), &["localhost", "127.0.0.1"], true).expect("server");
    let client = issue(&ca, Some(IDENTITY), &[IDENTITY], false).expect("client");
    write(dir, "server.pem", &server.cert);
    write(dir, "server-key.pem", &server.key);
    TlsFiles::new(
        write(dir, "ca.pem", &ca.cert),
        write(dir, "client.pem", &client.cert),
        write(dir, "client-key.pem", &client.key),
    )
}

fn tls_config(t: &Setup) -> String {
    let d = t.dir.path().display();
    let server = "tcp_listen = \"127.0.0.1:0\"";
    let extra = format!(
        r#"
[[policy]]
peer = "cert:{IDENTITY}"
allow = ["WrapKey", "UnwrapKey", "RevokeStatus"]

[tls]
ca = "{d}/ca.pem"
cert = "{d}/server.pem"
key = "{d}/server-key.pem"
"#
    );
    t.config(ALL, server, &extra)
}

async fn https_client(addr: std::net::SocketAddr, tls: TlsFiles) -> Client {
    let opts = ClientOptions {
        tls: Some(tls),
        ..fast_options(LONG_STARTUP)
    };
    Client::connect(&format!("https://{addr}"), opts)
        .await
        .expect("readable TLS files")
}

#[tokio::test]
async fn wrap_and_unwrap_over_mtls() {
    let t = Setup::new("tls-round-trip");
    let files = certs(t.dir.path());
    let daemon = t.start_with(&tls_config(&t)).await;
    let addr = daemon.tcp.expect("tcp listener");
    let client = https_client(addr, files.clone()).await;

    let wrapped = client
        .wrap_key("k1", b"over tls", [("n", "1")])
        .await
        .expect("wrap");
    let plain = client
        .unwrap_key(&wrapped.wrapped, [("n", "1")])
        .await
        .expect("unwrap");
    assert_eq!(plain.plaintext.expose(), b"over tls");

    // Store keys never travel over TCP, whatever the policy says.
    let res = returns(client.get_store_key("s1", true)).await;
    assert_eq!(code(res), Code::PermissionDenied);

    // Verifying the server under an explicit name works too.
    let named = TlsFiles {
        server_name: Some("localhost".into()),
        ..files
    };
    let client = https_client(addr, named).await;
    assert!(client.revoke_status(None).await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let t = Setup::new("tls-foreign");
    let files = certs(t.dir.path());
    let daemon = t.start_with(&tls_config(&t)).await;
    let addr = daemon.tcp.expect("tcp listener");

    let other_ca: Pem = make_ca("someone else").expect("CA");
    let foreign = issue(&other_ca, Some(IDENTITY), &[IDENTITY], false).expect("client");
    let other = tempfile::tempdir().expect("tempdir");
    let foreign_files = TlsFiles {
        cert: write(other.path(), "c.pem", &foreign.cert),
        key: write(other.path(), "k.pem", &foreign.key),
        ..files
    };
    let client = https_client(addr, foreign_files).await;
    let err = returns(client.wrap_key("k1", b"x", [("n", "1")]))
        .await
        .err();
    // The handshake (or the first read after it, in TLS 1.3) fails: never a daemon answer.
    // Not retried (the same files fail the same way), although the client's start-up
    // deadline is long: `returns` would fail a retried call.
    assert!(matches!(err, Some(ClientError::Tls { .. })), "{err:?}");
    daemon.stop().await;
}
