//! Where every finished call goes besides its answer: the audit trail and the metrics.
//!
//! [`Ops`] is opened at bind (a bad audit path or a taken metrics port fails the start);
//! [`Ops::start`] hands the service its [`Observer`], which `service::finish` calls once per
//! call, and [`Running::close`] flushes the trail at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::Audit;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::policy::Operation;

/// The gRPC code's canonical name, as in `kms_broker_calls_total{code}` and the trail.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The per-call hook; cheap to clone. Without `[audit]` and `[metrics]` it does nothing.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    audit: Option<Audit>,
    metrics: Option<Arc<Metrics>>,
}

/// One finished call, as the audit trail and the metrics see it.
#[derive(Debug)]
pub struct Call<'a> {
    /// The RPC's name.
    pub rpc: &'static str,
    /// The policy operation that governs it.
    pub op: Operation,
    /// The key name or store id the caller sent.
    pub target: &'a str,
    pub peer: Option<&'a Peer>,
    pub code: tonic::Code,
    pub latency: Duration,
    /// The KMS's request ids ([`crate::kms_request`]).
    pub kms_requests: Vec<String>,
}

impl Observer {
    pub fn call(&self, call: Call<'_>) {
        if let Some(m) = &self.metrics {
            m.call(call.rpc, call.code, call.latency);
        }
        if let Some(a) = &self.audit {
            a.record(call);
        }
    }
}

/// The audit trail and the metrics listener, opened at bind.
#[derive(Debug)]
pub struct Ops {
    audit: Option<Audit>,
    metrics: Option<TcpListener>,
}

impl Ops {
    pub async fn bind(config: &Config) -> Result<Ops, ConfigError> {
        let audit = match &config.audit {
            Some(c) => Some(Audit::open(c.clone(), &config.file)?),
            None => None,
        };
        let metrics = match &config.metrics {
            Some(m) => {
                let l = TcpListener::bind(m.listen).await.map_err(|e| ConfigError {
                    file: config.file.clone(),
                    field: "metrics.listen".into(),
                    problem: format!("cannot listen on {}: {e}", m.listen),
                    fix: "choose a free address and port".into(),
                })?;
                if !m.listen.ip().is_loopback() {
                    tracing::warn!(addr = %m.listen, "metrics are served as plain HTTP beyond loopback; restrict who can reach this port");
                }
                Some(l)
            }
            None => None,
        };
        Ok(Ops { audit, metrics })
    }

    /// The audit trail, with `[audit]`.
    pub fn audit(&self) -> Option<Audit> {
        self.audit.clone()
    }

    /// The bound metrics address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts the metrics listener (until `stop`) and returns the calls' hook.
    pub fn start(
        self,
        live: crate::live::Live,
        stop: watch::Receiver<bool>,
    ) -> (Observer, Running) {
        let metrics = self.metrics.map(|listener| {
            let lost = self.audit.as_ref().map(|a| a.lost_handle());
            let m = Arc::new(Metrics::new(live, lost));
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving Prometheus metrics on /metrics");
            }
            tokio::spawn(crate::metrics::http::serve(listener, m.clone(), stop));
            m
        });
        let observer = Observer {
            audit: self.audit.clone(),
            metrics,
        };
        (observer, Running { audit: self.audit })
    }
}

/// What shutdown must close.
#[derive(Debug)]
pub struct Running {
    audit: Option<Audit>,
}

impl Running {
    /// Writes the queued audit records and fsyncs (off the async runtime's threads). A
    /// disk that hangs does not hang the exit: after 10 s the daemon stops without waiting.
    pub async fn close(self) {
        if let Some(a) = self.audit {
            let closing = tokio::task::spawn_blocking(move || a.close());
            if tokio::time::timeout(Duration::from_secs(10), closing)
                .await
                .is_err()
            {
                tracing::error!("audit trail: the writer did not finish within 10s (a hung disk?); records still queued may be lost");
            }
        }
    }
}
