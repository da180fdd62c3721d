//! The QUIC backend of Qymux, on quinn.
//!
//! Wire-compatible with the Go Qymux and with any QUIC v1 stack: QUIC with ALPN `qymux`
//! (TLS 1.3), and one Qymux stream is one bidirectional QUIC stream carrying exactly the
//! application's bytes. Either side opens streams; unidirectional streams and datagrams
//! are not used.
//!
//! - [`dial`] connects and returns a [`Session`]; [`Listener`] accepts them.
//!   [`dial_with_endpoint`] dials from a [`quinn::Endpoint`] the caller keeps;
//!   [`dial_resolved`] dials addresses the caller resolved. Several addresses are raced
//!   as Happy Eyeballs does (RFC 8305).
//! - A [`Session`] is a cheap, cloneable handle. [`Stream`]s are visible to the peer as
//!   soon as `open` returns: quinn announces a stream only with its first frame, so
//!   `open` sends an empty `STREAM` frame (no byte is added to the stream).
//! - Reads return EOF only when the peer finished the stream; a reset or a lost session
//!   is an error. Dropping a stream that was not shut down resets it.
//! - Bounds: the server must answer within [`Options::connect_timeout`] and complete
//!   the handshake within [`Options::handshake_timeout`] (quinn alone would wait for its
//!   idle timeout); keep-alive PINGs every [`Options::keep_alive_interval`], and a
//!   session that hears nothing for [`Options::idle_timeout`] fails with
//!   [`TimeoutKind::Idle`](qymux_transport::TimeoutKind::Idle).
//! - [`Options::max_streams`] caps the streams open on a session in both directions; it
//!   is also the limit the peer is given for the streams it opens. That grant starts at
//!   128 and doubles whenever half of it is in use, so an idle session does not pay for
//!   quinn's table of 1024 possible streams (about 80 KiB). A task takes the streams the
//!   peer opens from quinn as they arrive and queues them for `accept`, so the grant grows
//!   with the streams the peer opened, whether or not the application is accepting at
//!   that moment: a briefly busy acceptor does not make the peer's `open` fail.
//! - [`Options::accept_backlog`] is that grant's cap, QUIC's form of an accept backlog:
//!   the grant starts at no more than the backlog and grows no further than the backlog
//!   beyond the streams accepted at that moment (grants are never taken back, so after
//!   accepted streams end, as many may wait as were granted). Where TCP resets a stream
//!   beyond its backlog, the QUIC peer's `open` waits for a grant and fails with
//!   [`Limit::PeerStreams`](qymux_transport::Limit) if none comes within a few round
//!   trips.
//! - Dropping every handle of a session and its streams closes it as
//!   [`Session::close`] does: streams that were shut down first deliver what was written
//!   (bounded by [`Options::close_timeout`]), as a TCP socket closed after `shutdown`
//!   does. (quinn alone closes a connection nothing refers to at once, and drops what
//!   was not sent yet.)
//! - [`Session::drain`] stops granting streams and resets those the peer still opens
//!   with its earlier grant, lets the open ones finish, then closes (QUIC has no GoAway
//!   on Qymux's wire).
//! - The [`Listener`] runs at most [`Options::max_pending_handshakes`] handshakes at once
//!   (others are refused), holds at most [`Options::max_sessions`] sessions (one beyond is
//!   closed with the reason `limit reached: at most N sessions per listener`), and
//!   [`Listener::shutdown`] drains its sessions and closes each once its streams are done.
//! - Sessions survive a change of the client's address (NAT rebinding, QUIC connection
//!   migration).
//! - Flow control windows: 8 MiB per stream, 32 MiB per connection (receive) and 32 MiB
//!   in flight (send), for throughput on fast links while bounding the memory a session
//!   may hold. UDP sockets ask the kernel for 4 MiB buffers (capped by
//!   `net.core.rmem_max`), which keeps a fast stream from losing packets in bursts.
//! - A listener serves all its sessions from one UDP socket and one quinn endpoint task:
//!   when the sessions together send faster than that task reads, the kernel drops
//!   datagrams at the socket (`RcvbufErrors`). Sessions recover from moderate loss; under
//!   sustained overload their packets can be lost for the whole idle timeout, and then
//!   the side that stopped hearing its peer forgets the connection, and the other side,
//!   which kept hearing retransmissions, is answered with a stateless reset. Size the
//!   load to the listener (the soak example of qymux-dialer measures a sustainable
//!   rate).
//! - Every [`dial`] makes its own endpoint, and quinn gives each endpoint a receive
//!   buffer of about 3 MiB (max UDP payload x GRO segments x batch, allocated zeroed).
//!   One dialed session in a process does not notice; a process that holds many dialed
//!   sessions pays that per session while it is live, and with glibc's dynamic mmap
//!   threshold the buffers soon come from the heap, are resident in full and are kept
//!   by the allocator after the sessions end. Share an endpoint between sessions
//!   ([`dial_with_endpoint`]) or fix the threshold (`MALLOC_MMAP_THRESHOLD_=131072`).
//!
//! One crypto provider is compiled in: *ring* (feature `ring`, the default: quinn's
//! `rustls-ring`) or aws-lc-rs (feature `aws-lc-rs`: quinn's `rustls-aws-lc-rs`).
//!
//! # Example
//!
//! ```
//! use qymux_cert::CertificateAuthority;
//! use qymux_quic::{Listener, dial};
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
//! let session = dial(&addr, "localhost", client_tls, Options::default()).await?;
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

mod config;
mod dial;
mod error;
mod listener;
mod session;
mod socket;
mod stream;

pub use dial::{dial, dial_resolved, dial_resolved_noting_answer, dial_with_endpoint};
pub use listener::Listener;
pub use session::{Session, WeakSession};
pub use stream::Stream;

pub use quinn;
pub use qymux_transport::{self as transport, Options};
