//! Admission under a flood from one address: connections from 127.0.0.2 that never send
//! a byte must not lock out a client from 127.0.0.1, and must give their slots back
//! after the first-flight bound, not after the handshake timeout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Pki, options};
use qymux_tcp::{Listener, dial};
use qymux_transport::Options;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Silent connections the flood holds: far more than the listener's handshake slots.
const FLOOD: usize = 300;

fn server_options(per_source: usize) -> Options {
    let mut o = options();
    o.max_pending_handshakes(64)
        .max_pending_per_source(per_source)
        // Long enough that only the first-flight bound can free the flood's slots.
        .handshake_timeout(Duration::from_secs(120))
        .first_flight_timeout(Duration::from_millis(500));
    o
}

async fn from_127_0_0_2(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().unwrap())?;
    socket.connect(target).await
}

/// Opens `FLOOD` connections from 127.0.0.2 that send nothing, and keeps them open.
async fn flood(target: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        held.push(
            from_127_0_0_2(target)
                .await
                .expect("connect from 127.0.0.2"),
        );
    }
    held
}

/// Whether the server closed `conn` (EOF or reset) within `within`.
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, conn.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_from_one_address_locks_nobody_out() {
    let pki = Pki::new();
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), server_options(16))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let mut held = flood(addr).await;

    // A client from another address gets in while the flood holds its connections.
    let mut client_options = options();
    client_options.handshake_timeout(Duration::from_secs(10));
    let client = dial(
        &addr.to_string(),
        "localhost",
        pki.client_tls(),
        client_options.clone(),
    )
    .await
    .expect("a client from 127.0.0.1 must get in during the flood");
    let accepted = listener.accept().await.unwrap();
    let mut stream = client.open().await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut incoming = accepted.accept().await.unwrap();
    let mut buf = [0u8; 4];
    incoming.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // Beyond its 16 slots, the flood's connections were closed at once; the 16 that got
    // a slot are closed after the first-flight bound (0.5 s), long before the
    // handshake timeout (120 s).
    let mut closed = 0;
    for conn in &mut held {
        if closed_by_server(conn, Duration::from_secs(60)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, FLOOD,
        "every silent connection is closed by the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_per_source_cap_the_same_flood_locks_the_listener() {
    // The control experiment: the flood above is real. With the per-source cap as high
    // as the global one, 127.0.0.2 takes every handshake slot and a good client's
    // connection is closed without a handshake.
    let pki = Pki::new();
    let mut control = server_options(64);
    // Slots held for the whole run, however slowly the flood is opened.
    control.first_flight_timeout(Duration::from_secs(120));
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), control)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let _held = flood(addr).await;
    let mut client_options = options();
    client_options.handshake_timeout(Duration::from_secs(10));
    let refused = dial(
        &addr.to_string(),
        "localhost",
        pki.client_tls(),
        client_options.clone(),
    )
    .await;
    assert!(
        refused.is_err(),
        "with every slot held by one address, the listener turns others away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_client_hello_is_cut_at_the_first_flight_bound() {
    // One byte every 100 ms of a record announcing 512 bytes: 300 bytes (30 s) never
    // complete it, so only the first-flight bound (0.5 s) can close the connection; the
    // handshake timeout is 120 s.
    let pki = Pki::new();
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), server_options(16))
        .await
        .unwrap();
    let mut conn = TcpStream::connect(listener.local_addr()).await.unwrap();
    let record = [0x16u8, 0x03, 0x01, 0x02, 0x00];
    let mut closed = false;
    for byte in record.iter().cycle().take(300) {
        if conn.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if closed_by_server(&mut conn, Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling ClientHello is cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_hook_closes_turned_away_connections_at_once() {
    use std::sync::{Arc, Mutex};

    use qymux_transport::Protocol;
    use qymux_transport::admission::Admit;

    let pki = Pki::new();
    let asked: Arc<Mutex<Vec<(Protocol, bool)>>> = Arc::default();
    let mut o = server_options(16);
    // Long enough that only the hook can close a silent connection within the test.
    o.first_flight_timeout(Duration::from_secs(120));
    o.admission({
        let asked = asked.clone();
        move |attempt| {
            let seen = (attempt.protocol(), attempt.validated());
            asked.lock().unwrap().push(seen);
            if attempt.peer().ip().to_string() == "127.0.0.2" {
                Admit::Refuse
            } else {
                Admit::Accept
            }
        }
    });
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), o)
        .await
        .unwrap();
    let target = listener.local_addr();

    let mut turned_away = from_127_0_0_2(target).await.unwrap();
    assert!(
        closed_by_server(&mut turned_away, Duration::from_secs(60)).await,
        "the hook's refusal closes the connection"
    );

    let client = dial(
        &target.to_string(),
        "localhost",
        pki.client_tls(),
        options(),
    )
    .await
    .expect("127.0.0.1 is let in");
    let server = listener.accept().await.unwrap();
    let mut stream = client.open().await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut incoming = server.accept().await.unwrap();
    let mut buf = [0u8; 4];
    incoming.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // One decision per connection, each a TCP attempt whose handshake proved its address.
    assert_eq!(*asked.lock().unwrap(), [(Protocol::Tcp, true); 2]);
}
