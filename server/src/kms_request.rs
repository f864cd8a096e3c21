//! The KMS request ids of one KeyBroker call, for its audit record.
//!
//! A KMS's own request id is what its audit log (CloudTrail's `requestID`, say) files the
//! call under: with it in our trail, an auditor can join "node process X unwrapped with key
//! K" to the KMS's "role R decrypted with key K". The ids travel in a task-local collector
//! rather than through every return type: [`Scoped`] opens one around each KeyBroker call,
//! a backend that has an id notes it ([`note`]) wherever its SDK exposes it, on success and
//! on failure, and the call's audit record takes them ([`take`]). A KMS call made for
//! another caller's request (a coalesced unwrap) is noted by the call that made it; calls
//! outside a scope (the poller) are not noted.
//!
//! Who has one: AWS (`x-amzn-RequestId`, through `RequestId`), Vault and OpenBao (the
//! response's `request_id`, read in `backend/vault/exec.rs`) and the mock. Google Cloud KMS's
//! REST answers carry none (see the README).

use std::cell::RefCell;
use std::task::{Context, Poll};

use tokio::task::futures::TaskLocalFuture;

use tonic::server::NamedService;

/// At most this many ids per call (retries and hedges each make one); more are dropped.
const MAX_IDS: usize = 8;
/// An id longer than this is cut (AWS's are 36 characters).
const MAX_LEN: usize = 100;

tokio::task_local! {
    static IDS: RefCell<Vec<String>>;
}

/// The ids noted so far in this call, taken (the call's end).
pub fn take() -> Vec<String> {
    IDS.try_with(|ids| ids.take()).unwrap_or_default()
}

/// A gRPC service whose every call runs in its own collector.
#[derive(Debug, Clone)]
pub struct Scoped<S>(pub S);

impl<S: NamedService> NamedService for Scoped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R> tower::Service<R> for Scoped<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    // The inner future itself, in the collector's scope: no allocation of its own per call.
    type Future = TaskLocalFuture<RefCell<Vec<String>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        IDS.scope(RefCell::new(Vec::new()), self.0.call(req))
    }
}

/// Notes a KMS request id for the call this task serves. Not in a call: nothing.
pub fn note(id: &str) {
    // A KMS's answer is not trusted to be short or printable: it lands in a JSON record.
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
        .take(MAX_LEN)
        .collect();
    if id.is_empty() {
        return;
    }
    let _ = IDS.try_with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.len() < MAX_IDS {
            ids.push(id);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `call` in its own collector, as [`Scoped`] runs a KeyBroker call; its output and the
    /// ids [`take`] finds at its end, as `Service::finish` does.
    async fn scoped<F: std::future::Future>(call: F) -> (F::Output, Vec<String>) {
        IDS.scope(RefCell::new(Vec::new()), async { (call.await, take()) })
            .await
    }

    #[tokio::test]
    async fn ids_noted_in_a_call_are_its_own_bounded_and_clean() {
        let (out, ids) = scoped(async {
            note("req-1");
            // Nested futures of the same task (hedged unwraps join them) share the call's ids.
            futures_util::future::join(async { note("req-2") }, async {
                note("bad\n\"id\"\u{1b}[31m")
            })
            .await;
            note(&"x".repeat(1000));
            note("\n\n");
            7
        })
        .await;
        assert_eq!(out, 7);
        assert_eq!(ids[..3], ["req-1", "req-2", "badid31m"]);
        assert_eq!(ids[3].len(), MAX_LEN);
        assert_eq!(ids.len(), 4, "{ids:?}");

        let (_, many) = scoped(async {
            for i in 0..20 {
                note(&i.to_string());
            }
        })
        .await;
        assert_eq!(many.len(), MAX_IDS);
        // Outside a call: nothing is kept, nothing panics.
        note("orphan");
        let (_, none) = scoped(async {}).await;
        assert!(none.is_empty());
    }
}
