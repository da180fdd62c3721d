//! A large upload, streamed end to end: generated on the fly by the client, through the
//! session and the proxy, to a local hyper server that hashes it as it arrives. Nothing
//! holds the body whole; both ends compare SHA-256 digests.
//!
//! The default tests move 1 GiB over each transport; `QYMUX_HTTP_LARGE_MIB` changes the
//! size (in MiB).

#[macro_use]
mod common;

use std::time::Instant;

use common::*;
use http::{Request, StatusCode};
use qymux_conformance::Backend;
use qymux_http::ProxyOptions;
use tokio::time::timeout;

on_both_backends!(upload_1_gib_streamed_with_checksum);

const MIB: u64 = 1024 * 1024;

async fn upload_1_gib_streamed_with_checksum<B: Backend>() {
    let mib: u64 = std::env::var("QYMUX_HTTP_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let len = mib * MIB;
    let target = spawn_target(standard_target).await;
    let (pair, _proxy) = proxied::<B>(&format!("http://{target}"), ProxyOptions::default()).await;
    let protocol = qymux_transport::Session::protocol(&pair.server);
    let client = qymux_http::client::<_, Generated>(pair.server.clone());

    let (body, digest) = Generated::new(42, len, 256 * 1024);
    let request = Request::post("http://agent-service/hash")
        .body(body)
        .unwrap();
    let started = Instant::now();
    // Generous: debug builds on two shared cores.
    let bound = WAIT * 10;
    let response = timeout(bound, client.request(request))
        .await
        .expect("upload in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let answer = text(response.into_body()).await;
    let elapsed = started.elapsed();
    let digest = digest.await.expect("client digest");
    assert_eq!(answer, format!("{len} {} HTTP/1.1", hex(&digest)));
    let rate = len as f64 / MIB as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{protocol}: {mib} MiB uploaded through the session and the proxy in {:.2} s ({rate:.0} MiB/s)",
        elapsed.as_secs_f64()
    );
}
