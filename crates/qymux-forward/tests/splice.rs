//! `splice`: one TCP connection joined to a stream the caller opened, over both backends.

mod common;

use std::io;

use common::*;
use qymux_conformance::{Backend, pair};
use qymux_forward::{SpliceOptions, splice};
use qymux_transport::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

over_both_backends!(bytes_and_half_close_pass, idle_connection_is_reset);

/// A TCP client on one side, an accepted stream echoed on the other: the bytes come
/// back, the client's EOF passes through, and splice counts both ways.
async fn bytes_and_half_close_pass<B: Backend>() {
    let p = pair::<B>().await;
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = local.local_addr().unwrap();
    let server = p.server.clone();
    let spliced = tokio::spawn(async move {
        let (tcp, _) = local.accept().await.unwrap();
        let stream = server.open().await.unwrap();
        splice(tcp, stream, SpliceOptions::default()).await
    });
    let echo = tokio::spawn({
        let client = p.client.clone();
        async move {
            let mut s = client.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.shutdown().await.unwrap();
        }
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let data = qymux_conformance::payload(7, 300_000);
    tcp.write_all(&data).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    guard("echo back", tcp.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, data);
    guard("echo", echo).await.unwrap();
    let moved = guard("splice", spliced).await.unwrap().unwrap();
    assert_eq!(moved.tcp_to_stream, data.len() as u64);
    assert_eq!(moved.stream_to_tcp, data.len() as u64);
}

/// A connection that moves nothing for the idle timeout is reset on both ends.
async fn idle_connection_is_reset<B: Backend>() {
    let p = pair::<B>().await;
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = local.local_addr().unwrap();
    let server = p.server.clone();
    let spliced = tokio::spawn(async move {
        let (tcp, _) = local.accept().await.unwrap();
        let stream = server.open().await.unwrap();
        let mut options = SpliceOptions::default();
        options.idle_timeout(Some(std::time::Duration::from_millis(200)));
        splice(tcp, stream, options).await
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut peer = guard("accept", p.client.accept()).await.unwrap();
    tcp.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    guard("bytes reach the stream", peer.read_exact(&mut two))
        .await
        .unwrap();
    let err = guard("splice ends", spliced).await.unwrap().unwrap_err();
    assert_eq!(err.error.kind(), io::ErrorKind::TimedOut, "{err}");
    assert_eq!(err.moved.tcp_to_stream, 2);
    let mut rest = Vec::new();
    let read = guard("client read", tcp.read_to_end(&mut rest)).await;
    assert!(read.is_err(), "the client sees a reset, not EOF: {read:?}");
    let mut buf = Vec::new();
    let read = guard("peer read", peer.read_to_end(&mut buf)).await;
    assert!(
        read.is_err(),
        "the stream is aborted, not finished: {read:?}"
    );
}
