//! One TCP connection joined to one stream, for callers that pick the stream themselves
//! (a stream with a header of their own, a pool of sessions of their own).

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qymux_transport::Stream;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::pump::Conn;
use crate::stats::Counters;

/// How [`splice`] forwards one connection.
#[derive(Debug, Clone)]
pub struct SpliceOptions {
    buffer_size: usize,
    idle_timeout: Option<Duration>,
}

impl Default for SpliceOptions {
    fn default() -> Self {
        Self {
            buffer_size: 64 * 1024,
            idle_timeout: None,
        }
    }
}

impl SpliceOptions {
    /// A connection that moves no byte either way for this long is reset on both sides
    /// (default: none). It is checked a few times per period, so it fires between the
    /// timeout and 1.25 times it.
    pub fn idle_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// The copy buffer of each direction, in bytes (default 64 KiB, at least 1 byte).
    pub fn buffer_size(&mut self, bytes: usize) -> &mut Self {
        self.buffer_size = bytes.max(1);
        self
    }
}

/// What [`splice`] moved.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes read from the TCP connection and written to the stream.
    pub tcp_to_stream: u64,
    /// Bytes read from the stream and written to the TCP connection.
    pub stream_to_tcp: u64,
}

/// A connection that [`splice`] ended with an error, and what it had moved by then.
#[derive(Debug)]
pub struct SpliceError {
    /// What failed, on which end ([`io::ErrorKind::TimedOut`] for the idle timeout).
    pub error: io::Error,
    /// What was moved before it failed.
    pub moved: Spliced,
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the spliced connection failed after {} bytes to the stream and {} back",
            self.moved.tcp_to_stream, self.moved.stream_to_tcp
        )
    }
}

impl std::error::Error for SpliceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Copies between `tcp` and `stream` both ways until both directions ended, with the
/// guarantees of the [crate docs](crate): byte-exact, half-close passed through, and on
/// any error (or the idle timeout, or the future being dropped) the stream aborted and
/// the TCP connection reset, so neither end mistakes a failure for the end of data.
/// Sets `TCP_NODELAY` on `tcp`.
pub async fn splice<T: Stream>(
    tcp: TcpStream,
    stream: T,
    options: SpliceOptions,
) -> Result<Spliced, SpliceError> {
    let _ = tcp.set_nodelay(true);
    let counters = Counters::default();
    let mut conn = Conn::new(tcp, stream);
    let moved = |c: &Counters| Spliced {
        tcp_to_stream: c.tcp_to_stream.load(Ordering::Relaxed),
        stream_to_tcp: c.stream_to_tcp.load(Ordering::Relaxed),
    };
    let result = {
        let pump = conn.pump(options.buffer_size.max(1), &counters);
        match options.idle_timeout {
            None => pump
                .await
                .map_err(|e| (io::ErrorKind::Other, e.to_string())),
            Some(idle) => {
                tokio::select! {
                    r = pump => r.map_err(|e| (io::ErrorKind::Other, e.to_string())),
                    () = idle_watch(&counters, idle) => Err((
                        io::ErrorKind::TimedOut,
                        format!("no byte moved either way for {idle:?} (idle timeout)"),
                    )),
                }
            }
        }
    };
    match result {
        Ok(()) => {
            conn.finish();
            Ok(moved(&counters))
        }
        Err((kind, message)) => {
            drop(conn); // resets the TCP connection and aborts the stream
            Err(SpliceError {
                error: io::Error::new(kind, message),
                moved: moved(&counters),
            })
        }
    }
}

/// Resolves once no byte moved for `idle`.
async fn idle_watch(counters: &Counters, idle: Duration) {
    let total = || {
        counters.tcp_to_stream.load(Ordering::Relaxed)
            + counters.stream_to_tcp.load(Ordering::Relaxed)
    };
    let step = (idle / 4).max(Duration::from_millis(1));
    let mut last = total();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let now = total();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            return;
        }
    }
}
