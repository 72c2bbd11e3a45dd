//! Lingering close, as nginx does it.
//!
//! When the service answers before it has read a request's body (a body
//! refused with 413, declared too large or over the limit while streaming),
//! hyper closes the connection after the answer. Closing a socket with
//! unread data makes the kernel send a reset, and a client still sending
//! (Python's `http.client` and `requests`, browsers: they send the whole
//! body before they read) gets a broken pipe or a reset instead of the
//! answer. So the closing connection first sends its FIN after the answer,
//! then reads and discards what the client still sends until it closes or
//! a bound is reached, and only then closes.
//!
//! It is done in the IO's `poll_shutdown`, which hyper calls once the
//! connection is done and its answers are flushed (never on errors, such as
//! a head not complete within the header read timeout: those connections
//! are still dropped at once). A client that has already closed its side,
//! the end of most connections, costs one read that returns end-of-file.
//! Draining stops when the service shuts down: the connections that the
//! shutdown closes need none, and the shutdown does not wait for clients.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The longest a closing connection is drained (nginx's `lingering_time`):
/// room for a client on a slow link to finish sending a refused upload of a
/// few MiB, and half of what a slow head may hold a connection by default
/// (`REQUEST_TIMEOUT_SECONDS`).
pub const LINGER_TIME: Duration = Duration::from_secs(30);
/// The drain stops when the client sends nothing for this long (nginx's
/// `lingering_timeout`): a client that is not sending needs no lingering.
pub const LINGER_IDLE: Duration = Duration::from_secs(5);
/// The most that is read and discarded: eight times the 8 MiB uploads seen
/// refused, so that a client cannot make the service read at full speed
/// for all of `LINGER_TIME`.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// How much is read at a time while draining.
const DRAIN_CHUNK: usize = 16 * 1024;

/// A stream whose shutdown lingers: it shuts down the write half, then
/// reads and discards until the peer closes, a bound is reached or `stop`
/// is cancelled. Reads and writes go to the stream unchanged.
pub struct LingeringClose<S> {
    stream: S,
    stop: CancellationToken,
    drain: Option<Drain>,
}

impl<S> LingeringClose<S> {
    pub fn new(stream: S, stop: CancellationToken) -> Self {
        Self {
            stream,
            stop,
            drain: None,
        }
    }
}

/// The bounds of one drain: one timer, at the idle deadline or the end of
/// `LINGER_TIME` if that is sooner, the bytes left to discard, and the
/// service's shutdown.
struct Drain {
    end: Instant,
    timer: Pin<Box<Sleep>>,
    left: u64,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drain {
    fn new(stop: CancellationToken) -> Self {
        let now = Instant::now();
        Self {
            end: now + LINGER_TIME,
            timer: Box::pin(tokio::time::sleep_until(now + LINGER_IDLE)),
            left: LINGER_BYTES,
            stopped: Box::pin(stop.cancelled_owned()),
        }
    }

    /// Ready once the peer closed (or reset) its side, a bound is reached or
    /// the service stops.
    fn poll<R: AsyncRead + Unpin>(&mut self, reader: &mut R, cx: &mut Context<'_>) -> Poll<()> {
        let mut chunk = [0; DRAIN_CHUNK];
        loop {
            if self.timer.as_mut().poll(cx).is_ready() || self.stopped.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            let mut read = ReadBuf::new(&mut chunk);
            let read = match ready!(Pin::new(&mut *reader).poll_read(cx, &mut read)) {
                Ok(()) => read.filled().len() as u64,
                Err(_) => 0,
            };
            if read == 0 {
                return Poll::Ready(());
            }
            self.left = self.left.saturating_sub(read);
            if self.left == 0 {
                return Poll::Ready(());
            }
            let idle_deadline = (Instant::now() + LINGER_IDLE).min(self.end);
            self.timer.as_mut().reset(idle_deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LingeringClose<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Sends the FIN (after what was written), then drains; always `Ok`
    /// once the FIN is sent, whatever ended the drain.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let drain = match &mut this.drain {
            Some(drain) => drain,
            None => {
                ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                this.drain.insert(Drain::new(this.stop.clone()))
            }
        };
        drain.poll(&mut this.stream, cx).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::task::JoinHandle;

    /// The service's end of a connection, lingering until the service stops
    /// (never, unless the test cancels `stop`).
    fn service_end(stream: DuplexStream) -> LingeringClose<DuplexStream> {
        LingeringClose::new(stream, CancellationToken::new())
    }

    /// A connection whose client end writes `chunk` every `pause` until its
    /// writes fail, and returns how much it wrote; and the service's end.
    /// The client end is kept open for as long as it writes.
    fn client_sending(chunk: usize, pause: Duration) -> (DuplexStream, JoinHandle<u64>) {
        let (service, mut client) = duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let data = vec![b'x'; chunk];
            let mut written = 0;
            while client.write_all(&data).await.is_ok() {
                written += chunk as u64;
                tokio::time::sleep(pause).await;
            }
            written
        });
        (service, writer)
    }

    /// Shuts `service` down and returns how long that took.
    async fn linger(service: &mut LingeringClose<DuplexStream>) -> Duration {
        let started = Instant::now();
        service.shutdown().await.unwrap();
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn drains_until_the_client_closes() {
        let (service, mut client) = duplex(64 * 1024);
        let mut service = service_end(service);
        let client = tokio::spawn(async move {
            // The FIN comes first: the client reads to the end, then sends
            // its whole 8 MiB body, all of it accepted, then closes.
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            client.write_all(&vec![b'x'; 8 << 20]).await.unwrap();
        });
        assert_eq!(linger(&mut service).await, Duration::ZERO);
        client.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_is_cut_after_the_idle_time() {
        let (service, _stalled) = duplex(64);
        let mut service = service_end(service);
        assert_eq!(linger(&mut service).await, LINGER_IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_stops_when_the_service_stops() {
        let (service, writer) = client_sending(1, Duration::from_millis(100));
        let stop = CancellationToken::new();
        let mut service = LingeringClose::new(service, stop.clone());
        let stopping = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        });
        assert_eq!(linger(&mut service).await, Duration::from_secs(1));
        stopping.await.unwrap();
        drop(service);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_is_cut_after_the_linger_time() {
        let (service, writer) = client_sending(1, LINGER_IDLE / 2);
        let mut service = service_end(service);
        assert_eq!(linger(&mut service).await, LINGER_TIME);
        drop(service);
        let written = writer.await.unwrap();
        assert!(written >= 12, "a byte every 2.5 s for 30 s, got {written}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_client_is_cut_after_the_byte_limit() {
        let (service, writer) = client_sending(64 * 1024, Duration::ZERO);
        let mut service = service_end(service);
        assert!(linger(&mut service).await < LINGER_IDLE);
        drop(service);
        let written = writer.await.unwrap();
        assert!(
            (LINGER_BYTES..LINGER_BYTES + 256 * 1024).contains(&written),
            "wrote {written} bytes"
        );
    }
}
