//! The client and the reverse proxy over real sessions (TLS + yamux, and QUIC), against
//! real local hyper servers.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use qymux_conformance::Backend;
use qymux_http::{ProxyError, ProxyOptions, StopReason};
use qymux_transport::{BoxSession, CloseReason, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

on_both_backends!(
    requests_reach_the_target_with_host_and_without_hop_headers,
    streaming_response_flows_chunk_by_chunk,
    upgrade_passes_raw_bytes_both_ways,
    target_down_gives_502_with_the_reason,
    slow_target_gives_504,
    https_target_is_verified,
    http2_through_the_session,
    shutdown_and_session_end_are_reported,
    paths_leaving_the_base_are_refused_with_400,
    target_sees_the_session_peer_in_forwarded,
);

async fn get<S: Session>(
    client: &hyper_util::client::legacy::Client<qymux_http::SessionConnector<S>, Empty<Bytes>>,
    uri: &str,
) -> Response<Incoming> {
    timeout(WAIT, client.get(uri.parse().unwrap()))
        .await
        .expect("response in time")
        .expect("response")
}

async fn requests_reach_the_target_with_host_and_without_hop_headers<B: Backend>() {
    let target = spawn_target(standard_target).await;
    let mut options = ProxyOptions::default();
    options.preserve_host(true);
    let (pair, proxy) = proxied::<B>(&format!("http://{target}"), options).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());

    let response = get(&client, "http://agent-service.test/some/path?x=1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response.into_body()).await, "hello /some/path");

    let request = Request::get("http://agent-service.test:8080/headers?q=2")
        .header(CONNECTION, "keep-alive, X-Hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body(Empty::new())
        .unwrap();
    let response = timeout(WAIT, client.request(request))
        .await
        .unwrap()
        .unwrap();
    let h = response.headers();
    assert_eq!(
        h.get("x-resp-end").unwrap(),
        "1",
        "end-to-end response header"
    );
    for hop in ["x-resp-hop", "keep-alive"] {
        assert!(h.get(hop).is_none(), "hop-by-hop response header {hop}");
    }
    assert!(
        h.get(CONNECTION).is_none_or(|v| v != "x-resp-hop"),
        "the target's Connection header is not forwarded"
    );
    let seen = text(response.into_body()).await;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "GET /headers?q=2 HTTP/1.1", "{seen}");
    assert!(lines.contains(&"host: agent-service.test:8080"), "{seen}");
    assert!(lines.contains(&"x-end-to-end: kept"), "{seen}");
    assert!(lines.contains(&"te: trailers"), "{seen}");
    for hop in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(&format!("{hop}:"))),
            "{hop} must not reach the target: {seen}"
        );
    }
    assert!(proxy.stop_reason().is_none());

    // With preserve_host off (the default), the target sees its own authority.
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), ProxyOptions::default()).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    let seen = text(
        get(&client, "http://agent-service.test/headers")
            .await
            .into_body(),
    )
    .await;
    assert!(seen.contains(&format!("host: {target}\n")), "{seen}");
}

async fn streaming_response_flows_chunk_by_chunk<B: Backend>() {
    // The target hands each response's chunk sender to the test, which produces chunk
    // N + 1 only after the client has read chunk N: delivery must be incremental.
    let (senders_tx, mut senders) = mpsc::unbounded_channel::<mpsc::Sender<Bytes>>();
    let target = spawn_target(move |_req: Request<Incoming>| {
        let senders_tx = senders_tx.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            senders_tx.send(tx).unwrap();
            Response::builder()
                .header("content-type", "application/json")
                .body(ChannelBody(rx).boxed_unsync())
                .unwrap()
        }
    })
    .await;
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), ProxyOptions::default()).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());

    let response = get(&client, "http://agent-service/api/v1/pods?watch=true").await;
    assert_eq!(response.status(), StatusCode::OK);
    let chunks = timeout(WAIT, senders.recv()).await.unwrap().unwrap();
    let mut body = response.into_body();
    for i in 0..20 {
        let chunk = format!("{{\"type\":\"MODIFIED\",\"n\":{i}}}\n");
        chunks.send(Bytes::from(chunk.clone())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = timeout(WAIT, body.frame())
                .await
                .unwrap_or_else(|_| panic!("chunk {i} did not arrive before chunk {}", i + 1))
                .expect("body ended early")
                .expect("body frame");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(String::from_utf8(got).unwrap(), chunk);
    }
    drop(chunks);
    let end = timeout(WAIT, body.frame()).await.unwrap();
    assert!(end.is_none(), "the body ends when the target ends it");
}

async fn upgrade_passes_raw_bytes_both_ways<B: Backend>() {
    let target = spawn_target(|mut req: Request<Incoming>| async move {
        if req.headers().get(UPGRADE).is_none_or(|v| v != "echo") {
            let mut r = ok("upgrade to echo expected");
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.expect("target upgrade");
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = io.read(&mut buf).await.expect("echo read");
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.expect("echo write");
            }
            io.write_all(b"bye").await.expect("echo bye");
            io.shutdown().await.expect("echo shutdown");
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "echo")
            .body(full(Bytes::new()))
            .unwrap()
    })
    .await;
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), ProxyOptions::default()).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());

    let request = Request::get("http://agent-service/echo")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "echo")
        .body(Empty::new())
        .unwrap();
    let response = timeout(WAIT, client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers().get(UPGRADE).unwrap(), "echo");
    let upgraded = timeout(WAIT, hyper::upgrade::on(response))
        .await
        .unwrap()
        .expect("client upgrade");
    let mut io = TokioIo::new(upgraded);

    // Round trips: each answer arrives before the next question is sent.
    for i in 0..10 {
        let msg = format!("ping {i}");
        io.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        timeout(WAIT, io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // A bulk transfer both ways at once, then a half-close: the echo sees EOF, says bye
    // and finishes, and the client reads everything up to EOF.
    let data = qymux_conformance::payload(7, 4 * 1024 * 1024);
    let (mut r, mut w) = tokio::io::split(io);
    let writer = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let (_, got) = timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .expect("bulk echo in time");
    assert_eq!(got.len(), data.len() + 3);
    assert_eq!(&got[..data.len()], &data[..]);
    assert_eq!(&got[data.len()..], b"bye");
}

async fn target_down_gives_502_with_the_reason<B: Backend>() {
    // A port nobody listens on.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let (pair, proxy) = proxied::<B>(&format!("http://{addr}"), ProxyOptions::default()).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    for _ in 0..2 {
        let response = get(&client, "http://agent-service/healthz").await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = text(response.into_body()).await;
        assert!(body.contains(&addr.to_string()), "{body}");
        assert!(body.to_lowercase().contains("connection refused"), "{body}");
    }
    assert!(proxy.stop_reason().is_none(), "the proxy keeps serving");
}

async fn slow_target_gives_504<B: Backend>() {
    let target = spawn_target(|_req: Request<Incoming>| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let mut options = ProxyOptions::default();
    options.response_timeout(Some(Duration::from_millis(300)));
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), options).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    let response = get(&client, "http://agent-service/slow").await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = text(response.into_body()).await;
    assert!(body.contains("did not answer GET within 300ms"), "{body}");
}

async fn https_target_is_verified<B: Backend>() {
    let pki = Pki::new();
    let target = spawn_tls_target(standard_target, https_server_config(&pki)).await;
    let port = target.port();

    // Trusting the test CA (its config has ALPN "qymux"; the proxy uses http/1.1).
    for host in ["localhost", "127.0.0.1"] {
        let mut options = ProxyOptions::default();
        options.target_tls(pki.client_tls());
        let (pair, _proxy) = proxied::<B>(&format!("https://{host}:{port}"), options).await;
        let client = qymux_http::client::<_, Generated>(pair.server.clone());
        let (body, digest) = Generated::new(3, 3 * 1024 * 1024 + 5, 64 * 1024);
        let request = Request::post("http://agent-service/hash")
            .body(body)
            .unwrap();
        let response = timeout(WAIT, client.request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer = text(response.into_body()).await;
        let digest = digest.await.unwrap();
        assert_eq!(
            answer,
            format!("{} {} HTTP/1.1", 3 * 1024 * 1024 + 5, hex(&digest))
        );
    }

    // Another CA: the target is not trusted, and the 502 says why.
    let other = qymux_cert::CertificateAuthority::new("Another CA").unwrap();
    let mut options = ProxyOptions::default();
    options.target_tls(
        qymux_tls::ClientTls::with_ca(vec![other.certificate().clone()])
            .build()
            .unwrap(),
    );
    let (pair, _proxy) = proxied::<B>(&format!("https://localhost:{port}"), options).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    let response = get(&client, "http://agent-service/").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = text(response.into_body()).await;
    assert!(body.contains("UnknownIssuer"), "{body}");

    // By default the system roots are trusted, and the test CA is not among them.
    let pair = common::pair::<B>().await;
    let target_uri = format!("https://localhost:{port}").parse().unwrap();
    match qymux_http::serve_proxy(pair.client.clone(), target_uri, ProxyOptions::default()).await {
        Ok(_proxy) => {
            let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
            let response = get(&client, "http://agent-service/").await;
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            let body = text(response.into_body()).await;
            assert!(body.contains("UnknownIssuer"), "{body}");
        }
        // A machine without a system root store: refused up front, saying so.
        Err(ProxyError::Tls(reason)) => assert!(reason.contains("system root"), "{reason}"),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

async fn http2_through_the_session<B: Backend>() {
    let target = spawn_target(standard_target).await;
    let pair = pair::<B>().await;
    let mut options = ProxyOptions::default();
    options.preserve_host(true);
    let _proxy = qymux_http::serve_proxy(
        pair.client.clone(),
        format!("http://{target}").parse().unwrap(),
        options,
    )
    .await
    .unwrap();
    let session = Counting::new(pair.server.clone());
    let client = qymux_http::http2_client::<_, Generated>(session.clone());

    // The first request sets up the HTTP/2 connection; then 16 at once share it.
    let (body, _) = Generated::new(0, 0, 1);
    let response = timeout(
        WAIT,
        client.request(
            Request::get("http://agent-service:8080/first")
                .body(body)
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(text(response.into_body()).await, "hello /first");

    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let len = 1024 * 1024 + i * 1000;
            let (body, digest) = Generated::new(i, len, 16 * 1024);
            let body = if i % 2 == 0 { body.with_length() } else { body };
            let request = Request::post(format!("http://agent-service:8080/hash?i={i}"))
                .body(body)
                .unwrap();
            let response = timeout(WAIT, client.request(request))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(response.version(), Version::HTTP_2);
            assert_eq!(response.status(), StatusCode::OK);
            let answer = text(response.into_body()).await;
            // The proxy speaks HTTP/1.1 to the target.
            assert_eq!(
                answer,
                format!("{len} {} HTTP/1.1", hex(&digest.await.unwrap()))
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // :authority becomes Host.
    let (body, _) = Generated::new(0, 0, 1);
    let response = timeout(
        WAIT,
        client.request(
            Request::get("http://agent-service:8080/headers")
                .body(body)
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let seen = text(response.into_body()).await;
    assert!(seen.contains("host: agent-service:8080\n"), "{seen}");
    // The client pools per scheme and authority: one stream for all of them.
    assert_eq!(session.opened(), 1, "all requests share one HTTP/2 stream");
}

async fn shutdown_and_session_end_are_reported<B: Backend>() {
    // A streaming response stays open across the shutdown: it is cut after the timeout.
    let (senders_tx, mut senders) = mpsc::unbounded_channel::<mpsc::Sender<Bytes>>();
    let target = spawn_target(move |req: Request<Incoming>| {
        let senders_tx = senders_tx.clone();
        async move {
            if req.uri().path() != "/watch" {
                return standard_target(req).await;
            }
            let (tx, rx) = mpsc::channel(1);
            senders_tx.send(tx).unwrap();
            Response::new(ChannelBody(rx).boxed_unsync())
        }
    })
    .await;
    let pair = pair::<B>().await;
    // Over type-erased sessions.
    let agent = BoxSession::new(pair.client.clone());
    let server = BoxSession::new(pair.server.clone());
    let mut options = ProxyOptions::default();
    options.shutdown_timeout(Duration::from_millis(300));
    let proxy = qymux_http::serve_proxy(
        agent.clone(),
        format!("http://{target}").parse().unwrap(),
        options,
    )
    .await
    .unwrap();
    let client = qymux_http::client::<_, Empty<Bytes>>(server.clone());
    let response = get(&client, "http://agent-service/watch").await;
    let chunks = timeout(WAIT, senders.recv()).await.unwrap().unwrap();
    chunks.send(Bytes::from_static(b"event 1\n")).await.unwrap();
    let mut body = response.into_body();
    let first = timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "event 1\n");

    let started = Instant::now();
    proxy.shutdown();
    let reason = timeout(WAIT, proxy.stopped()).await.expect("stops in time");
    assert!(matches!(reason, StopReason::Shutdown), "{reason:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "in-flight responses get the shutdown timeout"
    );
    // The cut response is an error for the client, not a clean end.
    let after = timeout(WAIT, body.frame()).await.unwrap();
    assert!(
        matches!(after, Some(Err(_))),
        "a cut response must fail, got {after:?}"
    );
    proxy.shutdown(); // twice is harmless
    assert!(matches!(proxy.stop_reason(), Some(StopReason::Shutdown)));

    // A new proxy on the same session; the session's end stops it.
    let proxy = qymux_http::serve_proxy(
        agent.clone(),
        format!("http://{target}").parse().unwrap(),
        ProxyOptions::default(),
    )
    .await
    .unwrap();
    let client = qymux_http::client::<_, Empty<Bytes>>(server.clone());
    let response = get(&client, "http://agent-service/again").await;
    assert_eq!(text(response.into_body()).await, "hello /again");
    server.close().await;
    let reason = timeout(WAIT, proxy.stopped()).await.expect("stops in time");
    match reason {
        StopReason::SessionClosed(CloseReason::Peer(_)) => {}
        other => panic!("expected the peer's close, got {other:?}"),
    }
    assert!(reason_text(&proxy).starts_with("session closed by peer"));
}

fn reason_text(proxy: &qymux_http::ProxyHandle) -> String {
    proxy.stop_reason().unwrap().to_string()
}

/// A target that records the paths it is asked for and answers `hello <path>`.
async fn recording_target() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let target = spawn_target(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let path = req.uri().path().to_owned();
            record.lock().unwrap().push(path.clone());
            ok(format!("hello {path}"))
        }
    })
    .await;
    (target, seen)
}

/// With a target under `/api`, a request whose path climbs out of it (plainly, with
/// percent-encoded dots in any case, or with segments servers read differently) gets a
/// 400 from the proxy and never reaches the target; dot segments that stay inside are
/// resolved before the request is sent.
async fn paths_leaving_the_base_are_refused_with_400<B: Backend>() {
    let (target, seen) = recording_target().await;
    let (pair, _proxy) =
        proxied::<B>(&format!("http://{target}/api"), ProxyOptions::default()).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());

    for path in [
        "/../admin",
        "/%2e%2e/admin",
        "/%2E%2E/admin",
        "/.%2e/admin",
        "/%2E./admin",
        "/a/%2E%2E/%2e%2e/admin",
        "/a/../../admin",
        "/v1/./../../admin?x=1",
        "/..;/admin",
        "/..%2fadmin",
        "/..%5Cadmin",
    ] {
        let response = get(&client, &format!("http://agent-service.test{path}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body = text(response.into_body()).await;
        assert!(
            body.starts_with("qymux-http: cannot forward"),
            "{path}: {body}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the target: {:?}",
        seen.lock().unwrap()
    );

    for (path, expected) in [
        ("/v1/pods", "/api/v1/pods"),
        ("/v1/../v2/pods", "/api/v2/pods"),
        ("/v1/%2e/pods/%2E%2E/nodes", "/api/v1/nodes"),
        ("/", "/api/"),
    ] {
        let response = get(&client, &format!("http://agent-service.test{path}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            text(response.into_body()).await,
            format!("hello {expected}")
        );
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["/api/v1/pods", "/api/v2/pods", "/api/v1/nodes", "/api/"]
    );
}

/// The target learns who sent the request through the tunnel: `Forwarded` and
/// `X-Forwarded-*` name the session peer, whatever the request claimed; `Host` is the
/// target's own. Switched off, nothing is added and forged headers are still dropped.
async fn target_sees_the_session_peer_in_forwarded<B: Backend>() {
    let target = spawn_target(standard_target).await;
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), ProxyOptions::default()).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    let forged = |uri: &str| {
        Request::get(uri)
            .header("forwarded", "for=127.0.0.1;proto=https")
            .header("x-forwarded-for", "127.0.0.1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "admin.internal")
            .body(Empty::new())
            .unwrap()
    };
    let response = timeout(
        WAIT,
        client.request(forged("http://agent-service.test/headers")),
    )
    .await
    .unwrap()
    .unwrap();
    let seen = text(response.into_body()).await;
    let lines: Vec<&str> = seen.lines().collect();
    // The agent's session peer is the server: its address is what the target sees.
    let peer = pair.client.remote_addr();
    let forwarded = format!("forwarded: for=\"{peer}\";proto=http;host=\"agent-service.test\"");
    assert!(lines.contains(&forwarded.as_str()), "{seen}");
    assert!(
        lines.contains(&format!("x-forwarded-for: {}", peer.ip()).as_str()),
        "{seen}"
    );
    assert!(lines.contains(&"x-forwarded-proto: http"), "{seen}");
    assert!(
        lines.contains(&"x-forwarded-host: agent-service.test"),
        "{seen}"
    );
    assert!(
        lines.contains(&format!("host: {target}").as_str()),
        "{seen}"
    );
    for name in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        let count = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{name}:")))
            .count();
        assert_eq!(count, 1, "one {name} header, the proxy's: {seen}");
    }
    assert!(
        !seen.contains("admin.internal") && !seen.contains("https"),
        "{seen}"
    );

    let mut options = ProxyOptions::default();
    options.forwarded_headers(false);
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), options).await;
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    let response = timeout(
        WAIT,
        client.request(forged("http://agent-service.test/headers")),
    )
    .await
    .unwrap()
    .unwrap();
    let seen = text(response.into_body()).await;
    assert!(!seen.contains("forwarded"), "{seen}");
}
