//! The daemon's own accept loops, for both listeners, so that no caller can take what the
//! others need:
//!
//! - a connection is accepted only with a permit from its listener's semaphore (TCP's cap
//!   well below the open-file limit, the Unix socket's separate and higher): at the cap,
//!   further clients wait in the kernel's backlog and cost no descriptor;
//! - TCP: TCP_NODELAY, then the TLS handshake under a timeout, each in its own task, so a
//!   client that sends three bytes and stalls holds one permit for at most the timeout and
//!   never blocks the accept loop;
//! - an accept that fails for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM) backs off instead of spinning, and is logged at most once a second;
//! - the permit travels with the stream ([`Permitted`]) and is released when the
//!   connection closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// How long an accept loop sleeps after running out of descriptors or memory: long enough
/// not to spin, short enough that a freed descriptor is used promptly.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A connection and the permit it holds; the permit is released when tonic drops the
/// connection. Reads, writes and the peer's identity pass straight through.
#[derive(Debug)]
pub struct Permitted<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: Connected> Connected for Permitted<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Permitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Permitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs a recurring problem at most once per second, with how many were left unlogged.
#[derive(Debug)]
struct Throttled {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Throttled {
            what,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(listener = self.what, %error, suppressed = self.suppressed, "accept failed; backing off");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Errors that concern only the one connection being accepted (it was reset or aborted
/// before we took it): go on at once. Anything else, out of descriptors or memory first
/// among them, backs off.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepts with `accept`, backing off on errors that would otherwise make the loop spin.
async fn accept_with_backoff<T, F, Fut>(log: &mut Throttled, mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(conn) => return conn,
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                log.warn(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The Unix socket's connections, at most `cap` at once. Ends never; tonic drops it (and
/// with it the listener) when it stops accepting.
pub fn unix_incoming(
    listener: UnixListener,
    cap: usize,
) -> impl Stream<Item = io::Result<Permitted<UnixStream>>> + Send + 'static {
    let state = (
        listener,
        Arc::new(Semaphore::new(cap)),
        Throttled::new("unix"),
    );
    futures_util::stream::unfold(state, |(listener, permits, mut log)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        let (stream, _) = accept_with_backoff(&mut log, || listener.accept()).await;
        let conn = Permitted {
            inner: stream,
            _permit: permit,
        };
        Some((Ok(conn), (listener, permits, log)))
    })
}

/// TCP connections that completed the mutual-TLS handshake within `handshake_timeout`, at
/// most `cap` at once (handshaking or established). The accept loop runs in its own task
/// and stops, closing the port, when tonic drops the returned stream.
pub fn tls_incoming(
    listener: TcpListener,
    tls: crate::live::LiveTls,
    cap: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Permitted<TlsStream<TcpStream>>>> + Send + 'static {
    let (tx, rx) = mpsc::channel(cap.clamp(1, 64));
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(cap));
        let mut log = Throttled::new("tcp");
        loop {
            let next = async {
                let permit = permits.clone().acquire_owned().await.ok()?;
                let (stream, _) = accept_with_backoff(&mut log, || listener.accept()).await;
                Some((stream, permit))
            };
            let (stream, permit) = tokio::select! {
                next = next => match next {
                    Some(next) => next,
                    None => return,
                },
                // tonic stopped accepting: drop the listener now, so the port closes.
                _ = tx.closed() => return,
            };
            // Without TCP_NODELAY, a response's HEADERS, DATA and trailers frames wait on
            // the peer's delayed ACK: ~40 ms per call (measured with k6).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
            // The config in force at this handshake: a reload's new certificate and CA apply
            // from the next connection on; established sessions keep theirs.
            let acceptor = TlsAcceptor::from(tls.borrow().clone());
            let tx = tx.clone();
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            tokio::spawn(async move {
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let conn = Permitted {
                            inner: tls,
                            _permit: permit,
                        };
                        // A closed channel means the server is stopping: the connection
                        // (and its permit) is simply dropped.
                        let _ = tx.send(Ok(conn)).await;
                    }
                    // A refused certificate or a stalled client: the connection is
                    // dropped here. Debug level: any client can cause these at will.
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?handshake_timeout, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resource_errors_back_off() {
        for code in [
            rustix::io::Errno::MFILE,
            rustix::io::Errno::NFILE,
            rustix::io::Errno::NOBUFS,
            rustix::io::Errno::NOMEM,
        ] {
            assert!(!per_connection(&io::Error::from(code)), "{code:?}");
        }
        assert!(per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn the_accept_loop_sleeps_instead_of_spinning_on_emfile() {
        let mut log = Throttled::new("test");
        let mut calls = 0u32;
        let start = tokio::time::Instant::now();
        let got = accept_with_backoff(&mut log, || {
            calls += 1;
            let r = if calls < 5 {
                Err(io::Error::from(rustix::io::Errno::MFILE))
            } else {
                Ok(calls)
            };
            async move { r }
        })
        .await;
        assert_eq!(got, 5);
        assert_eq!(start.elapsed(), ACCEPT_BACKOFF * 4);
        assert_eq!(
            log.suppressed, 3,
            "one line for four failures within a second"
        );
    }

    #[tokio::test]
    async fn the_unix_cap_holds_further_clients_in_the_backlog_until_one_closes() {
        use futures_util::StreamExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let incoming = unix_incoming(UnixListener::bind(&path).unwrap(), 2);
        let mut incoming = Box::pin(incoming);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(UnixStream::connect(&path).await.unwrap());
        }
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // The third client is connected (the kernel's backlog) but not accepted.
        let third = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted over the cap"
        );
        // Closing one connection releases its permit.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), incoming.next()).await;
        assert!(
            matches!(third, Ok(Some(Ok(_)))),
            "the freed permit was not reused"
        );
    }
}
