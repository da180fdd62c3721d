//! Agents behind proxies: whole Qymux sessions through real proxy servers that this
//! project did not write (tinyproxy for HTTP CONNECT, microsocks for SOCKS5, both from
//! Debian), in TCP and Auto mode; refusals typed by what the proxy answered; and hostile
//! "proxies" written here, to show the bounds.
//!
//! Without tinyproxy or microsocks these tests print `SKIP:` and pass; with
//! `QYMUX_REQUIRE_PEERS=1` (as `.ci/run` sets) they fail instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::transport::admission::Admit;
use qymux::transport::proxy::SocksReply;
use qymux::{
    BoxSession, ClientConfig, Error, Listener, Mode, Options, Protocol, Proxy, ProxyError, Qymux,
    ReconnectConfig, ReconnectState, ServerConfig, Session, TimeoutKind,
};
use qymux_testsupport::{ProxyServer, microsocks, tinyproxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const USER: &str = "qymux-agent";
/// tinyproxy's configuration accepts only `[-a-z0-9._]` in a password.
const HTTP_PASSWORD: &str = "s3cret.pa55";
/// microsocks takes any bytes: this one must be percent-encoded in a URL.
const SOCKS_PASSWORD: &str = "p@ss:w0rd/1";
const SOCKS_PASSWORD_ENCODED: &str = "p%40ss%3Aw0rd%2F1";

/// An Auto-mode server (UDP and TCP) on `localhost`, counting the QUIC attempts it sees.
struct Server {
    listener: Listener,
    client_tls: ClientTls,
    quic_attempts: Arc<AtomicUsize>,
}

impl Server {
    async fn start() -> Server {
        let ca = CertificateAuthority::new("Proxy test CA").unwrap();
        let server_tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap());
        let quic_attempts = Arc::new(AtomicUsize::new(0));
        let mut options = Options::default();
        let seen = quic_attempts.clone();
        options.admission(move |attempt| {
            if attempt.protocol() == Protocol::Quic {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            Admit::Accept
        });
        let mut server = ServerConfig::new(server_tls);
        server.options(options);
        // By name: the proxy resolves it (the listener binds the first address the
        // name resolves to, as a proxy connects to).
        let listener = Qymux::listen("localhost:0", server).await.unwrap();
        Server {
            listener,
            client_tls: ClientTls::with_ca(vec![ca.certificate().clone()]),
            quic_attempts,
        }
    }

    /// The target as an agent names it: by host name, for the proxy to resolve.
    fn target(&self) -> String {
        format!("localhost:{}", self.listener.local_addr().port())
    }

    fn agent(&self, mode: Mode, proxy: Proxy) -> Qymux {
        let mut config = ClientConfig::new(self.target());
        config
            .mode(mode)
            .client_tls(self.client_tls.clone())
            .connect_timeout(Duration::from_secs(5))
            .proxy(proxy);
        Qymux::new(config)
    }

    /// Dials through `agent`, carries a stream each way, and returns the protocol.
    async fn session(&self, agent: &Qymux) -> Protocol {
        let (session, accepted) = tokio::join!(agent.dial(), self.listener.accept());
        let (session, accepted) = (session.unwrap(), accepted.unwrap());
        assert_eq!(session.protocol(), accepted.protocol());
        both_ways(&session, &accepted).await;
        let protocol = session.protocol();
        session.close().await;
        protocol
    }
}

/// 256 KiB from the agent to the server and back on one stream, then a stream the
/// server opens to the agent.
async fn both_ways(agent: &BoxSession, server: &BoxSession) {
    let payload: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let echo = async {
        let mut s = server.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
    };
    let call = async {
        let mut s = agent.open().await.unwrap();
        s.write_all(&payload).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(echo, call);
    assert!(back == payload, "the echo through the proxy differs");

    let reverse = async {
        let mut s = server.open().await.unwrap();
        s.write_all(b"from the server, through the proxy")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    };
    let receive = async {
        let mut s = agent.accept().await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(reverse, receive);
    assert_eq!(got, "from the server, through the proxy");
}

fn http_url(proxy: &ProxyServer, user: &str, password: &str) -> Proxy {
    Proxy::parse(&format!("http://{user}:{password}@{}", proxy.addr())).unwrap()
}

fn socks_url(proxy: &ProxyServer, encoded_password: &str) -> Proxy {
    Proxy::parse(&format!(
        "socks5://{USER}:{encoded_password}@{}",
        proxy.addr()
    ))
    .unwrap()
}

fn proxy_error(result: qymux::Result<BoxSession>) -> ProxyError {
    match result {
        Err(Error::Proxy { error, proxy, .. }) => {
            assert!(
                !proxy.contains(USER) && !proxy.contains("pa55") && !proxy.contains("w0rd"),
                "credentials in {proxy}"
            );
            error
        }
        Err(other) => panic!("expected a proxy error, got {other:?}"),
        Ok(s) => panic!(
            "expected a proxy error, got a session over {}",
            s.protocol()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_tinyproxy_in_tcp_and_auto_mode() {
    let Some(proxy) = tinyproxy(Some((USER, HTTP_PASSWORD)), &[]).await else {
        return;
    };
    let server = Server::start().await;
    for mode in [Mode::Tcp, Mode::Auto] {
        let agent = server.agent(mode, http_url(&proxy, USER, HTTP_PASSWORD));
        assert_eq!(server.session(&agent).await, Protocol::Tcp, "{mode}");
    }
    // Auto with a proxy does not try QUIC: no UDP reached the server.
    assert_eq!(server.quic_attempts.load(Ordering::SeqCst), 0);
    // And the proxy carried both: it logged each CONNECT, by name.
    let connects = format!("CONNECT {} HTTP/1.1", server.target());
    let log = proxy.log();
    assert_eq!(log.matches(&connects).count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_microsocks_in_tcp_and_auto_mode() {
    let Some(proxy) = microsocks(Some((USER, SOCKS_PASSWORD))).await else {
        return;
    };
    let server = Server::start().await;
    for mode in [Mode::Tcp, Mode::Auto] {
        let agent = server.agent(mode, socks_url(&proxy, SOCKS_PASSWORD_ENCODED));
        assert_eq!(server.session(&agent).await, Protocol::Tcp, "{mode}");
    }
    assert_eq!(server.quic_attempts.load(Ordering::SeqCst), 0);
    // The name went to the proxy, which resolved it.
    let connected = format!("connected to {}", server.target());
    let log = proxy.log();
    assert_eq!(log.matches(&connected).count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_a_typed_refusal() {
    let (Some(http), Some(socks)) = (
        tinyproxy(Some((USER, HTTP_PASSWORD)), &[]).await,
        microsocks(Some((USER, SOCKS_PASSWORD))).await,
    ) else {
        return;
    };
    let server = Server::start().await;
    let http_plain = Proxy::parse(&format!("http://{}", http.addr())).unwrap();
    let socks_plain = Proxy::parse(&format!("socks5://{}", socks.addr())).unwrap();
    let cases = [
        (http_url(&http, USER, "wrong.pa55"), "HTTP 40"),
        (http_plain, "(no credentials are configured)"),
        (
            socks_url(&socks, "wrong%40w0rd"),
            "username/password refused",
        ),
        (socks_plain, "no credentials are configured"),
    ];
    for (proxy, says) in cases {
        let shown = proxy.to_string();
        for mode in [Mode::Tcp, Mode::Auto] {
            match proxy_error(server.agent(mode, proxy.clone()).dial().await) {
                ProxyError::AuthenticationRefused(answer) => {
                    assert!(answer.contains(says), "{shown}: {answer}")
                }
                other => panic!("{shown}: expected a refusal of the credentials, got {other:?}"),
            }
        }
    }
    let e = server
        .agent(Mode::Tcp, http_url(&http, USER, "wrong.pa55"))
        .dial()
        .await
        .unwrap_err();
    assert_eq!(
        std::io::Error::from(e).kind(),
        std::io::ErrorKind::PermissionDenied
    );
    assert_eq!(server.quic_attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_the_target_says_so() {
    // tinyproxy allowing CONNECT to port 443 only: our server's port is refused.
    let (Some(only_443), Some(http), Some(socks)) = (
        tinyproxy(Some((USER, HTTP_PASSWORD)), &[443]).await,
        tinyproxy(None, &[]).await,
        microsocks(None).await,
    ) else {
        return;
    };
    let server = Server::start().await;
    match proxy_error(
        server
            .agent(Mode::Tcp, http_url(&only_443, USER, HTTP_PASSWORD))
            .dial()
            .await,
    ) {
        ProxyError::HttpStatus { status, reason } => {
            assert_eq!((status, reason.as_str()), (403, "Access violation"))
        }
        other => panic!("{other:?}"),
    }

    // A port where nobody listens: the proxy cannot connect, and says so.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let agent = |proxy: &str| {
        let mut config = ClientConfig::new(format!("127.0.0.1:{closed_port}"));
        config
            .mode(Mode::Auto)
            .server_name("localhost")
            .client_tls(server.client_tls.clone())
            .proxy(Proxy::parse(proxy).unwrap());
        Qymux::new(config)
    };
    match proxy_error(agent(&format!("http://{}", http.addr())).dial().await) {
        ProxyError::HttpStatus { status, reason } => {
            assert_eq!((status, reason.as_str()), (500, "Unable to connect"))
        }
        other => panic!("{other:?}"),
    }
    let e = proxy_error(agent(&format!("socks5://{}", socks.addr())).dial().await);
    assert!(
        matches!(e, ProxyError::Socks(SocksReply::ConnectionRefused)),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the proxy answered SOCKS5 reply 5 (connection refused)"
    );
}

/// A "proxy" that answers `200` and then a header line that never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_reply_header_is_cut_at_the_cap() {
    let hostile = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hostile.local_addr().unwrap();
    let flood = tokio::spawn(async move {
        let (mut conn, _) = hostile.accept().await.unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ")
            .await
            .unwrap();
        let filler = [b'a'; 4096];
        let mut sent = 0usize;
        // Until the agent hangs up: then writing fails.
        while conn.write_all(&filler).await.is_ok() {
            sent += filler.len();
        }
        sent
    });
    let mut config = ClientConfig::new("localhost:9");
    config
        .mode(Mode::Auto)
        .client_tls(ClientTls::with_webpki_roots())
        .proxy(Proxy::parse(&format!("http://{addr}")).unwrap());
    let agent = Qymux::new(config);
    match proxy_error(agent.dial().await) {
        ProxyError::ReplyTooLong { limit } => assert_eq!(limit, 16 * 1024),
        other => panic!("{other:?}"),
    }
    // The agent stopped reading and closed the connection: the flood ends.
    let sent = flood.await.unwrap();
    assert!(sent >= 16 * 1024, "{sent}");
}

/// A "proxy" that accepts and never answers: the connect timeout bounds the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_proxy_is_bounded_by_the_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (mut http, _) = silent.accept().await.unwrap();
        let (mut socks, _) = silent.accept().await.unwrap();
        // Read what they send, answer nothing, until each hangs up.
        let mut sink = Vec::new();
        let _ = http.read_to_end(&mut sink).await;
        let _ = socks.read_to_end(&mut sink).await;
    });
    for scheme in ["http", "socks5"] {
        let mut config = ClientConfig::new("localhost:9");
        config
            .mode(Mode::Tcp)
            .client_tls(ClientTls::with_webpki_roots())
            .connect_timeout(Duration::from_millis(300))
            .proxy(Proxy::parse(&format!("{scheme}://{addr}")).unwrap());
        let agent = Qymux::new(config);
        match agent.dial().await {
            Err(Error::Timeout {
                what: TimeoutKind::Connect,
                ..
            }) => {}
            other => panic!("{scheme}: {other:?}"),
        }
    }
    hold.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_goes_direct_only_when_asked() {
    let Some(proxy) = tinyproxy(None, &[]).await else {
        return;
    };
    let server = Server::start().await;
    let http = Proxy::parse(&format!("http://{}", proxy.addr())).unwrap();

    // Mode::Quic cannot use a proxy: a configuration error, nothing sent.
    match server.agent(Mode::Quic, http.clone()).dial().await {
        Err(Error::Config(msg)) => assert!(msg.contains("proxy"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.quic_attempts.load(Ordering::SeqCst), 0);

    // Allowed: Auto races QUIC straight to the server beside TCP through the proxy, and
    // on loopback QUIC wins.
    let direct = http.allow_direct_quic(true);
    let agent = server.agent(Mode::Auto, direct.clone());
    assert_eq!(server.session(&agent).await, Protocol::Quic);
    assert!(server.quic_attempts.load(Ordering::SeqCst) > 0);
    let agent = server.agent(Mode::Quic, direct);
    assert_eq!(server.session(&agent).await, Protocol::Quic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_hosts_are_dialed_directly() {
    let server = Server::start().await;
    // Nothing listens at the proxy's address: a dial through it fails, typed.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = Proxy::parse(&format!("http://{dead_addr}")).unwrap();
    match proxy_error(server.agent(Mode::Tcp, proxy.clone()).dial().await) {
        ProxyError::Unreachable(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("{other:?}"),
    }
    // With the target in its NO_PROXY list, Auto goes direct, QUIC included.
    let agent = server.agent(Mode::Auto, proxy.no_proxy("example.com, localhost"));
    assert_eq!(server.session(&agent).await, Protocol::Quic);
}

/// A reconnecting agent through a proxy stays on TCP: it does not move the session to a
/// direct QUIC one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_stays_behind_its_proxy() {
    let Some(proxy) = microsocks(Some((USER, SOCKS_PASSWORD))).await else {
        return;
    };
    let server = Server::start().await;
    let agent = server.agent(Mode::Auto, socks_url(&proxy, SOCKS_PASSWORD_ENCODED));
    let reconnecting = agent
        // The callback holds each session until it ends (one that returns early
        // abandons its session, which is then closed and redialed).
        .connect_forever(ReconnectConfig::default(), |session| async move {
            session.closed().await;
        })
        .unwrap();
    let accepted = server.listener.accept().await.unwrap();
    let mut state = reconnecting.state();
    let protocol = loop {
        if let ReconnectState::Connected { protocol, .. } = &*state.borrow_and_update() {
            break *protocol;
        }
        state.changed().await.unwrap();
    };
    assert_eq!(protocol, Protocol::Tcp);
    let session = reconnecting.session().unwrap();
    both_ways(&session, &accepted).await;
    assert_eq!(server.quic_attempts.load(Ordering::SeqCst), 0);
    reconnecting.shutdown().await;
}
