//! `qymux_http::serve`: any hyper service on the streams a session accepts, over real
//! sessions (TLS + yamux, and QUIC).

#[macro_use]
mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use qymux_conformance::Backend;
use qymux_http::{SessionInfo, StopReason};
use qymux_transport::{CloseReason, Session};
use tokio::time::timeout;

on_both_backends!(http1_and_http2_with_session_info_until_the_session_ends);

/// Answers the HTTP version it saw, the session's protocol from the request's
/// extensions, and the request body's length.
async fn describe(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let version = format!("{:?}", req.version());
    let protocol = req
        .extensions()
        .get::<SessionInfo>()
        .map_or("no session info".to_owned(), |info| {
            info.protocol.to_string()
        });
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
    Ok(ok(format!("{version} {protocol} {body:?}")))
}

async fn http1_and_http2_with_session_info_until_the_session_ends<B: Backend>() {
    let pair = pair::<B>().await;
    let serving = qymux_http::serve(pair.client.clone(), hyper::service::service_fn(describe));
    let protocol = pair.client.protocol();

    let h1 = qymux_http::client::<_, Empty<Bytes>>(pair.server.clone());
    let h2 = qymux_http::http2_client::<_, Empty<Bytes>>(pair.server.clone());
    for (client, version) in [(&h1, Version::HTTP_11), (&h2, Version::HTTP_2)] {
        let response = timeout(WAIT, client.get("http://agent/".parse().unwrap()))
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(response.version(), version);
        assert_eq!(
            text(response.into_body()).await,
            format!("{version:?} {protocol} Ok(0)")
        );
    }
    assert!(serving.stop_reason().is_none());

    pair.server.close().await;
    let reason = timeout(WAIT, serving.stopped())
        .await
        .expect("serving stops when the session ends");
    assert!(
        matches!(reason, StopReason::SessionClosed(CloseReason::Peer(_))),
        "{reason:?}"
    );
}
