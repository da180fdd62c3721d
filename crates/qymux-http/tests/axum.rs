//! An axum app served on a session (`qymux_http::axum::SessionListener`) and called from
//! the other side, over real sessions (TLS + yamux, and QUIC) with mTLS.

#[macro_use]
mod common;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt, Empty};
use qymux_conformance::Backend;
use qymux_http::SessionInfo;
use qymux_http::axum::SessionListener;
use qymux_transport::Session;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite;

on_both_backends!(
    agent_serves_an_axum_app_to_the_server,
    server_serves_an_axum_app_and_reads_the_agents_certificate,
    shutdown_on_demand_ends_serve_and_keeps_the_session,
);

/// Chunks the `/stream` route sends, handed over by the test.
type Chunks = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

/// The app: a plain route, a streaming body, a WebSocket echo (upper-cased), and who is
/// calling (protocol, peer address, SHA-256 of the peer's certificate).
fn app(chunks: Chunks) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/stream", get(stream))
        .route("/ws", get(ws))
        .route("/who", get(who))
        .with_state(chunks)
}

async fn stream(State(chunks): State<Chunks>) -> Response {
    let Some(rx) = chunks.lock().unwrap().take() else {
        return Response::new(Body::from("the chunks were taken already"));
    };
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(chunk), rx))
    });
    Response::new(Body::from_stream(body))
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(text) = message {
                let reply = Message::Text(text.to_uppercase().into());
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        }
    })
}

async fn who(ConnectInfo(info): ConnectInfo<SessionInfo>) -> String {
    let certificate = info
        .peer_identity
        .as_ref()
        .map_or("none".to_owned(), |id| sha256_hex(id.end_entity()));
    format!("{} {} {certificate}", info.protocol, info.remote_addr)
}

/// Serves the app on `session` until it ends or its listener's shutdown handle fires.
fn serve_app<S: Session>(
    session: S,
    chunks: Chunks,
) -> (
    JoinHandle<std::io::Result<()>>,
    qymux_http::axum::ShutdownHandle,
) {
    let listener = SessionListener::new(session);
    let handle = listener.shutdown_handle();
    let signal = listener.shutdown_signal();
    let serving = axum::serve(
        listener,
        app(chunks).into_make_service_with_connect_info::<SessionInfo>(),
    )
    .with_graceful_shutdown(signal)
    .into_future();
    (tokio::spawn(serving), handle)
}

async fn get_text<S: Session>(
    client: &hyper_util::client::legacy::Client<qymux_http::SessionConnector<S>, Empty<Bytes>>,
    uri: &str,
) -> String {
    let response = timeout(WAIT, client.get(uri.parse().unwrap()))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(response.status(), 200, "{uri}");
    text(response.into_body()).await
}

/// Calls every route of the app served by `callee`'s side, from `caller`.
async fn call_every_route<S: Session>(caller: &S, callee: &S, expected_certificate: &str) {
    let client = qymux_http::client::<_, Empty<Bytes>>(caller.clone());
    assert_eq!(get_text(&client, "http://agent/hello").await, "hello");

    // Who is calling: the caller's side of the session, and its certificate.
    let who = get_text(&client, "http://agent/who").await;
    assert_eq!(
        who,
        format!(
            "{} {} {expected_certificate}",
            callee.protocol(),
            callee.remote_addr()
        )
    );
    assert_eq!(callee.remote_addr().port(), caller.local_addr().port());

    // HTTP/2 (prior knowledge) reaches the same app.
    let h2 = qymux_http::http2_client::<_, Empty<Bytes>>(caller.clone());
    assert_eq!(get_text(&h2, "http://agent/hello").await, "hello");
}

/// The streaming route delivers each chunk before the next one exists.
async fn streaming_flows_chunk_by_chunk<S: Session>(caller: &S, chunks: mpsc::Sender<Bytes>) {
    let client = qymux_http::client::<_, Empty<Bytes>>(caller.clone());
    chunks.send(Bytes::from("one")).await.unwrap();
    let response = timeout(WAIT, client.get("http://agent/stream".parse().unwrap()))
        .await
        .expect("response in time")
        .expect("response");
    let mut body = response.into_body();
    for (i, next) in ["one", "two", "three"].into_iter().enumerate() {
        let frame = timeout(WAIT, body.frame())
            .await
            .expect("chunk in time")
            .expect("a chunk")
            .expect("chunk");
        assert_eq!(frame.into_data().unwrap(), next, "chunk {i}");
        // The next chunk is made only now that this one has arrived.
        if let Some(after) = ["two", "three"].get(i) {
            chunks.send(Bytes::from(*after)).await.unwrap();
        }
    }
    drop(chunks);
    let end = timeout(WAIT, body.frame()).await.expect("end in time");
    assert!(end.is_none(), "the body ends when the route's stream ends");
}

/// A WebSocket (tokio-tungstenite) on a stream the caller opens.
async fn websocket_round_trips<S: Session>(caller: &S) {
    let stream = caller.open().await.expect("open");
    let (mut socket, response) = timeout(
        WAIT,
        tokio_tungstenite::client_async("ws://agent/ws", stream),
    )
    .await
    .expect("handshake in time")
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    for word in ["ping", "qymux over a session"] {
        socket
            .send(tungstenite::Message::text(word))
            .await
            .expect("send");
        let reply = timeout(WAIT, socket.next())
            .await
            .expect("reply in time")
            .expect("a reply")
            .expect("reply");
        assert_eq!(reply, tungstenite::Message::text(word.to_uppercase()));
    }
    socket.close(None).await.expect("close");
}

/// The usual reverse tunnel: the agent (dialer) serves, the server calls. Closing the
/// session ends `axum::serve`.
async fn agent_serves_an_axum_app_to_the_server<B: Backend>() {
    let pki = Pki::new();
    let pair = mtls_pair::<B>(&pki).await;
    let (chunks_tx, chunks_rx) = mpsc::channel(1);
    let (serving, _handle) = serve_app(pair.client.clone(), Arc::new(Mutex::new(Some(chunks_rx))));

    // The agent's peer is the server: its certificate is the server's.
    let server_certificate = sha256_hex(pki.server.end_entity());
    call_every_route(&pair.server, &pair.client, &server_certificate).await;
    streaming_flows_chunk_by_chunk(&pair.server, chunks_tx).await;
    websocket_round_trips(&pair.server).await;

    assert!(!serving.is_finished());
    pair.server.close().await;
    let served = timeout(WAIT, serving)
        .await
        .expect("axum::serve ends when the session ends")
        .expect("serving task");
    served.expect("serve ends cleanly");
}

/// With mTLS, the listener's side sees the agent's client certificate. Here the agent
/// closes the session, which ends the server's `axum::serve` too.
async fn server_serves_an_axum_app_and_reads_the_agents_certificate<B: Backend>() {
    let pki = Pki::new();
    let pair = mtls_pair::<B>(&pki).await;
    let (chunks_tx, chunks_rx) = mpsc::channel(1);
    let (serving, _handle) = serve_app(pair.server.clone(), Arc::new(Mutex::new(Some(chunks_rx))));

    let client_certificate = sha256_hex(pki.client.end_entity());
    call_every_route(&pair.client, &pair.server, &client_certificate).await;
    streaming_flows_chunk_by_chunk(&pair.client, chunks_tx).await;
    websocket_round_trips(&pair.client).await;

    pair.client.close().await;
    timeout(WAIT, serving)
        .await
        .expect("axum::serve ends when the session ends")
        .expect("serving task")
        .expect("serve ends cleanly");
}

/// The shutdown handle ends `axum::serve` gracefully while the session stays open.
async fn shutdown_on_demand_ends_serve_and_keeps_the_session<B: Backend>() {
    let pair = pair::<B>().await;
    let (_chunks_tx, chunks_rx) = mpsc::channel(1);
    let (serving, handle) = serve_app(pair.client.clone(), Arc::new(Mutex::new(Some(chunks_rx))));
    let client = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    assert_eq!(get_text(&client, "http://agent/hello").await, "hello");

    handle.shutdown();
    timeout(WAIT, serving)
        .await
        .expect("axum::serve ends on shutdown")
        .expect("serving task")
        .expect("serve ends cleanly");
    assert!(
        pair.client.close_reason().is_none(),
        "the session stays open"
    );
    assert!(
        pair.server.close_reason().is_none(),
        "the session stays open"
    );
    // The session still carries streams.
    let _echo = qymux_conformance::echo_all(pair.client.clone());
    let data = qymux_conformance::payload(7, 1000);
    assert_eq!(
        qymux_conformance::round_trip(&pair.server, &data).await,
        data
    );
}
