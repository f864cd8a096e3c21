//! `grpc.health.v1.Health`: tonic-health's service, with one change: on shutdown every
//! `Watch` stream delivers the final NOT_SERVING and then ends. tonic-health's streams end
//! only when the reporter is dropped, so one open watcher held every SIGTERM for the whole
//! drain grace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The health service; `stopping` turns true once shutdown has set every status to
/// NOT_SERVING.
pub fn service(
    reporter: HealthReporter,
    stopping: watch::Receiver<bool>,
) -> HealthServer<ClosingHealth> {
    HealthServer::new(ClosingHealth {
        inner: HealthService::from_health_reporter(reporter),
        stopping,
    })
    // A health request names one service.
    .max_decoding_message_size(crate::limits::MAX_SMALL_REQUEST)
}

#[derive(Debug)]
pub struct ClosingHealth {
    inner: HealthService,
    stopping: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Health for ClosingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = ClosingWatch;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        let stopped = Box::pin(async move {
            // An error means the server is gone: stop too.
            let _ = stopping.wait_for(|s| *s).await.map(|_| ());
        });
        Ok(Response::new(ClosingWatch { inner, stopped }))
    }
}

/// A watch stream that ends once the server stops, after passing on every status change
/// made before that (so the last message a watcher sees is NOT_SERVING).
pub struct ClosingWatch {
    inner: <tonic_health::server::HealthService as Health>::WatchStream,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for ClosingWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosingWatch").finish_non_exhaustive()
    }
}

impl Stream for ClosingWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Pending updates first: shutdown sets NOT_SERVING before it signals `stopped`, so
        // by the time `stopped` is ready the inner stream has that update to give.
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        match self.stopped.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
