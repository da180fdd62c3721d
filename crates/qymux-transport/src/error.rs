//! The one error type shared by every Qymux backend.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::escape::PeerText;
use crate::proxy::ProxyError;

/// A Qymux result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can act on.
///
/// Every backend reports failures with this type, so code that handles errors works the
/// same over QUIC and TCP. It is cheap to clone (I/O errors are shared behind an [`Arc`]),
/// so one failure can be reported to every waiter of a session.
///
/// It converts into [`io::Error`] with a fitting [`io::ErrorKind`]; the original error can
/// be recovered from the `io::Error` with [`io::Error::get_ref`] and `downcast_ref`.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The transport connection (TCP connect, UDP socket) could not be made.
    #[error("connecting to {addr} failed")]
    Connect {
        /// The address that was dialed.
        addr: String,
        /// Why the connection failed.
        #[source]
        source: Arc<io::Error>,
    },
    /// The TLS or QUIC handshake failed.
    #[error("handshake failed")]
    Handshake(#[from] HandshakeError),
    /// An operation did not finish within its bound.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which bound ran out.
        what: TimeoutKind,
        /// The configured bound.
        after: Duration,
    },
    /// A configured limit refused the operation (it is not queued).
    #[error("limit reached: {0}")]
    LimitReached(Limit),
    /// The peer closed the session cleanly (yamux GoAway, QUIC CONNECTION_CLOSE, TLS close).
    #[error("session closed by peer{}", reason_suffix(.0))]
    ClosedByPeer(Option<String>),
    /// This side closed the session; the operation cannot run any more.
    #[error("session closed locally")]
    Closed,
    /// The peer aborted the stream (yamux RST, QUIC RESET_STREAM / STOP_SENDING).
    #[error("stream reset by peer")]
    StreamReset,
    /// The peer broke the wire protocol, or sent bytes that are not Qymux at all.
    #[error("protocol violation: {}", PeerText(.0))]
    Protocol(String),
    /// An I/O error on the underlying connection.
    #[error("i/o error on the connection")]
    Io(#[source] Arc<io::Error>),
    /// The proxy ([`Options::proxy`](crate::Options::proxy)) did not open a tunnel to the
    /// server: unreachable, credentials refused, the target refused (with what the proxy
    /// answered), or an answer that is too long or not the protocol.
    #[error("proxy {proxy} did not open a tunnel to {target}")]
    Proxy {
        /// The proxy, credentials redacted.
        proxy: String,
        /// The server that was dialed through it.
        target: String,
        /// What went wrong.
        #[source]
        error: ProxyError,
    },
    /// The configuration cannot work (bad option value, missing certificate, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn reason_suffix(reason: &Option<String>) -> String {
    match reason {
        // The peer chose these words: escaped, so they cannot forge log lines.
        Some(r) if !r.is_empty() => format!(": {}", PeerText(r)),
        _ => String::new(),
    }
}

impl Error {
    /// Wraps an I/O error. An `io::Error` that already carries a Qymux [`Error`] is
    /// unwrapped instead of being nested.
    pub fn io(err: io::Error) -> Self {
        if err
            .get_ref()
            .and_then(|e| e.downcast_ref::<Error>())
            .is_some()
        {
            match err.into_inner().map(|b| b.downcast::<Error>()) {
                Some(Ok(inner)) => return *inner,
                // Unreachable in practice: checked above.
                _ => return Error::Protocol("malformed wrapped error".into()),
            }
        }
        Error::Io(Arc::new(err))
    }

    /// Whether the operation ran out of time: a Qymux bound ([`Error::Timeout`]: connect,
    /// handshake, dead-peer detection, graceful close), or the operating system or a proxy
    /// reporting [`io::ErrorKind::TimedOut`] for the connection.
    ///
    /// A timeout says nothing was heard in time, not that anything was refused: the peer
    /// may be down, overloaded, or behind a network that drops packets.
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Connect { source, .. } | Error::Io(source) => {
                source.kind() == io::ErrorKind::TimedOut
            }
            Error::Proxy { error, .. } => error.io_kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// Whether doing the same again later (a new dial, a new session, a new stream) may
    /// succeed without changing anything on this side: the server could not be reached or
    /// did not answer in time, the session or connection was lost, the peer reset the
    /// stream, or a limit was full for now.
    ///
    /// Not retryable: failures that repeat until someone changes a setting or a
    /// certificate: a failed handshake (an untrusted certificate, a pin mismatch, no
    /// common ALPN, a refused client certificate), an invalid configuration, a protocol
    /// violation by the peer, a session this side closed, a proxy that refused the
    /// credentials or answered with something that is not its protocol, or a connect
    /// refused for want of permission.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::Unsupported
            ),
            Error::Timeout { .. } | Error::ClosedByPeer(_) | Error::StreamReset | Error::Io(_) => {
                true
            }
            Error::LimitReached(limit) => !matches!(limit, Limit::StreamIds),
            Error::Proxy { error, .. } => error.is_retryable(),
            Error::Handshake(_) | Error::Protocol(_) | Error::Closed | Error::Config(_) => false,
        }
    }

    /// Whether this error means the session is finished (closed by either side, or failed
    /// at the connection level), as opposed to one operation failing.
    pub fn is_session_closed(&self) -> bool {
        matches!(
            self,
            Error::ClosedByPeer(_) | Error::Closed | Error::Io(_) | Error::Protocol(_)
        ) || matches!(
            self,
            Error::Timeout {
                what: TimeoutKind::Idle,
                ..
            }
        )
    }
}

/// An error and its causes on one line, `what: why: root cause`: for a log line or a
/// message to a person, where only `Display` is shown.
///
/// Each error's `Display` says what happened at its own level and leaves the cause to
/// [`source()`](std::error::Error::source), so printing an error alone shows one level;
/// this walks the whole chain, each cause once. Made by [`Error::report`] or
/// [`ErrorReport::new`] for any error.
///
/// ```
/// use qymux_transport::{Error, ErrorReport};
///
/// let error = Error::io(std::io::Error::other("the cable is out"));
/// assert_eq!(error.to_string(), "i/o error on the connection");
/// assert_eq!(
///     error.report().to_string(),
///     "i/o error on the connection: the cable is out"
/// );
/// let boxed: Box<dyn std::error::Error> = error.into();
/// assert_eq!(
///     ErrorReport::new(&*boxed).to_string(),
///     "i/o error on the connection: the cable is out"
/// );
/// ```
#[derive(Clone, Copy)]
pub struct ErrorReport<'a>(&'a (dyn std::error::Error + 'static));

impl<'a> ErrorReport<'a> {
    /// The report of `error` and its causes.
    pub fn new(error: &'a (dyn std::error::Error + 'static)) -> Self {
        Self(error)
    }
}

impl fmt::Display for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// This error and its causes on one line (see [`ErrorReport`]).
    pub fn report(&self) -> ErrorReport<'_> {
        ErrorReport(self)
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::io(err)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Connect { source, .. } => source.kind(),
            Error::Handshake(HandshakeError::ClientCertificateRequired)
            | Error::Handshake(HandshakeError::ClientCertificateRefused(_)) => {
                io::ErrorKind::PermissionDenied
            }
            Error::Handshake(_) => io::ErrorKind::InvalidData,
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::LimitReached(_) => io::ErrorKind::QuotaExceeded,
            Error::ClosedByPeer(_) => io::ErrorKind::ConnectionAborted,
            Error::Closed => io::ErrorKind::NotConnected,
            Error::StreamReset => io::ErrorKind::ConnectionReset,
            Error::Protocol(_) => io::ErrorKind::InvalidData,
            Error::Io(e) => e.kind(),
            Error::Config(_) => io::ErrorKind::InvalidInput,
            Error::Proxy { error, .. } => error.io_kind(),
        };
        io::Error::new(kind, err)
    }
}

/// Why a TLS or QUIC handshake failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The server's certificate does not chain to a trusted root, or is not valid for the
    /// name that was dialed.
    #[error("server certificate not trusted: {}", PeerText(.0))]
    UntrustedCertificate(String),
    /// The server's certificate does not have the pinned SHA-256 fingerprint.
    #[error("server certificate fingerprint {actual} does not match the pinned {expected}")]
    PinMismatch {
        /// The pinned fingerprint(s), lowercase hex.
        expected: String,
        /// The fingerprint the server presented, lowercase hex.
        actual: String,
    },
    /// The two sides share no application protocol (ALPN); the peer is not a Qymux peer.
    #[error("no common application protocol (ALPN): the peer does not speak qymux")]
    AlpnMismatch,
    /// The server requires a client certificate and none was sent.
    #[error("the server requires a client certificate and none was presented")]
    ClientCertificateRequired,
    /// The client certificate was rejected (unknown CA, expired, wrong usage).
    #[error("client certificate refused: {}", PeerText(.0))]
    ClientCertificateRefused(String),
    /// The peer sent something that is not a handshake of the expected protocol.
    #[error("peer is not speaking TLS: {}", PeerText(.0))]
    NotTls(String),
    /// Any other TLS failure.
    #[error("TLS: {}", PeerText(.0))]
    Tls(String),
}

/// Which bound of [`Options`](crate::Options) ran out.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Establishing the transport connection.
    Connect,
    /// The TLS / QUIC handshake.
    Handshake,
    /// No sign of life from the peer within the dead-peer timeout.
    Idle,
    /// A graceful close that the peer did not complete in time.
    Close,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Handshake => "handshake",
            TimeoutKind::Idle => "dead-peer detection (no traffic from the peer)",
            TimeoutKind::Close => "graceful close",
        })
    }
}

/// Which configured limit refused an operation.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`Options::max_streams`](crate::Options::max_streams) streams are already open on
    /// this session.
    Streams(usize),
    /// The peer grants no more streams right now; this many are open toward it.
    PeerStreams(usize),
    /// The listener already holds its maximum number of sessions.
    Sessions(usize),
    /// The listener already has its maximum number of handshakes in progress.
    PendingHandshakes(usize),
    /// A new stream would take the session's receive buffers past
    /// [`Options::receive_budget`](crate::Options::receive_budget) (this many bytes).
    ReceiveBudget(u64),
    /// This side used up the session's stream ids (about two billion streams); open a
    /// new session.
    StreamIds,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Streams(n) => write!(f, "at most {n} concurrent streams per session"),
            Limit::PeerStreams(n) => {
                write!(
                    f,
                    "the peer allows no more streams now ({n} open toward it)"
                )
            }
            Limit::Sessions(n) => write!(f, "at most {n} sessions per listener"),
            Limit::PendingHandshakes(n) => write!(f, "at most {n} handshakes in progress"),
            Limit::ReceiveBudget(n) => {
                write!(f, "at most {n} bytes of receive windows per session")
            }
            Limit::StreamIds => f.write_str("the session has used up its stream ids"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_io_error_with_kind_and_back() {
        let io: io::Error = Error::StreamReset.into();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(Error::io(io), Error::StreamReset));

        let io: io::Error = Error::LimitReached(Limit::Streams(4)).into();
        assert_eq!(io.kind(), io::ErrorKind::QuotaExceeded);
        assert_eq!(
            io.to_string(),
            "limit reached: at most 4 concurrent streams per session"
        );

        let io: io::Error = Error::Timeout {
            what: TimeoutKind::Handshake,
            after: Duration::from_secs(3),
        }
        .into();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn plain_io_errors_are_wrapped() {
        let e = Error::io(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
        match e {
            Error::Io(inner) => assert_eq!(inner.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn messages_say_what_failed() {
        let e = Error::Handshake(HandshakeError::PinMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
        });
        assert_eq!(e.to_string(), "handshake failed");
        assert_eq!(
            e.report().to_string(),
            "handshake failed: server certificate fingerprint bb does not match the pinned aa"
        );
        assert_eq!(
            Error::ClosedByPeer(Some("bye".into())).to_string(),
            "session closed by peer: bye"
        );
        assert_eq!(
            Error::ClosedByPeer(None).to_string(),
            "session closed by peer"
        );
        assert_eq!(
            Error::ClosedByPeer(Some("bye\n\x1b[31mFAKE LINE".into())).to_string(),
            r"session closed by peer: bye\n\u{1b}[31mFAKE LINE"
        );
    }
}
