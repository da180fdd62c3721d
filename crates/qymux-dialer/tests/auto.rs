//! Auto mode: QUIC where it gets through, TCP promptly where UDP is blackholed, the
//! failure remembered, and one listener for both.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use qymux_dialer::{Dialer, Listener, TransportMemory};
use qymux_transport::{BoxSession, Mode, Options, Protocol, Session};
use support::{Blackhole, Pki, guard, pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Long enough that a dial which waited for QUIC to time out would be obvious: the
/// assertions below only check that the dial did not take that long.
fn patient_options() -> Options {
    let mut o = Options::default();
    o.connect_timeout(Duration::from_secs(30))
        .handshake_timeout(Duration::from_secs(30));
    o
}

/// An Auto listener on a free loopback port, default options.
async fn auto_listener(pki: &Pki) -> Listener {
    Listener::bind(
        "127.0.0.1:0",
        pki.server.clone(),
        Options::default(),
        Mode::Auto,
    )
    .await
    .unwrap()
}

async fn exchange(a: &BoxSession, b: &BoxSession) {
    let mut s = a.open().await.unwrap();
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut t = b.accept().await.unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ping");
}

/// A TCP-only Qymux server whose UDP port is blackholed. The UDP port is taken first and
/// TCP bound on the same number: the UDP twin of a free TCP port may be held by another
/// socket, the other way round it is retried.
async fn tcp_server_with_blackholed_udp(pki: &Pki) -> (Listener, Blackhole) {
    guard("a port free for both UDP and TCP", async {
        loop {
            let blackhole = Blackhole::bind(0);
            let at = format!("127.0.0.1:{}", blackhole.port());
            if let Ok(listener) =
                Listener::bind(&at, pki.server.clone(), patient_options(), Mode::Tcp).await
            {
                break (listener, blackhole);
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_quic_where_it_gets_through() {
    let pki = pki();
    let listener = auto_listener(&pki).await;
    assert_eq!(listener.protocols(), vec![Protocol::Quic, Protocol::Tcp]);
    let dialer = Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    );
    let (client, server) = tokio::join!(dialer.dial(), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.protocol(), Protocol::Quic);
    assert_eq!(server.protocol(), Protocol::Quic);
    exchange(&client, &server).await;
    exchange(&server, &client).await;
    assert!(dialer.transport_memory().quic_rtt(dialer.addr()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tcp_promptly_and_remembers() {
    let pki = pki();
    let (listener, blackhole) = tcp_server_with_blackholed_udp(&pki).await;
    let dialer = Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .options(patient_options());

    let started = Instant::now();
    let (client, server) = tokio::join!(dialer.dial(), listener.accept());
    let took = started.elapsed();
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.protocol(), Protocol::Tcp);
    exchange(&client, &server).await;
    // Only a hang guard: waiting for the QUIC attempt to time out would take 30 s.
    assert!(took < Duration::from_secs(10), "fallback took {took:?}");
    assert!(blackhole.received() > 0, "QUIC was tried first");
    assert!(
        dialer
            .transport_memory()
            .quic_broken_until(dialer.addr())
            .is_some()
    );

    // Remembered: the next dial goes straight to TCP, no new QUIC attempt (a socket of its
    // own) sends to the port. The dropped first attempt may still send its last datagram
    // (CONNECTION_CLOSE) from its old port, so counting datagrams would race with that.
    let before = blackhole.senders();
    let (client2, server2) = tokio::join!(dialer.dial(), listener.accept());
    let (client2, server2) = (client2.unwrap(), server2.unwrap());
    assert_eq!(client2.protocol(), Protocol::Tcp);
    exchange(&client2, &server2).await;
    assert_eq!(
        blackhole.senders(),
        before,
        "QUIC skipped while remembered as failing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_is_tried_again_after_the_penalty_which_doubles() {
    let pki = pki();
    let (listener, blackhole) = tcp_server_with_blackholed_udp(&pki).await;
    let memory = Arc::new(TransportMemory::new(
        Duration::from_millis(300),
        Duration::from_secs(60),
    ));
    let dialer = Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .options(patient_options())
    .attempt_delay(Duration::from_millis(50))
    .memory(memory.clone());

    let (c, _s) = tokio::join!(dialer.dial(), listener.accept());
    assert_eq!(c.unwrap().protocol(), Protocol::Tcp);
    let first = memory.quic_broken_until(dialer.addr()).unwrap();
    // Wait out the penalty (the expiry itself, not a guess at how long things take).
    tokio::time::sleep_until(first).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(memory.quic_broken_until(dialer.addr()).is_none());

    // A new attempt is a new socket: a late datagram from the first cannot pass for it.
    let before = blackhole.senders();
    let dialed_at = tokio::time::Instant::now();
    let (c, _s) = tokio::join!(dialer.dial(), listener.accept());
    assert_eq!(c.unwrap().protocol(), Protocol::Tcp);
    assert!(
        blackhole.senders().len() > before.len(),
        "QUIC tried again after the penalty"
    );
    let second = memory.quic_broken_until(dialer.addr()).unwrap();
    // 300 ms, then 600 ms nominal, each applied jittered down by up to a quarter: the
    // second is at least 450 ms, more than the first could be.
    assert!(
        second - dialed_at >= Duration::from_millis(450),
        "the penalty doubled: {:?}",
        second - dialed_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_accepts_quic_and_tcp_at_the_same_time() {
    let pki = pki();
    let listener = auto_listener(&pki).await;
    let addr = listener.local_addr().to_string();
    let quic = Dialer::new(addr.clone(), "localhost", pki.client.clone()).mode(Mode::Quic);
    let tcp = Dialer::new(addr, "localhost", pki.client.clone()).mode(Mode::Tcp);
    let accept_two = async {
        let a = listener.accept().await.unwrap();
        let b = listener.accept().await.unwrap();
        (a, b)
    };
    let (q, t, (a, b)) = tokio::join!(quic.dial(), tcp.dial(), accept_two);
    let (q, t) = (q.unwrap(), t.unwrap());
    assert_eq!(q.protocol(), Protocol::Quic);
    assert_eq!(t.protocol(), Protocol::Tcp);
    let mut accepted = [a.protocol(), b.protocol()];
    accepted.sort_by_key(|p| p.to_string());
    assert_eq!(accepted, [Protocol::Quic, Protocol::Tcp]);
    for (client, server) in [(&q, &a), (&q, &b), (&t, &a), (&t, &b)] {
        if client.protocol() == server.protocol() {
            exchange(client, server).await;
            exchange(server, client).await;
        }
    }
}

#[tokio::test]
async fn auto_listener_reports_a_port_it_cannot_bind() {
    let pki = pki();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Listener::bind(
        &format!("127.0.0.1:{port}"),
        pki.server.clone(),
        Options::default(),
        Mode::Auto,
    )
    .await
    .unwrap_err();
    // The message is the I/O error under the qymux one: the chain says it once.
    let report = err.report().to_string();
    assert!(report.contains("UDP (QUIC)"), "{report}");
    // TCP alone is fine there.
    Listener::bind(
        &format!("127.0.0.1:{port}"),
        pki.server.clone(),
        Options::default(),
        Mode::Tcp,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_with_tcps_error_without_waiting_for_quic() {
    let pki = pki();
    // A port where TCP is refused and UDP is silent (a blackhole, so QUIC never fails).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _blackhole = Blackhole::bind(port);
    let dialer = Dialer::new(format!("127.0.0.1:{port}"), "localhost", pki.client.clone())
        .options(patient_options());
    let started = Instant::now();
    let err = dialer.dial().await.unwrap_err();
    let took = started.elapsed();
    match err {
        qymux_transport::Error::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected TCP's connect error, got {other:?}"),
    }
    // Hang guard only: waiting for QUIC's connect timeout would take 30 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_quic_attempt_is_dropped_with_its_socket() {
    let pki = pki();
    let (listener, blackhole) = tcp_server_with_blackholed_udp(&pki).await;
    let dialer = Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .options(patient_options());
    let (client, _server) = tokio::join!(dialer.dial(), listener.accept());
    assert_eq!(client.unwrap().protocol(), Protocol::Tcp);
    assert!(blackhole.received() > 0, "QUIC was tried");
    // The loser gets one second in the background (a slow path may still answer), then
    // is dropped; dropping it may send one last datagram (quinn closes a handshaking
    // connection with CONNECTION_CLOSE). After that: silence, where a live attempt would
    // retransmit its Initial (PTO ~1 s, then ~2 s). This checks for the absence of an
    // event, so fixed waits are unavoidable here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = blackhole.received();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        blackhole.received(),
        settled,
        "the abandoned QUIC attempt kept sending: its endpoint was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_quic_is_busy_not_broken() {
    use qymux_quic::quinn;
    // A TCP Qymux server, and on the same UDP port a QUIC endpoint that answers every
    // attempt with CONNECTION_REFUSED, as a server over its handshake caps does.
    let pki = pki();
    let (listener, udp) = guard("a port free for both UDP and TCP", async {
        loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let at = udp.local_addr().unwrap().to_string();
            if let Ok(listener) =
                Listener::bind(&at, pki.server.clone(), patient_options(), Mode::Tcp).await
            {
                break (listener, udp);
            }
        }
    })
    .await;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from((*pki.server).clone()).unwrap();
    let refuser = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quinn::ServerConfig::with_crypto(Arc::new(crypto))),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let refusing = tokio::spawn(async move {
        let mut refused = 0;
        while let Some(incoming) = refuser.accept().await {
            incoming.refuse();
            refused += 1;
        }
        refused
    });
    let dialer = Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .options(patient_options());
    let (client, server) = tokio::join!(dialer.dial(), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.protocol(), Protocol::Tcp);
    exchange(&client, &server).await;
    assert!(
        dialer
            .transport_memory()
            .quic_broken_until(dialer.addr())
            .is_none(),
        "a server that answered over UDP and refused is busy, not a broken path"
    );
    refusing.abort();
    assert!(
        refusing.await.is_err(),
        "the refusing endpoint was still serving"
    );
}

/// When the QUIC side of a dual listener dies, TCP agents are still served: `accept`
/// fails only once neither transport is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_quic_side_leaves_tcp_served() {
    let pki = pki();
    let listener = auto_listener(&pki).await;
    let addr = listener.local_addr().to_string();
    // The QUIC side stops accepting (as when its endpoint ends).
    listener.quic_listener().unwrap().close();

    let dial = tokio::spawn({
        let (addr, tls) = (addr.clone(), pki.client.clone());
        async move { qymux_tcp::dial(&addr, "localhost", tls, Options::default()).await }
    });
    let server = guard("accept over TCP", listener.accept())
        .await
        .expect("TCP is still served");
    assert_eq!(server.protocol(), Protocol::Tcp);
    let agent = dial.await.unwrap().unwrap();
    let mut stream = agent.open().await.unwrap();
    stream.write_all(b"ok").await.unwrap();
    let mut incoming = server.accept().await.unwrap();
    let mut buf = [0u8; 2];
    incoming.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");

    // With TCP gone too, accept says so.
    listener.tcp_listener().unwrap().close();
    assert!(
        guard("accept with nothing left", listener.accept())
            .await
            .is_err()
    );
}

/// TCP wins while QUIC is slow (its datagrams held back 150 ms each way). The QUIC
/// attempt is finished in the background: it connects, is closed at once with the reason
/// `superseded` (the server can tell it from an agent that left), and QUIC is not
/// penalised, since it merely lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_attempt_that_loses_the_race_is_closed_as_superseded_and_not_penalised() {
    use qymux_testsupport::fault::{Fault, FaultProxy, Transport};

    let pki = pki();
    let listener = auto_listener(&pki).await;
    let upstream = listener.local_addr();
    // A UDP and a TCP proxy on one port number, as an Auto listener has.
    let (udp, _tcp) = guard("a port free for UDP and TCP", async {
        loop {
            let udp = FaultProxy::start(Transport::Udp, upstream).await.unwrap();
            if let Ok(tcp) = FaultProxy::bind(Transport::Tcp, udp.local_addr(), upstream).await {
                break (udp, tcp);
            }
        }
    })
    .await;
    udp.set(Fault::Delay(Duration::from_millis(150)));
    let memory = Arc::new(TransportMemory::default());
    let dialer = Dialer::new(
        udp.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .attempt_delay(Duration::from_millis(10))
    .memory(memory.clone());

    let agent = guard("dial", dialer.dial()).await.unwrap();
    assert_eq!(agent.protocol(), Protocol::Tcp, "TCP wins the race");
    // The server's TCP session is kept: dropping it would close the agent's.
    let mut kept = Vec::new();
    let reason = guard("the late QUIC session at the server", async {
        loop {
            let session = listener.accept().await.unwrap();
            if session.protocol() == Protocol::Quic {
                break session.closed().await;
            }
            kept.push(session);
        }
    })
    .await;
    assert!(
        matches!(&reason, qymux_transport::CloseReason::Peer(Some(r)) if r == qymux_dialer::SUPERSEDED),
        "the loser is closed as superseded: {reason:?}"
    );
    assert!(
        memory.quic_broken_until(dialer.addr()).is_none(),
        "QUIC lost the race; it is not broken"
    );
    assert!(
        memory.quic_rtt(dialer.addr()).is_some(),
        "and its RTT is known"
    );
    // The TCP session the agent got is unaffected.
    let mut stream = agent.open().await.unwrap();
    stream.write_all(b"ok").await.unwrap();
}

/// The dual listener's `shutdown` reports what it did over both transports together, as
/// each single listener does: here a QUIC session with a stream its agent keeps open
/// (cut at the grace's end) and an idle TCP session (drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dual_listeners_shutdown_reports_both_transports() {
    let pki = pki();
    let listener = auto_listener(&pki).await;
    let at = listener.local_addr();
    let options = Options::default();
    // One session per transport, dialed directly (an Auto dial may leave a loser).
    let (quic, quic_server) = tokio::join!(
        qymux_quic::dial_resolved(
            "quic",
            vec![at],
            "localhost",
            pki.client.clone(),
            options.clone()
        ),
        listener.accept(),
    );
    let (quic, quic_server) = (quic.unwrap(), quic_server.unwrap());
    assert_eq!(quic_server.protocol(), Protocol::Quic);
    let (tcp, tcp_server) = tokio::join!(
        qymux_tcp::dial_resolved("tcp", vec![at], "localhost", pki.client.clone(), options),
        listener.accept(),
    );
    let (tcp, tcp_server) = (tcp.unwrap(), tcp_server.unwrap());
    assert_eq!(tcp_server.protocol(), Protocol::Tcp);
    // A stream the QUIC agent never finishes.
    let mut open = quic.open().await.unwrap();
    open.write_all(b"busy").await.unwrap();
    let mut held = guard("the busy stream at the server", quic_server.accept())
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();

    let report = guard("shutdown", listener.shutdown(Duration::from_millis(500))).await;
    assert_eq!(
        (report.drained, report.cut),
        (1, 1),
        "the idle TCP session drained, the busy QUIC one was cut: {report:?}"
    );
    drop((open, held, quic, tcp, quic_server, tcp_server));
}

/// A UDP relay in front of `upstream` that passes the client's first datagram (its
/// Initial, with the ClientHello) and drops every later one, while passing everything
/// the server sends: the server answers (its handshake flight reaches the client, whose
/// side of the TLS handshake completes), but never hears the client's Finished, so the
/// QUIC handshake never completes. Counts the server's datagrams that got through.
struct AnswerThenStall {
    socket: Arc<tokio::net::UdpSocket>,
    answers: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerThenStall {
    async fn start(socket: std::net::UdpSocket, upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        socket.set_nonblocking(true).unwrap();
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket).unwrap());
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        server.connect(upstream).await.unwrap();
        let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (front, count) = (socket.clone(), answers.clone());
        let task = tokio::spawn(async move {
            let (mut from_client, mut from_server) = ([0u8; 2048], [0u8; 2048]);
            let mut client = None;
            loop {
                tokio::select! {
                    received = front.recv_from(&mut from_client) => {
                        let Ok((n, from)) = received else { return };
                        if client.is_none() {
                            client = Some(from);
                            let _ = server.send(&from_client[..n]).await;
                        }
                    }
                    received = server.recv(&mut from_server) => {
                        let Ok(n) = received else { return };
                        if let Some(client) = client {
                            count.fetch_add(1, Ordering::SeqCst);
                            let _ = front.send_to(&from_server[..n], client).await;
                        }
                    }
                }
            }
        });
        AnswerThenStall {
            socket,
            answers,
            task,
        }
    }

    fn answers(&self) -> usize {
        self.answers.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for AnswerThenStall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// QUIC is penalised only when the server never answered over UDP. Here the server
/// answers QUIC (its handshake flight arrives) but the handshake cannot complete, and TCP
/// wins the race. The QUIC attempt is not a broken path: the penalty the race applied is
/// lifted as the answer is seen (without it, the loser would be dropped unanswered-as-far-
/// as-anyone-knows after its grace, and QUIC skipped for 5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_attempt_the_server_answered_is_not_penalised_though_it_lost_and_stalled() {
    use qymux_testsupport::fault::{FaultProxy, Transport};

    let pki = pki();
    let listener = auto_listener(&pki).await;
    let upstream = listener.local_addr();
    // The stalling UDP relay and a plain TCP relay on one port number.
    let (relay, _tcp) = guard("a port free for UDP and TCP", async {
        loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let at = udp.local_addr().unwrap();
            if let Ok(tcp) = FaultProxy::bind(Transport::Tcp, at, upstream).await {
                break (AnswerThenStall::start(udp, upstream).await, tcp);
            }
        }
    })
    .await;
    let at = relay.socket.local_addr().unwrap();
    let memory = Arc::new(TransportMemory::default());
    let dialer = Dialer::new(at.to_string(), "localhost", pki.client.clone())
        .attempt_delay(Duration::from_millis(10))
        .memory(memory.clone());
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(session) = listener.accept().await {
            held.push(session);
        }
    });

    let agent = guard("dial", dialer.dial()).await.unwrap();
    assert_eq!(agent.protocol(), Protocol::Tcp, "QUIC cannot complete here");
    guard(
        "QUIC allowed again: the server answered",
        memory.quic_allowed(at),
    )
    .await;
    assert!(
        relay.answers() > 0,
        "the server's handshake flight got through"
    );
    assert!(memory.quic_broken_until(at).is_none());
    accepting.abort();
}
