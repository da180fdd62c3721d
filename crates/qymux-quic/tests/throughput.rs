//! Bulk throughput of one stream over loopback. Ignored by default; run it with
//! `cargo test --release -p qymux-quic --test throughput -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::pair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL: usize = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run in release mode"]
async fn one_stream_bulk_throughput() {
    let (_l, client, server) = pair().await;
    let reader = tokio::spawn(async move {
        let mut stream = server.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let chunk = vec![0x5au8; 256 * 1024];
    let mut stream = client.open().await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        stream.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    stream.shutdown().await.unwrap();
    let received = reader.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(received, TOTAL);
    let stats = client.connection().stats();
    eprintln!(
        "one stream: {} MiB in {secs:.2} s = {:.0} MiB/s (lost packets {}, rtt {:?})",
        TOTAL >> 20,
        (TOTAL >> 20) as f64 / secs,
        stats.path.lost_packets,
        stats.path.rtt,
    );
}
