//! The measures, client side. Every one checks the data it moved: sinks answer with a
//! count and a position-dependent checksum, echoes are compared byte for byte, gRPC
//! replies must carry the request's payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;

use crate::proto::{self, Payload};
use crate::stacks::Client;

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// What one run measures, and how much of it.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) smoke: bool,
    /// Bytes per bulk run, and runs (after `warmup` untimed ones).
    pub(crate) bulk_bytes: u64,
    /// Round trips per 64-byte latency run.
    pub(crate) rtt_count: usize,
    /// Sequential open + round trip samples per run.
    pub(crate) open_count: usize,
    /// Opens per run of the 64-in-flight measure.
    pub(crate) opens_count: usize,
    pub(crate) opens_in_flight: usize,
    /// Concurrent streams, and bytes per stream, of the aggregate measure.
    pub(crate) streams: usize,
    pub(crate) stream_bytes: u64,
    /// Idle sessions held by one server.
    pub(crate) idle_sessions: usize,
    /// gRPC unary calls per run, and calls in flight.
    pub(crate) grpc_calls: usize,
    pub(crate) grpc_in_flight: usize,
    /// Timed runs per measure, and untimed runs before them.
    pub(crate) reps: usize,
    pub(crate) warmup: usize,
    /// Rounds of connect_bench.
    pub(crate) connect_rounds: usize,
}

impl Params {
    pub(crate) fn full() -> Self {
        Self {
            smoke: false,
            bulk_bytes: 512 << 20,
            rtt_count: 4000,
            open_count: 1000,
            opens_count: 10_000,
            opens_in_flight: 64,
            streams: 100,
            stream_bytes: 4 << 20,
            idle_sessions: 10_000,
            grpc_calls: 20_000,
            grpc_in_flight: 64,
            reps: 5,
            warmup: 1,
            connect_rounds: 20,
        }
    }

    /// Every measure for a fraction of a second: keeps the code from rotting.
    pub(crate) fn smoke() -> Self {
        Self {
            smoke: true,
            bulk_bytes: 4 << 20,
            rtt_count: 200,
            open_count: 100,
            opens_count: 500,
            opens_in_flight: 64,
            streams: 100,
            stream_bytes: 64 << 10,
            idle_sessions: 100,
            grpc_calls: 500,
            grpc_in_flight: 64,
            reps: 1,
            warmup: 0,
            connect_rounds: 1,
        }
    }
}

/// The samples of one measure on one stack.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(pub(crate) Vec<f64>);

impl Samples {
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        qymux_bench::quantile(&self.0, q)
    }

    pub(crate) fn median(&self) -> f64 {
        qymux_bench::median(&self.0)
    }

    pub(crate) fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub(crate) fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One bulk run: MiB/s from the first byte written to the sink's answer.
pub(crate) async fn bulk(client: &Client, payload: &Payload, size: u64) -> Result<f64> {
    let mut io = client.open().await?;
    let start = Instant::now();
    proto::sink(&mut io, payload, size).await?;
    let secs = start.elapsed().as_secs_f64();
    proto::finish(&mut io).await?;
    Ok(size as f64 / MIB / secs)
}

/// `warmup` untimed round trips, then `count` timed ones (µs each), on one stream.
pub(crate) async fn rtt(client: &Client, warmup: usize, count: usize) -> Result<Vec<f64>> {
    let mut io = client.open().await?;
    let mut out = Vec::with_capacity(count);
    for seq in 0..(warmup + count) as u64 {
        let msg = proto::message(seq);
        let start = Instant::now();
        proto::round_trip(&mut io, &msg).await?;
        if seq >= warmup as u64 {
            out.push(micros(start.elapsed()));
        }
    }
    proto::finish(&mut io).await?;
    Ok(out)
}

/// Opens a stream and does one 64-byte round trip on it; returns the time that took,
/// then closes the stream (both sides; not timed).
async fn open_rtt_once(client: &Client, seq: u64) -> Result<Duration> {
    let msg = proto::message(seq);
    let start = Instant::now();
    let mut io = client.open().await?;
    proto::round_trip(&mut io, &msg).await?;
    let took = start.elapsed();
    proto::finish(&mut io).await?;
    Ok(took)
}

/// Sequential stream open + round trip samples (µs).
pub(crate) async fn open_rtt(client: &Client, warmup: usize, count: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(count);
    for seq in 0..(warmup + count) as u64 {
        let took = open_rtt_once(client, seq).await?;
        if seq >= warmup as u64 {
            out.push(micros(took));
        }
    }
    Ok(out)
}

/// `count` open + round trip + close cycles, `in_flight` at a time: opens per second.
pub(crate) async fn opens(client: &Arc<Client>, count: usize, in_flight: usize) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= count as u64 {
                    return Ok::<_, anyhow::Error>(());
                }
                open_rtt_once(&client, seq).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// `streams` streams opened first, then `bytes` sunk on each at once: aggregate MiB/s.
pub(crate) async fn streams(
    client: &Client,
    payload: &Arc<Payload>,
    streams: usize,
    bytes: u64,
) -> Result<f64> {
    let mut opened = Vec::with_capacity(streams);
    for _ in 0..streams {
        opened.push(client.open().await?);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for mut io in opened {
        let payload = payload.clone();
        tasks.spawn(async move {
            proto::sink(&mut io, &payload, bytes).await?;
            Ok::<_, std::io::Error>(io)
        });
    }
    let mut finished = Vec::with_capacity(streams);
    while let Some(done) = tasks.join_next().await {
        finished.push(done??);
    }
    let secs = start.elapsed().as_secs_f64();
    for mut io in finished {
        proto::finish(&mut io).await?;
    }
    Ok((streams as u64 * bytes) as f64 / MIB / secs)
}

/// Runs `run` `warmup` times untimed, then `reps` times, collecting what it returns.
pub(crate) async fn repeat<F, Fut>(warmup: usize, reps: usize, mut run: F) -> Result<Samples>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<f64>>,
{
    for _ in 0..warmup {
        run().await.context("warm-up")?;
    }
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        out.push(run().await?);
    }
    Ok(Samples(out))
}

/// Like [`repeat`] for runs that give many samples each.
pub(crate) async fn repeat_many<F, Fut>(reps: usize, mut run: F) -> Result<Samples>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<f64>>>,
{
    let mut out = Vec::new();
    for _ in 0..reps {
        out.extend(run().await?);
    }
    if out.is_empty() {
        bail!("no samples");
    }
    Ok(Samples(out))
}
