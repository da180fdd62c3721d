//! One resolution per dial, shared by QUIC and TCP; QUIC races the resolved addresses as
//! Happy Eyeballs does; what the dialer remembers is keyed by the resolved address; the
//! attempt delay follows the measured QUIC dial time. Real sockets on loopback.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qymux_dialer::{Dialer, Listener, TransportMemory};
use qymux_transport::{Mode, Options, Protocol, Session};
use support::{Blackhole, guard, pki};

/// Long connect and handshake timeouts: a dial that waited on a silent address for them
/// would hit the hang guard.
fn patient_options() -> Options {
    let mut o = Options::default();
    o.connect_timeout(Duration::from_secs(30))
        .handshake_timeout(Duration::from_secs(30));
    o
}

async fn auto_listener(pki: &support::Pki) -> Listener {
    Listener::bind(
        "127.0.0.1:0",
        pki.server.clone(),
        Options::default(),
        Mode::Auto,
    )
    .await
    .unwrap()
}

/// A name whose first address drops QUIC silently (a UDP socket on 127.0.0.7 that reads
/// and never answers), listed before one that works: QUIC connects via the second.
/// Mode::Quic, so no TCP fallback hides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connects_via_the_second_address_when_the_first_drops_it() {
    let pki = pki();
    let listener = auto_listener(&pki).await;
    let silent = Blackhole::bind_on("127.0.0.7");
    let good = listener.local_addr();
    let dialer = Dialer::new("two-addresses.invalid:1", "localhost", pki.client.clone())
        .resolved_addrs([silent.addr(), good])
        .mode(Mode::Quic)
        .options(patient_options());
    let accepting = tokio::spawn(async move {
        let session = listener.accept().await;
        (listener, session)
    });
    let agent = guard("QUIC dial", dialer.dial()).await.unwrap();
    let (_listener, server) = guard("accept", accepting).await.unwrap();
    let server = server.unwrap();
    assert_eq!(agent.protocol(), Protocol::Quic);
    assert_eq!(
        agent.remote_addr(),
        good,
        "connected via the working address"
    );
    assert_eq!(server.remote_addr().port(), agent.local_addr().port());
    assert!(silent.received() > 0, "the silent address was tried first");
}

/// Each QUIC attempt has its own connect deadline, counted from its own start: five
/// silent addresses listed first, a connect timeout of 1 s, and the working address
/// (whose attempt starts about 1 s into the dial) still connects. Under one deadline for
/// the whole dial, its attempt would start after that deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quic_attempt_has_its_own_deadline() {
    let pki = pki();
    let listener = auto_listener(&pki).await;
    let silent: Vec<Blackhole> = (7..12)
        .map(|i| Blackhole::bind_on(&format!("127.0.0.{i}")))
        .collect();
    let mut options = Options::default();
    options.connect_timeout(Duration::from_secs(1));
    let good = listener.local_addr();
    let dialer = Dialer::new("six-addresses.invalid:1", "localhost", pki.client.clone())
        .resolved_addrs(silent.iter().map(Blackhole::addr).chain([good]))
        .mode(Mode::Quic)
        .options(options);
    // Accepted on the side (a failed dial must fail the test, not wait for a session);
    // the listener and the session are kept: dropping either would close the agent's.
    let accepting = tokio::spawn(async move {
        let session = listener.accept().await;
        (listener, session)
    });
    let agent = guard("QUIC dial", dialer.dial())
        .await
        .expect("the last address gets a connect timeout of its own");
    assert_eq!(agent.remote_addr(), good);
    assert!(
        silent.iter().all(|s| s.received() > 0),
        "every silent address was tried"
    );
    let (_listener, server) = guard("accept", accepting).await.unwrap();
    assert_eq!(
        server.unwrap().remote_addr().port(),
        agent.local_addr().port()
    );
}

/// Auto resolves once and gives TCP the same addresses: a target whose name does not
/// resolve at all is reached over TCP through the addresses given, after QUIC (silent
/// there) was tried at them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_dials_the_addresses_quic_was_given() {
    let pki = pki();
    let (listener, blackhole) = tcp_server_with_blackholed_udp(&pki).await;
    let at = listener.local_addr();
    let dialer = Dialer::new("no-such-name.invalid:1", "localhost", pki.client.clone())
        .resolved_addrs([at])
        .attempt_delay(Duration::from_millis(50))
        .options(patient_options());
    let (agent, _server) = tokio::join!(guard("dial", dialer.dial()), listener.accept());
    let agent = agent.unwrap();
    assert_eq!(agent.protocol(), Protocol::Tcp);
    assert_eq!(agent.remote_addr(), at);
    assert!(blackhole.received() > 0, "QUIC went to the same address");
    assert!(
        dialer.transport_memory().quic_broken_until(at).is_some(),
        "remembered against the address"
    );
}

/// Two names of one server share what is remembered: `127.0.0.1:port` falls back to TCP
/// (UDP blackholed) and QUIC is penalised; a dialer for `localhost:port` with the same
/// memory then goes straight to TCP, sending no QUIC attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_of_one_server_share_the_memory() {
    let pki = pki();
    let (listener, blackhole) = tcp_server_with_blackholed_udp(&pki).await;
    let port = listener.local_addr().port();
    let memory = Arc::new(TransportMemory::default());
    let by_address = Dialer::new(format!("127.0.0.1:{port}"), "localhost", pki.client.clone())
        .attempt_delay(Duration::from_millis(50))
        .options(patient_options())
        .memory(memory.clone());
    let (agent, _server) = tokio::join!(guard("dial", by_address.dial()), listener.accept());
    assert_eq!(agent.unwrap().protocol(), Protocol::Tcp);
    assert!(memory.quic_broken_until(by_address.addr()).is_some());

    let by_name = by_address.with_addr(format!("localhost:{port}"));
    let resolved = by_name.resolve().await.unwrap();
    assert!(
        resolved.contains(&listener.local_addr()),
        "localhost resolves to the server's address here: {resolved:?}"
    );
    assert!(
        memory.quic_broken_until(by_name.addr()).is_some(),
        "the other name sees the penalty"
    );
    let before = blackhole.senders();
    let (agent, _server) = tokio::join!(guard("dial", by_name.dial()), listener.accept());
    assert_eq!(agent.unwrap().protocol(), Protocol::Tcp);
    assert_eq!(
        blackhole.senders(),
        before,
        "QUIC skipped: the penalty is the server's, not the name's"
    );
}

/// The attempt delay follows the measured QUIC dial time, not only the round-trip
/// time. QUIC's datagrams are held back 150 ms each way, so a dial, which takes two round
/// trips (the server's first flight, then its HANDSHAKE_DONE), takes at least 600 ms,
/// while the RTT is about 300 ms: 1.5 x RTT (the old delay, about 450 ms) would start
/// TCP before QUIC could connect again; 1.5 x the dial time does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_delay_follows_the_measured_quic_dial_time() {
    use qymux_testsupport::fault::{Fault, FaultProxy, Transport};

    let pki = pki();
    let listener = auto_listener(&pki).await;
    let udp = FaultProxy::start(Transport::Udp, listener.local_addr())
        .await
        .unwrap();
    udp.set(Fault::Delay(Duration::from_millis(150)));
    let at: SocketAddr = udp.local_addr();
    let memory = Arc::new(TransportMemory::default());
    // Long enough that QUIC wins the first dial; TCP is never started.
    let dialer = Dialer::new(at.to_string(), "localhost", pki.client.clone())
        .attempt_delay(Duration::from_secs(30))
        .options(patient_options())
        .memory(memory.clone());
    let (agent, _server) = tokio::join!(guard("dial", dialer.dial()), listener.accept());
    assert_eq!(agent.unwrap().protocol(), Protocol::Quic);

    let dial_time = memory
        .quic_dial_time(at)
        .expect("the dial time is recorded");
    let rtt = memory.quic_rtt(at).expect("and the RTT");
    assert!(
        dial_time >= Duration::from_millis(600),
        "two round trips of at least 300 ms each: {dial_time:?}"
    );
    let delay = memory.attempt_delay(at).unwrap();
    assert_eq!(
        delay,
        (dial_time * 3 / 2).min(Duration::from_secs(2)),
        "1.5 x the dial time (RTT {rtt:?})"
    );
    assert!(delay >= Duration::from_millis(900));
}

/// A TCP-only Qymux server whose UDP port is blackholed (the UDP port taken first, TCP
/// bound on the same number).
async fn tcp_server_with_blackholed_udp(pki: &support::Pki) -> (Listener, Blackhole) {
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
