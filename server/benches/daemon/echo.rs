//! Row 4: WrapKey / UnwrapKey against a bare tonic echo of the same size, on the same
//! transport, in the same run. The echo is a stub `KeyBroker` answering WrapKey and
//! UnwrapKey at once with a real daemon answer of the same call (so the same bytes cross
//! the wire), served by a plain tonic server with the daemon's listeners (the same
//! connection caps, HTTP/2 limits and rustls config). The ratio is what the daemon's own
//! work adds: policy, envelope, KMS backend (the mock: microseconds), logging.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_broker::backend::mock::mock;
use kms_broker::config::Config;
use kms_broker::pb::key_broker_server::{KeyBroker, KeyBrokerServer};
use kms_broker::pb::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::harness::{config_text, parse, tls, unix, Daemon, Row};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 300;
const CALLERS: usize = 16;
const THROUGHPUT_CALLS: usize = 4000;

#[derive(Clone)]
pub struct Echo {
    pub wrap: WrapKeyResponse,
    pub unwrap: UnwrapKeyResponse,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl KeyBroker for Echo {
    async fn wrap_key(&self, _: Request<WrapKeyRequest>) -> Answer<WrapKeyResponse> {
        Ok(Response::new(self.wrap.clone()))
    }
    async fn unwrap_key(&self, _: Request<UnwrapKeyRequest>) -> Answer<UnwrapKeyResponse> {
        Ok(Response::new(self.unwrap.clone()))
    }
    async fn get_store_key(&self, _: Request<GetStoreKeyRequest>) -> Answer<GetStoreKeyResponse> {
        Err(Status::unimplemented("echo"))
    }
    async fn revoke_status(&self, _: Request<RevokeStatusRequest>) -> Answer<RevokeStatusResponse> {
        Err(Status::unimplemented("echo"))
    }
    async fn rotate_store_key(&self, _: Request<RotateStoreKeyRequest>) -> Answer<StoreStatus> {
        Err(Status::unimplemented("echo"))
    }
    async fn store_status(&self, _: Request<StoreStatusRequest>) -> Answer<StoreStatusResponse> {
        Err(Status::unimplemented("echo"))
    }
    async fn rewrap(&self, _: Request<RewrapRequest>) -> Answer<RewrapResponse> {
        Err(Status::unimplemented("echo"))
    }
    async fn rewrap_key(&self, _: Request<RewrapKeyRequest>) -> Answer<WrapKeyResponse> {
        Err(Status::unimplemented("echo"))
    }
    type WatchRevokeStatusStream = tokio_stream::Empty<Result<RevokeStatusEvent, Status>>;
    async fn watch_revoke_status(
        &self,
        _: Request<RevokeStatusRequest>,
    ) -> Answer<Self::WatchRevokeStatusStream> {
        Err(Status::unimplemented("echo"))
    }
    async fn import_store_key(&self, _: Request<ImportStoreKeyRequest>) -> Answer<StoreStatus> {
        Err(Status::unimplemented("echo"))
    }
    async fn drop_previous_store_key(
        &self,
        _: Request<DropPreviousStoreKeyRequest>,
    ) -> Answer<StoreStatus> {
        Err(Status::unimplemented("echo"))
    }
}

/// Serves the echo on its own Unix socket and TCP port, with the daemon's limits and TLS.
/// Returns the port and the two server tasks (aborted at the end).
pub async fn serve_echo(
    cfg: &Config,
    echo: Echo,
    sock: &Path,
) -> (u16, [tokio::task::JoinHandle<()>; 2]) {
    let l = &cfg.limits;
    let builder = || {
        tonic::transport::Server::builder()
            .timeout(l.request_timeout)
            .http2_keepalive_interval(Some(l.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(l.http2_keepalive_timeout))
            .max_concurrent_streams(l.max_concurrent_streams)
            .http2_max_header_list_size(l.max_header_list_size)
    };
    let unix_listener = tokio::net::UnixListener::bind(sock).unwrap();
    let unix_server = builder()
        .add_service(KeyBrokerServer::new(echo.clone()))
        .serve_with_incoming(kms_broker::listener::unix_incoming(
            unix_listener,
            l.max_unix_connections,
        ));
    let tls = kms_broker::tls::server_config(cfg.tls.as_ref().unwrap(), &cfg.file).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tls_server = builder()
        .add_service(KeyBrokerServer::new(echo))
        .serve_with_incoming(kms_broker::listener::tls_incoming(
            tcp,
            // A fixed TLS config: the sender's drop leaves the last value readable.
            tokio::sync::watch::channel(Arc::new(tls)).1,
            l.max_tcp_connections,
            l.tls_handshake_timeout,
        ));
    (
        port,
        [
            tokio::spawn(async move { unix_server.await.unwrap() }),
            tokio::spawn(async move { tls_server.await.unwrap() }),
        ],
    )
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn unwrap_req(wrapped: &[u8]) -> UnwrapKeyRequest {
    UnwrapKeyRequest {
        wrapped: wrapped.to_vec(),
        context: HashMap::from([("backup".into(), "b1".into())]),
    }
}

/// p50s of (daemon wrap, echo wrap, daemon unwrap, echo unwrap), in interleaved rounds so
/// that drift of the shared machine hits each alike.
async fn latencies(daemon: &Channel, echo: &Channel, wrapped: &[u8]) -> [Duration; 4] {
    use kms_broker::pb::key_broker_client::KeyBrokerClient as C;
    let (mut d, mut e) = (C::new(daemon.clone()), C::new(echo.clone()));
    let mut s: [Vec<Duration>; 4] = Default::default();
    for _ in 0..ROUNDS {
        for (i, c) in [&mut d, &mut e].into_iter().enumerate() {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                c.wrap_key(super::wrap_req()).await.unwrap();
                s[i].push(t.elapsed());
            }
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                c.unwrap_key(unwrap_req(wrapped)).await.unwrap();
                s[2 + i].push(t.elapsed());
            }
        }
    }
    s.map(p50)
}

/// WrapKey calls per second with `CALLERS` callers sharing one connection.
async fn throughput(ch: &Channel) -> f64 {
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let mut c = kms_broker::pb::key_broker_client::KeyBrokerClient::new(ch.clone());
        tasks.spawn(async move {
            for _ in 0..THROUGHPUT_CALLS / CALLERS {
                c.wrap_key(super::wrap_req()).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    (THROUGHPUT_CALLS / CALLERS * CALLERS) as f64 / t.elapsed().as_secs_f64()
}

pub async fn run(root: &Path) -> Vec<Row> {
    let name = "fleet-echo";
    mock(name).set_latency(Duration::ZERO);
    let dir = root.join("echo");
    let text = config_text(&dir, name, 0, "");
    let cfg = parse(&dir, &text);
    let d = Daemon::start(&dir, &text).await;
    let daemon_unix = unix(&d.sock).await;
    let mut c = kms_broker::pb::key_broker_client::KeyBrokerClient::new(daemon_unix.clone());
    let wrap = c.wrap_key(super::wrap_req()).await.unwrap().into_inner();
    let unwrap = c
        .unwrap_key(unwrap_req(&wrap.wrapped))
        .await
        .unwrap()
        .into_inner();
    let wrapped = wrap.wrapped.clone();
    let echo_sock = dir.join("echo.sock");
    let (echo_port, echo_tasks) = serve_echo(&cfg, Echo { wrap, unwrap }, &echo_sock).await;

    let transports = [
        ("Unix socket", daemon_unix, unix(&echo_sock).await),
        ("mTLS", tls(&dir, d.port).await, tls(&dir, echo_port).await),
    ];
    let mut rows = Vec::new();
    for (label, daemon, echo) in transports {
        // Warm both paths (connections, pools, the unwrap cache) before measuring.
        let _ = latencies(&daemon, &echo, &wrapped).await;
        let [dw, ew, du, eu] = latencies(&daemon, &echo, &wrapped).await;
        for (what, d, e) in [("WrapKey", dw, ew), ("UnwrapKey (cache on)", du, eu)] {
            let ratio = d.as_secs_f64() / e.as_secs_f64();
            rows.push(Row {
                measure: format!("{what} p50 ÷ same-size echo p50, {label}"),
                target: "≤ 1.15",
                result: format!(
                    "{ratio:.2} ({:.0} µs vs {:.0} µs)",
                    d.as_secs_f64() * 1e6,
                    e.as_secs_f64() * 1e6
                ),
                met: ratio <= 1.15,
            });
        }
        // Alternated, best of two each.
        let (mut dt, mut et) = (0f64, 0f64);
        for _ in 0..2 {
            dt = dt.max(throughput(&daemon).await);
            et = et.max(throughput(&echo).await);
        }
        let ratio = dt / et;
        rows.push(Row {
            measure: format!(
                "WrapKey throughput, {CALLERS} callers on one connection ÷ echo's, {label}"
            ),
            target: "≥ 0.85",
            result: format!("{ratio:.2} ({dt:.0}/s vs {et:.0}/s)"),
            met: ratio >= 0.85,
        });
    }
    for t in echo_tasks {
        t.abort();
    }
    d.stop().await;
    rows
}
