//! Real tonic on both ends of a Qymux session, over TCP and QUIC, in both directions:
//! the server calling a service the agent serves (the reverse tunnel), and the agent
//! calling the server.

mod support;

use std::collections::BTreeSet;
use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use qymux_conformance::{Backend, Pki, payload, sha256};
use qymux_grpc::{ChannelBuilder, ServeError, SessionIo};
use qymux_grpc_testproto::probe_client::ProbeClient;
use qymux_grpc_testproto::{EchoRequest, StallRequest, StreamRequest, WhoAmIRequest};
use qymux_transport::{BoxSession, CloseReason, Session};
use support::{Direction, Grpc, HANG_GUARD, Quic, Tcp};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status};

/// Fails a test that hangs, instead of hanging the run.
async fn guarded(test: impl Future<Output = ()>) {
    timeout(Duration::from_secs(240), test)
        .await
        .expect("the test hung");
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: message.as_bytes().to_vec(),
    }
}

/// The status and its whole source chain, for asserting on what it says.
fn describe(status: &Status) -> String {
    let mut text = format!("{status}");
    let mut source = status.source();
    while let Some(err) = source {
        text.push_str(&format!(" <- {err}"));
        source = err.source();
    }
    text
}

/// Unary, server-streaming, client-streaming and bidirectional calls.
async fn four_kinds<B: Backend>(direction: Direction) {
    let mut g = Grpc::<B>::new(direction).await;

    let reply = g
        .echo
        .unary(EchoRequest {
            message: "hello".into(),
            payload: vec![1, 2, 3],
        })
        .await
        .expect("unary")
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.payload),
        ("hello", vec![1, 2, 3])
    );

    let mut replies = g
        .echo
        .server_stream(StreamRequest {
            message: "tick".into(),
            count: 100,
        })
        .await
        .expect("server streaming")
        .into_inner();
    let mut sequences = Vec::new();
    while let Some(reply) = replies.message().await.expect("stream item") {
        assert_eq!(reply.message, format!("tick {}", reply.sequence));
        sequences.push(reply.sequence);
    }
    assert_eq!(sequences, (0..100).collect::<Vec<u64>>());

    let requests = futures::stream::iter((0..50u8).map(|i| EchoRequest {
        message: i.to_string(),
        payload: vec![i],
    }));
    let reply = g
        .echo
        .client_stream(requests)
        .await
        .expect("client streaming")
        .into_inner();
    assert_eq!(reply.sequence, 50);
    assert_eq!(
        reply.message,
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    assert_eq!(reply.payload, (0..50u8).collect::<Vec<_>>());

    // Bidirectional, in lock step: each reply arrives before the next request is sent.
    let (tx, rx) = mpsc::channel(1);
    let mut replies = g
        .echo
        .bidi(ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..50u64 {
        tx.send(request(&format!("ping {i}"))).await.expect("send");
        let reply = replies.message().await.expect("reply").expect("not ended");
        assert_eq!((reply.message, reply.sequence), (format!("ping {i}"), i));
    }
    drop(tx);
    assert!(replies.message().await.expect("clean end").is_none());
}

/// 1,000 unary calls at once on one channel.
async fn thousand_concurrent_unary<B: Backend>(direction: Direction) {
    let g = Grpc::<B>::new(direction).await;
    let mut calls = JoinSet::new();
    for i in 0..1000u64 {
        let mut echo = g.echo.clone();
        calls.spawn(async move {
            let reply = echo
                .unary(EchoRequest {
                    message: format!("call {i}"),
                    payload: i.to_le_bytes().to_vec(),
                })
                .await
                .unwrap_or_else(|status| panic!("call {i}: {}", describe(&status)))
                .into_inner();
            assert_eq!(reply.message, format!("call {i}"));
            assert_eq!(reply.payload, i.to_le_bytes());
        });
    }
    let mut done = 0;
    while let Some(call) = calls.join_next().await {
        call.expect("call task");
        done += 1;
    }
    assert_eq!(done, 1000);
}

/// A 32 MiB message each way (tonic's limits raised on both ends).
async fn message_of_32_mib<B: Backend>(direction: Direction) {
    let mut g = Grpc::<B>::new(direction).await;
    let data = payload(32, 32 * 1024 * 1024);
    let reply = g
        .echo
        .unary(EchoRequest {
            message: "big".into(),
            payload: data.clone(),
        })
        .await
        .unwrap_or_else(|status| panic!("32 MiB call: {}", describe(&status)))
        .into_inner();
    assert_eq!(reply.payload.len(), data.len());
    assert_eq!(sha256(&reply.payload), sha256(&data));
}

/// A client deadline expires: the caller gets `DeadlineExceeded` and the handler is
/// cancelled. Dropping a streaming call makes the handler's sends fail.
async fn deadline_and_cancellation<B: Backend>(direction: Direction) {
    let mut g = Grpc::<B>::new(direction).await;

    // A deadline on one call. (Long enough that the handler surely starts first.)
    let mut stall = Request::new(StallRequest {
        tag: "call deadline".into(),
    });
    stall.set_timeout(Duration::from_secs(1));
    let status = g
        .probe
        .stall(stall)
        .await
        .expect_err("the deadline expires");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        describe(&status)
    );
    assert_eq!(g.events.started().await, "call deadline");
    assert_eq!(g.events.cancelled().await, "call deadline");

    // A default deadline for every call of a channel.
    let channel = ChannelBuilder::new()
        .timeout(Duration::from_secs(1))
        .connect(g.caller.clone());
    let status = ProbeClient::new(channel)
        .stall(StallRequest {
            tag: "channel deadline".into(),
        })
        .await
        .expect_err("the deadline expires");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        describe(&status)
    );
    assert_eq!(g.events.started().await, "channel deadline");
    assert_eq!(g.events.cancelled().await, "channel deadline");

    // A server stream the caller drops: the handler's next send fails.
    let mut replies = g
        .probe
        .stall_stream(StallRequest {
            tag: "dropped stream".into(),
        })
        .await
        .expect("stall stream")
        .into_inner();
    let first = replies.message().await.expect("first").expect("an item");
    assert_eq!(first.message, "dropped stream");
    assert_eq!(g.events.started().await, "dropped stream");
    drop(replies);
    assert_eq!(g.events.cancelled().await, "dropped stream");

    // The connection is fine afterwards.
    g.echo.unary(request("still alive")).await.expect("unary");
}

enum Closer {
    /// The serving side closes the session.
    Callee,
    /// The calling side closes the session.
    Caller,
}

/// The session ends while a unary and a streaming call are in flight: both fail promptly,
/// the handlers are cancelled, new calls fail at once (no retry, no hang) and the
/// serving side reports why it stopped.
async fn session_closed_mid_call<B: Backend>(direction: Direction, closer: Closer) {
    let mut g = Grpc::<B>::new(direction).await;
    let mut probe = g.probe.clone();
    let unary = tokio::spawn(async move {
        probe
            .stall(StallRequest {
                tag: "unary".into(),
            })
            .await
    });
    let mut replies = g
        .probe
        .stall_stream(StallRequest {
            tag: "stream".into(),
        })
        .await
        .expect("stall stream")
        .into_inner();
    replies.message().await.expect("first").expect("an item");
    let started: BTreeSet<String> = [g.events.started().await, g.events.started().await].into();
    assert_eq!(started, ["stream".to_string(), "unary".to_string()].into());

    match closer {
        Closer::Callee => g.callee.close().await,
        Closer::Caller => g.caller.close().await,
    }

    let status = timeout(HANG_GUARD, unary)
        .await
        .expect("the unary call in flight must fail promptly")
        .expect("call task")
        .expect_err("the session is gone");
    assert_eq!(status.code(), Code::Unavailable, "{}", describe(&status));
    assert!(
        status.message().contains("session closed"),
        "{}",
        describe(&status)
    );
    let status = timeout(HANG_GUARD, replies.message())
        .await
        .expect("the stream in flight must fail promptly")
        .expect_err("a cut-off stream must not end cleanly");
    assert_eq!(status.code(), Code::Unavailable, "{}", describe(&status));
    assert!(
        status.message().contains("session closed"),
        "{}",
        describe(&status)
    );

    let cancelled: BTreeSet<String> =
        [g.events.cancelled().await, g.events.cancelled().await].into();
    assert_eq!(cancelled, started);

    // New calls fail at once with the session's close reason, again and again.
    for _ in 0..3 {
        let status = timeout(HANG_GUARD, g.echo.unary(request("after close")))
            .await
            .expect("a call on a dead session must fail fast")
            .expect_err("the session is gone");
        assert_eq!(status.code(), Code::Unavailable, "{}", describe(&status));
        assert!(
            status.message().contains("session closed"),
            "{}",
            describe(&status)
        );
    }

    let served = timeout(HANG_GUARD, g.serving)
        .await
        .expect("serving must stop with the session");
    match (closer, served) {
        (Closer::Callee, Err(ServeError::SessionClosed(CloseReason::Local))) => {}
        (Closer::Caller, Err(ServeError::SessionClosed(CloseReason::Peer(_)))) => {}
        (_, other) => panic!("unexpected end of serving: {other:?}"),
    }
}

async fn callee_closes_session_mid_call<B: Backend>(direction: Direction) {
    session_closed_mid_call::<B>(direction, Closer::Callee).await
}

async fn caller_closes_session_mid_call<B: Backend>(direction: Direction) {
    session_closed_mid_call::<B>(direction, Closer::Caller).await
}

/// The handler sees the protocol, the addresses and (with mTLS) the peer's certificate,
/// through `SessionInfo` and through tonic's `remote_addr` / `local_addr`.
async fn session_info_with_mtls<B: Backend>() {
    let pki = Pki::new();
    for direction in [Direction::ServerCallsAgent, Direction::AgentCallsServer] {
        let mut g = Grpc::on(support::mtls_pair::<B>(&pki).await, direction);
        let who = g
            .probe
            .who_am_i(WhoAmIRequest {})
            .await
            .expect("who am i")
            .into_inner();
        assert_eq!(who.protocol, g.callee.protocol().to_string());
        assert_eq!(who.remote_addr, g.callee.remote_addr().to_string());
        assert_eq!(who.local_addr, g.callee.local_addr().to_string());
        assert_eq!(who.tonic_remote_addr, who.remote_addr);
        assert_eq!(who.tonic_local_addr, who.local_addr);
        assert_eq!(
            g.callee.remote_addr().port(),
            g.caller.local_addr().port(),
            "the remote address is the caller's"
        );
        let expected = match direction {
            // The agent serves: its peer is the server, which presented its certificate.
            Direction::ServerCallsAgent => pki.server.end_entity(),
            // The server serves: its peer is the agent and its client certificate.
            Direction::AgentCallsServer => pki.client.end_entity(),
        };
        assert_eq!(who.peer_certificate, expected.to_vec(), "{direction:?}");
    }

    // Without mTLS the server knows no certificate of the agent.
    let mut g = Grpc::<B>::new(Direction::AgentCallsServer).await;
    let who = g
        .probe
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("who am i")
        .into_inner();
    assert!(who.peer_certificate.is_empty());
}

/// `shutdown` lets the call in flight finish, then resolves to `Ok(())`; the session
/// stays up.
async fn graceful_shutdown<B: Backend>() {
    let mut g = Grpc::<B>::new(Direction::ServerCallsAgent).await;
    let (tx, rx) = mpsc::channel(1);
    let mut replies = g
        .echo
        .bidi(ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    tx.send(request("before")).await.expect("send");
    assert_eq!(replies.message().await.unwrap().unwrap().message, "before");

    g.serving.shutdown();
    tx.send(request("during")).await.expect("send");
    assert_eq!(replies.message().await.unwrap().unwrap().message, "during");
    drop(tx);
    assert!(replies.message().await.expect("clean end").is_none());

    timeout(HANG_GUARD, g.serving)
        .await
        .expect("shutdown must complete once the call finished")
        .expect("a requested shutdown is Ok");
    assert!(g.caller.close_reason().is_none());
    assert!(g.callee.close_reason().is_none());
}

/// A read that waits on a connection's stream fails when the session ends, also when it
/// is closed by this side (where a backend may not wake the read by itself).
async fn waiting_reads_fail_when_the_session_ends<B: Backend>() {
    let p = qymux_conformance::pair::<B>().await;
    let stream = p.client.open().await.expect("open");
    let _accepted = p.server.accept().await.expect("accept");
    let mut io = SessionIo::new(stream, &p.client);
    let mut read = Box::pin(async move {
        let mut buf = [0u8; 8];
        io.read(&mut buf).await
    });
    assert!(
        futures::poll!(&mut read).is_pending(),
        "nothing to read yet"
    );
    p.client.close().await;
    // Which error depends on the backend (the session's close reason, or the
    // multiplexer's own "connection is closed"); that it is one, promptly, does not.
    timeout(HANG_GUARD, read)
        .await
        .expect("a waiting read must end with the session")
        .expect_err("a closed session is an error, not EOF");
}

macro_rules! suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            suite!(@both_directions $backend;
                four_kinds,
                thousand_concurrent_unary,
                message_of_32_mib,
                deadline_and_cancellation,
                callee_closes_session_mid_call,
                caller_closes_session_mid_call
            );

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn session_info_with_mtls() {
                guarded(crate::session_info_with_mtls::<$backend>()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn graceful_shutdown() {
                guarded(crate::graceful_shutdown::<$backend>()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiting_reads_fail_when_the_session_ends() {
                guarded(crate::waiting_reads_fail_when_the_session_ends::<$backend>()).await
            }
        }
    };
    (@both_directions $backend:ty; $($check:ident),*) => {
        $(
            mod $check {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn server_calls_agent() {
                    guarded(crate::$check::<$backend>(Direction::ServerCallsAgent)).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn agent_calls_server() {
                    guarded(crate::$check::<$backend>(Direction::AgentCallsServer)).await
                }
            }
        )*
    };
}

suite!(tcp, Tcp);
suite!(quic, Quic);

/// Type-erased sessions (what Auto mode hands out) work the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_sessions() {
    guarded(async {
        let p = qymux_conformance::pair::<Quic>().await;
        let (agent, server) = (
            BoxSession::new(p.client.clone()),
            BoxSession::new(p.server.clone()),
        );
        let (routes, _events) = support::services();
        let serving = qymux_grpc::serve(agent.clone(), routes);
        let mut echo = support::echo_client(qymux_grpc::channel(server.clone()));
        let reply = echo
            .unary(request("boxed"))
            .await
            .expect("unary")
            .into_inner();
        assert_eq!(reply.message, "boxed");
        agent.close().await;
        let served = timeout(HANG_GUARD, serving).await.expect("serving stops");
        assert!(
            matches!(served, Err(ServeError::SessionClosed(CloseReason::Local))),
            "{served:?}"
        );
    })
    .await
}

/// A channel made on a session that has already ended fails its first call at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_on_a_closed_session_fails_fast() {
    guarded(async {
        let p = qymux_conformance::pair::<Tcp>().await;
        p.server.close().await;
        let mut echo = support::echo_client(qymux_grpc::channel(p.server.clone()));
        let status = timeout(HANG_GUARD, echo.unary(request("too late")))
            .await
            .expect("must fail fast")
            .expect_err("the session is closed");
        assert_eq!(status.code(), Code::Unavailable, "{}", describe(&status));
        assert_eq!(status.message(), "session closed locally");
    })
    .await
}

/// A tonic server's own timeout (`Server::timeout`, shorter than the caller's deadline)
/// answers `Cancelled` ("Timeout expired"); the caller sees `DeadlineExceeded`, as gRPC
/// specifies. Also shows `serve_with` and its server settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timeout_is_deadline_exceeded() {
    guarded(async {
        let p = qymux_conformance::pair::<Tcp>().await;
        let (routes, mut events) = support::services();
        let server = tonic::transport::Server::builder().timeout(Duration::from_millis(300));
        let _serving = qymux_grpc::serve_with(p.client.clone(), server, routes);
        let mut probe = ProbeClient::new(qymux_grpc::channel(p.server.clone()));
        let mut stall = Request::new(StallRequest {
            tag: "server timeout".into(),
        });
        stall.set_timeout(Duration::from_secs(60));
        let status = probe
            .stall(stall)
            .await
            .expect_err("the server's timeout expires");
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "{}",
            describe(&status)
        );
        assert_eq!(events.started().await, "server timeout");
        assert_eq!(events.cancelled().await, "server timeout");
    })
    .await
}
