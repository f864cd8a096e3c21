//! One call's skeleton, shared by every handler: identify the peer, run the work, then
//! log, audit and count the outcome and convert the error in the one place that does.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::Service;
use crate::error::Error;
use crate::log_limit::{caller_text, LogLimit};
use crate::peer::Peer;
use crate::policy::Operation;

/// Refusal and failure lines per second, each.
static REFUSALS: LogLimit = LogLimit::new(20);
static FAILURES: LogLimit = LogLimit::new(20);

impl Service {
    /// One call: identifies the peer, runs `work` with the request body, the peer (or why
    /// it could not be identified: `work` checks it after parsing, as CONTRACT.md orders)
    /// and the target to record (`work` sets it once it knows it), then [`Self::finish`].
    pub(super) async fn serve<B, T>(
        &self,
        rpc: &'static str,
        op: Operation,
        req: Request<B>,
        work: impl AsyncFnOnce(B, &Result<Peer, Error>, &mut String) -> Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let peer = Peer::from_request(&req);
        let mut target = String::new();
        let result = work(req.into_inner(), &peer, &mut target).await;
        self.finish(rpc, op, &target, peer.as_ref().ok(), started, result)
    }

    /// Logs, audits and counts one call's outcome and converts the error in the one place
    /// that does. `rpc` is the RPC's name, which logs, the audit trail and metrics show;
    /// `op` the policy operation that governs it (they differ for RewrapKey and
    /// WatchRevokeStatus).
    fn finish<T>(
        &self,
        rpc: &'static str,
        op: Operation,
        target: &str,
        peer: Option<&Peer>,
        started: Instant,
        result: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        let elapsed = started.elapsed();
        let code = result
            .as_ref()
            .map_or_else(Error::code, |_| tonic::Code::Ok);
        self.inner.observer.call(crate::observe::Call {
            rpc,
            op,
            target,
            peer,
            code,
            latency: elapsed,
            kms_requests: crate::kms_request::take(),
        });
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        // The peer and target texts are made only for a line that is written: a success is
        // logged at `debug`, off in production, and formatting them cost every call.
        let peer = || {
            peer.map(|p| p.to_string())
                .unwrap_or_else(|| "unidentified".into())
        };
        match result {
            Ok(v) => {
                tracing::debug!(op = rpc, target = caller_text(target), peer = %peer(), outcome = "OK", latency_ms, "key operation");
                Ok(Response::new(v))
            }
            Err(e) => {
                let code = e.code();
                let (target, peer) = (caller_text(target), peer());
                if code == tonic::Code::Internal {
                    if let Some(suppressed) = FAILURES.admit() {
                        tracing::error!(op = rpc, target, %peer, outcome = ?code, latency_ms, error = %e, suppressed, "key operation failed");
                    }
                } else if let Some(suppressed) = REFUSALS.admit() {
                    tracing::info!(op = rpc, target, %peer, outcome = ?code, latency_ms, error = %e, suppressed, "key operation refused");
                }
                Err(e.into())
            }
        }
    }
}
