//! The Prometheus endpoint: `metrics` with its Prometheus exporter, served at
//! `/metrics` by a small hyper server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Called before each scrape, to bring counters kept elsewhere up to date.
pub(crate) type Upkeep = Arc<dyn Fn() + Send + Sync>;

/// Installs the recorder and serves `/metrics` on `addr`; returns the bound address.
pub(crate) async fn serve(addr: &str, upkeep: Option<Upkeep>) -> Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics listening at /metrics");
    tokio::spawn(accept(listener, handle, upkeep));
    Ok(local)
}

async fn accept(listener: TcpListener, handle: PrometheusHandle, upkeep: Option<Upkeep>) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        let upkeep = upkeep.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                if let Some(upkeep) = &upkeep {
                    upkeep();
                }
                async move { Ok::<_, Infallible>(respond(&req, &handle)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection failed");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let mut response = if req.uri().path() == "/metrics" {
        handle.run_upkeep();
        let mut r = Response::new(Full::new(Bytes::from(handle.render())));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    } else {
        Response::new(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
    };
    if req.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("qymux_sessions", "Agent sessions held now, by protocol");
    describe_counter!(
        "qymux_handshakes_total",
        "Sessions accepted or dialed, by outcome (ok, failed)"
    );
    describe_counter!(
        "qymux_fallbacks_total",
        "Agent sessions in auto mode that run over TCP (QUIC failed)"
    );
    describe_counter!("qymux_reconnects_total", "Agent sessions after the first");
    describe_counter!("qymux_claims_granted_total", "Claims granted, by service");
    describe_counter!(
        "qymux_claims_refused_total",
        "Claims refused, by service and reason"
    );
    describe_counter!(
        "qymux_streams_total",
        "Forwarded connections (one stream each), by service"
    );
    describe_counter!(
        "qymux_bytes_total",
        "Bytes forwarded, by service and direction (in: towards the agent's service)"
    );
    describe_counter!(
        "qymux_public_refused_total",
        "Public connections refused, by service and reason"
    );
    describe_histogram!(
        "qymux_rtt_seconds",
        "Round-trip time of the control stream's pings, by protocol"
    );
}
