//! Admission under a flood of genuine QUIC Initials from one address (127.0.0.2), sent
//! by sockets that never go further: a client from 127.0.0.1 must still get in, by the
//! per-source cap or by address validation (Retry).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Pki, options};
use qymux_quic::{Listener, dial, dial_with_endpoint};
use qymux_transport::{Options, QuicRetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// Initials in the flood: more than the listener's handshake slots.
const FLOOD: usize = 150;

/// Captures `n` client Initials, each of a connection attempt of its own (its own
/// destination connection ID), made by a real quinn client on 127.0.0.2.
async fn capture_initials(pki: &Pki, n: usize) -> Vec<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap().to_string();
    let endpoint = qymux_quic::quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut dial_options = options();
    dial_options.handshake_timeout(Duration::from_secs(30));
    let mut attempts = tokio::task::JoinSet::new();
    let tls = pki.client_tls();
    let mut initials = Vec::new();
    let mut seen_dcids = std::collections::HashSet::new();
    let mut buf = vec![0u8; 65536];
    while initials.len() < n {
        let (endpoint, addr, tls, o) = (
            endpoint.clone(),
            sink_addr.clone(),
            tls.clone(),
            dial_options.clone(),
        );
        attempts.spawn(async move {
            dial_with_endpoint(&endpoint, &addr, "localhost", tls, o.clone()).await
        });
        // Its first datagram; retransmissions of earlier attempts carry a DCID seen before.
        loop {
            let (len, _) = sink.recv_from(&mut buf).await.unwrap();
            let packet = &buf[..len];
            // Long header: flags, version (4), DCID length, DCID.
            let dcid_len = packet[5] as usize;
            let dcid = packet[6..6 + dcid_len].to_vec();
            if seen_dcids.insert(dcid) {
                initials.push(packet.to_vec());
                break;
            }
        }
    }
    attempts.abort_all();
    initials
}

/// Sends each Initial once from its own socket on 127.0.0.2; the sockets are kept so the
/// server's answers can be counted.
async fn flood(initials: &[Vec<u8>], target: SocketAddr) -> Vec<UdpSocket> {
    let mut sockets = Vec::with_capacity(initials.len());
    for initial in initials {
        let socket = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        socket.send_to(initial, target).await.unwrap();
        sockets.push(socket);
    }
    sockets
}

/// Records each flood socket's first answer: `Some(true)` for a Retry packet (long
/// header, type 3), `Some(false)` for anything else (the start of a handshake).
fn record_answers(sockets: &[UdpSocket], seen: &mut [Option<bool>]) {
    let mut buf = vec![0u8; 65536];
    for (socket, seen) in sockets.iter().zip(seen.iter_mut()) {
        while let Ok((len, _)) = socket.try_recv_from(&mut buf) {
            if seen.is_none() {
                *seen = Some(len > 0 && buf[0] & 0xb0 == 0xb0);
            }
        }
    }
}

/// Waits until at least `n` flood sockets were answered; returns which were.
async fn wait_for_answers(sockets: &[UdpSocket], n: usize) -> Vec<bool> {
    let mut answered = vec![false; sockets.len()];
    let mut buf = vec![0u8; 65536];
    tokio::time::timeout(Duration::from_secs(30), async {
        while answered.iter().filter(|a| **a).count() < n {
            for (i, socket) in sockets.iter().enumerate() {
                if !answered[i] && socket.try_recv_from(&mut buf).is_ok() {
                    answered[i] = true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the listener answers the flood's first Initials");
    answered
}

fn server_options(per_source: usize, retry: QuicRetry) -> Options {
    let mut o = options();
    o.max_pending_handshakes(64)
        .max_pending_per_source(per_source)
        .quic_retry(retry)
        // The flood's slots stay taken for the whole test unless a cap turns it away.
        .handshake_timeout(Duration::from_secs(120))
        .first_flight_timeout(Duration::from_secs(120));
    o
}

/// A listener with `server_options(per_source, retry)`, and the flood's sockets once
/// each of its `FLOOD` Initials (captured beforehand) was sent.
async fn flooded_listener(per_source: usize, retry: QuicRetry) -> (Pki, Listener, Vec<UdpSocket>) {
    let pki = Pki::new();
    let initials = capture_initials(&pki, FLOOD).await;
    let listener = Listener::bind(
        "127.0.0.1:0",
        pki.server_tls(),
        server_options(per_source, retry),
    )
    .await
    .unwrap();
    let sockets = flood(&initials, listener.local_addr()).await;
    (pki, listener, sockets)
}

async fn good_client(listener: &Listener, pki: &Pki) -> qymux_transport::Result<()> {
    let mut o = options();
    o.handshake_timeout(Duration::from_secs(5));
    let client = dial(
        &listener.local_addr().to_string(),
        "localhost",
        pki.client_tls(),
        o.clone(),
    )
    .await?;
    let accepted = listener.accept().await?;
    let mut stream = client.open().await?;
    stream.write_all(b"ping").await?;
    let mut incoming = accepted.accept().await?;
    let mut buf = [0u8; 4];
    incoming.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_source_cap_keeps_a_flood_of_initials_from_locking_others_out() {
    let (pki, listener, sockets) = flooded_listener(8, QuicRetry::Never).await;
    let answered = wait_for_answers(&sockets, 8).await;
    good_client(&listener, &pki)
        .await
        .expect("a client from 127.0.0.1 gets in during the flood");
    // Beyond its 8 slots the source was ignored: no answer (an answer would make the
    // listener a reflector for forged sources).
    let mut buf = vec![0u8; 65536];
    let others = sockets
        .iter()
        .zip(&answered)
        .filter(|(socket, seen)| !**seen && socket.try_recv_from(&mut buf).is_ok())
        .count();
    assert_eq!(
        answered.iter().filter(|a| **a).count() + others,
        8,
        "only 8 of {FLOOD} Initials from one address were answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_lets_clients_in_while_unvalidated_initials_fill_the_listener() {
    // No per-source cap to speak of: address validation alone protects the listener.
    // Once half the slots are taken, every unvalidated Initial gets a stateless Retry;
    // the flood never answers it, the real client does and gets in.
    let (pki, listener, sockets) = flooded_listener(1000, QuicRetry::Auto).await;
    let _ = wait_for_answers(&sockets, FLOOD).await;
    good_client(&listener, &pki)
        .await
        .expect("a client from 127.0.0.1 gets in during the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_what_the_flood_gets_once_the_listener_is_half_full() {
    let (_pki, _listener, sockets) = flooded_listener(1000, QuicRetry::Auto).await;
    // Each socket is answered: a handshake (the first 32) or a Retry (the rest).
    let mut seen = vec![None; FLOOD];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.iter().any(Option::is_none) && tokio::time::Instant::now() < deadline {
        record_answers(&sockets, &mut seen);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered = seen.iter().filter(|s| s.is_some()).count();
    let retries = seen.iter().filter(|s| **s == Some(true)).count();
    assert_eq!(
        answered, FLOOD,
        "every Initial is answered, with state or statelessly"
    );
    assert_eq!(
        retries,
        FLOOD - 32,
        "beyond half of the 64 slots, Initials get a Retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_caps_or_retry_the_same_flood_locks_the_listener() {
    // The control experiment: the flood is real. With the per-source cap as high as the
    // global one and no Retry, 127.0.0.2 takes all 64 slots, and the good client's
    // Initial is ignored until its handshake times out.
    let (pki, listener, sockets) = flooded_listener(64, QuicRetry::Never).await;
    let _ = wait_for_answers(&sockets, 64).await;
    assert!(
        good_client(&listener, &pki).await.is_err(),
        "the listener is locked"
    );
}

/// Dials the listener from a client endpoint bound to `local`.
async fn dial_from(
    local: &str,
    listener: &Listener,
    pki: &Pki,
    within: Duration,
) -> qymux_transport::Result<qymux_quic::Session> {
    let endpoint = qymux_quic::quinn::Endpoint::client(local.parse().unwrap()).unwrap();
    let mut o = options();
    o.connect_timeout(within).handshake_timeout(within);
    let target = listener.local_addr().to_string();
    dial_with_endpoint(&endpoint, &target, "localhost", pki.client_tls(), o.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_hook_accepts_refuses_retries_and_ignores() {
    use std::sync::{Arc, Mutex};

    use qymux_transport::admission::Admit;

    let pki = Pki::new();
    let seen: Arc<Mutex<Vec<(std::net::IpAddr, bool)>>> = Arc::default();
    let mut o = server_options(1000, QuicRetry::Never);
    o.admission({
        let seen = seen.clone();
        move |attempt| {
            let ip = attempt.peer().ip();
            seen.lock().unwrap().push((ip, attempt.validated()));
            match ip.to_string().as_str() {
                "127.0.0.2" => Admit::Refuse,
                "127.0.0.3" => Admit::Ignore,
                _ if !attempt.validated() => Admit::Retry,
                _ => Admit::Accept,
            }
        }
    });
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), o)
        .await
        .unwrap();
    let attempts_from = |ip: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(seen_ip, _)| seen_ip.to_string() == ip)
            .map(|(_, validated)| *validated)
            .collect::<Vec<_>>()
    };

    // Retry (Never is the listener's own policy: this Retry is the hook's), then in.
    good_client(&listener, &pki)
        .await
        .expect("the hook lets 127.0.0.1 in after a Retry");
    assert_eq!(
        attempts_from("127.0.0.1"),
        [false, true],
        "asked once unvalidated, once back with the Retry token"
    );

    // Refused: the client hears it at once, long before its timeout.
    let refused = dial_from("127.0.0.2:0", &listener, &pki, Duration::from_secs(60)).await;
    let err = refused.expect_err("the hook refuses 127.0.0.2");
    assert!(
        matches!(&err, qymux_transport::Error::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "a refusal is CONNECTION_REFUSED: {err:?}"
    );

    // Ignored: no answer at all, so the client runs into its own timeout.
    let ignored = dial_from("127.0.0.3:0", &listener, &pki, Duration::from_millis(800)).await;
    let err = ignored.expect_err("the hook ignores 127.0.0.3");
    assert!(
        matches!(err, qymux_transport::Error::Timeout { .. }),
        "an ignored client hears nothing and times out: {err:?}"
    );
    assert!(
        !attempts_from("127.0.0.3").is_empty(),
        "the hook saw the ignored attempt"
    );
}
