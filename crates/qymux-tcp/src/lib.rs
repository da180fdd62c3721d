//! The TCP backend of Qymux: TLS over TCP, multiplexed with yamux.
//!
//! Wire-compatible with the Go Qymux and with any Go `crypto/tls` + `hashicorp/yamux`
//! peer: TCP, then TLS with ALPN `qymux`, then yamux (spec v0). The dialer is the yamux
//! client (odd stream ids), the listener the yamux server.
//!
//! - [`dial`] connects and returns a [`Session`]; [`Listener`] accepts them.
//! - A [`Session`] is a cheap, cloneable handle. Qymux runs the hashicorp protocol with
//!   its own engine ([`engine`]: a sans-IO state machine and a thin tokio driver). Either
//!   side opens [`Stream`]s, and a stream is visible to the peer as soon as `open`
//!   returns (SYN at open); the peer's streams are acknowledged as they enter the accept
//!   queue, which holds at most [`Options::accept_backlog`] (beyond it they are reset).
//!   Besides the async `open` and `accept`, [`Session::poll_open`],
//!   [`Session::poll_accept`] and [`Session::incoming`] (a `futures::Stream`) open and
//!   accept by polling, with no future allocated per stream.
//! - Reads return EOF only when the peer finished the stream; a reset or a lost session
//!   is an error. `shutdown` sends one FIN however often it is called; dropping or
//!   aborting a stream resets it unless both sides finished, also after our own FIN, so a
//!   peer's writer never waits for window that will not come.
//! - Writes go out from the writing task: the frame's header and the caller's buffer in
//!   one vectored TLS write, up to 256 KiB per frame. Any DATA frame up to the window
//!   granted is accepted (Go sends up to the window in one frame).
//! - Memory a peer can make a session hold is bounded: received data waits in one buffer
//!   per stream, at most the stream's window; windows start at 256 KiB, grow while the
//!   reader keeps up with the measured round-trip time (up to
//!   [`Options::max_stream_window`]), and their sum is capped by
//!   [`Options::receive_budget`]. Frames for unknown streams, and streams opened and
//!   reset at once, leave nothing behind.
//! - [`Session::drain`] sends yamux GoAway(0): the peer opens no more streams, those open
//!   finish, then the session closes. A peer's GoAway(0) is read the same way (in-flight
//!   streams finish, `open` fails with `ClosedByPeer`); a GoAway with an error code fails
//!   the session; a protocol violation is answered with GoAway(protocol error) and ends
//!   the session with [`Error::Protocol`](qymux_transport::Error::Protocol).
//! - Dead peers are detected within [`Options::idle_timeout`], also when the peer vanishes
//!   silently (a frozen process, a network that drops everything): after
//!   [`Options::keep_alive_interval`] of silence the session sends a yamux Ping, which any
//!   live yamux peer answers, and a session that hears nothing from its peer for the idle
//!   timeout fails with [`TimeoutKind::Idle`](qymux_transport::TimeoutKind::Idle). Every
//!   byte received counts as a sign of life, so a large frame arriving slowly does not.
//!   Every read, write, open and accept waiting on the session then fails with that error,
//!   and [`Session::closed`] reports it. Without keep-alive, a session on which neither
//!   side sends anything fails after the idle timeout (as a QUIC session does).
//! - If the driver task ends without ending the session (its runtime shut down, a panic),
//!   every waiter fails with an I/O error that says so.
//! - The [`Listener`] runs at most [`Options::max_pending_handshakes`] handshakes at once
//!   (further connections are dropped), holds at most [`Options::max_sessions`] sessions
//!   (one beyond gets a yamux GoAway right after its handshake), and
//!   [`Listener::shutdown`] closes its sessions gracefully (GoAway, TLS close_notify) once
//!   their streams are done.
//! - Agents behind proxies: with [`Options::proxy`] the dial goes through an HTTP
//!   CONNECT or SOCKS5 proxy ([`transport::proxy`]); TLS and yamux run end to end
//!   inside the tunnel.
//! - Every socket gets `TCP_NODELAY`, TCP keep-alive probes at the keep-alive interval and
//!   `TCP_USER_TIMEOUT` at the idle timeout, so the kernel also gives up on a peer that
//!   stops acknowledging; that too is reported as `TimeoutKind::Idle`.
//! - A peer that closes gracefully (GoAway, TLS close_notify) ends the session as
//!   [`CloseReason::Peer`](qymux_transport::CloseReason::Peer), also when its socket is
//!   already gone by the time this side writes: a failed write is held back until what
//!   the peer sent before is read, and only a connection that ends without the peer's
//!   GoAway fails with it.
//!
//! # Example
//!
//! ```
//! use qymux_cert::CertificateAuthority;
//! use qymux_tcp::{Listener, dial};
//! use qymux_tls::{ClientTls, ServerTls};
//! use qymux_transport::Options;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
//! let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;
//!
//! let listener = Listener::bind("127.0.0.1:0", server_tls, Options::default()).await?;
//! let addr = listener.local_addr().to_string();
//! tokio::spawn(async move {
//!     // The server echoes every stream the agent opens.
//!     let session = listener.accept().await?;
//!     while let Ok(mut stream) = session.accept().await {
//!         tokio::spawn(async move {
//!             let mut buf = Vec::new();
//!             stream.read_to_end(&mut buf).await?;
//!             stream.write_all(&buf).await?;
//!             stream.shutdown().await
//!         });
//!     }
//!     Ok::<_, qymux_transport::Error>(())
//! });
//!
//! let session = dial(&addr, "localhost", client_tls, &Options::default()).await?;
//! let mut stream = session.open().await?;
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?;
//! let mut reply = String::new();
//! stream.read_to_string(&mut reply).await?;
//! assert_eq!(reply, "hello");
//! session.close().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod dial;
pub mod engine;
mod listener;
mod proxy;
mod session;
mod socket;
mod stream;

pub use dial::{dial, dial_resolved};
pub use listener::Listener;
pub use session::{Session, WeakSession};
pub use stream::Stream;

pub use qymux_transport::{self as transport, Options};
