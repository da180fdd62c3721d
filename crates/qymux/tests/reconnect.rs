//! The facade's reconnecting session: `Qymux::connect_forever` over several servers,
//! and `Listener::shutdown` sending the agent from one to the other.

use std::time::Duration;

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{
    Backoff, BoxSession, ClientConfig, CloseReason, Mode, Qymux, ReconnectConfig, ReconnectState,
    ServerConfig, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(60);

async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("hung for {GUARD:?}: {what}"),
    }
}

/// Accepts until the server side of `agent` comes (same transport, same client port):
/// in Auto mode the attempt that lost the race may complete its handshake at the server
/// too, and is closed by the dialer right away.
async fn accept_peer_of(listener: &qymux::Listener, agent: &BoxSession) -> BoxSession {
    loop {
        let session = listener.accept().await.expect("listener closed");
        if session.protocol() == agent.protocol()
            && session.remote_addr().port() == agent.local_addr().port()
        {
            return session;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_forever_moves_to_the_next_server_after_a_graceful_shutdown() {
    let ca = CertificateAuthority::new("Facade reconnect CA").unwrap();
    let mut server = ServerConfig::new(ServerTls::new(ca.issue_server(&["localhost"]).unwrap()));
    server.mode(Mode::Auto);
    let a = Qymux::listen("127.0.0.1:0", server.clone()).await.unwrap();
    let b = Qymux::listen("127.0.0.1:0", server).await.unwrap();
    let mut config = ClientConfig::new(a.local_addr().to_string());
    config
        .more_server_addrs([b.local_addr().to_string()])
        .server_name("localhost")
        .client_tls(ClientTls::with_ca(vec![ca.certificate().clone()]));
    let agent = Qymux::new(config);
    let (tx, mut callbacks) = mpsc::unbounded_channel();
    let mut config = ReconnectConfig::default();
    config.backoff(Backoff::new(
        Duration::from_millis(10),
        Duration::from_millis(100),
    ));
    let reconnecting = agent
        .connect_forever(config, move |session| {
            let tx = tx.clone();
            async move {
                // Answer every stream with "hello".
                let _ = tx.send(session.clone());
                while let Ok(mut stream) = session.accept().await {
                    let _ = stream.write_all(b"hello").await;
                    let _ = stream.shutdown().await;
                }
            }
        })
        .unwrap();
    let mut state = reconnecting.state();

    let agent_a = guard("callback on A", callbacks.recv()).await.unwrap();
    let on_a = guard("accept on A", accept_peer_of(&a, &agent_a)).await;
    let mut s = on_a.open().await.unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello");
    drop(s);

    guard("shutdown of A", a.shutdown(Duration::from_secs(30))).await;
    assert!(matches!(
        guard("agent sees a clean close", agent_a.closed()).await,
        CloseReason::Peer(_)
    ));

    let agent_b = guard("callback on B", callbacks.recv()).await.unwrap();
    let on_b = guard("accept on B", accept_peer_of(&b, &agent_b)).await;
    let s = guard(
        "connected to B",
        state.wait_for(|s| matches!(s, ReconnectState::Connected { generation: 2, .. })),
    )
    .await
    .unwrap()
    .clone();
    assert!(
        matches!(&s, ReconnectState::Connected { server, .. } if *server == b.local_addr().to_string())
    );
    let mut s = on_b.open().await.unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello");
    guard("agent shutdown", reconnecting.shutdown()).await;
}
