//! The two forwarders over real sockets, TCP and QUIC sessions: bulk and concurrent
//! transfers checked with SHA-256, half-close, refusals, resets, limits and stopping.

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::*;
use qymux_conformance::Backend;
use qymux_forward::{ForwardConfig, StopReason};
use qymux_transport::{CloseReason, Session, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

over_both_backends!(
    transfer_256_mib_both_ways,
    hundred_concurrent_connections,
    half_close_passes_through,
    refused_target_resets_the_local_connection,
    target_reset_reaches_the_client,
    client_reset_reaches_the_target,
    peer_stream_abort_resets_the_local_connection,
    max_connections_refuses_clearly,
    session_end_stops_both_forwarders,
    shutdown_drains_and_abort_resets,
);

const MIB: usize = 1024 * 1024;

/// 256 MiB through one forwarded connection to an echo target and back (512 MiB
/// through the session), generated while sending and checked with SHA-256 both ways.
async fn transfer_256_mib_both_ways<B: Backend>() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: u64 = (256 * MIB / CHUNK) as u64;
    let target = echo_target().await;
    let rig = Rig::<B>::new(target).await;
    let tcp = rig.connect().await;
    let started = Instant::now();
    let client = tcp.local_addr().expect("client address");
    let (mut r, mut w) = tcp.into_split();
    // Bytes written and read so far: a hang reports where the bytes stopped.
    let (written, read) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut writer = tokio::spawn({
        let written = written.clone();
        async move {
            let mut hash = Hasher::new();
            for i in 0..CHUNKS {
                let data = chunk(i, CHUNK);
                hash.update(&data);
                w.write_all(&data).await.expect("write");
                written.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
            w.shutdown().await.expect("shutdown");
            hash.finish()
        }
    });
    let reader = tokio::spawn({
        let read = read.clone();
        async move {
            let mut hash = Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0usize;
            loop {
                let n = r.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                total += n;
                read.fetch_add(n as u64, Ordering::Relaxed);
            }
            (total, hash.finish())
        }
    });
    let hung = |what: &str| {
        format!(
            "{what}: still waiting after {HANG_GUARD:?} (client {client}, local {}, echo \
             target {target}); written {}, read back {}; \
             listener side {:?}; accepted side {:?}\n  listener side's copy: {}\n  \
             accepted side's copy: {}\n  QUIC, listener's end: {}\n  QUIC, dialer's end: {}",
            rig.local,
            written.load(Ordering::Relaxed),
            read.load(Ordering::Relaxed),
            rig.listener_side.stats(),
            rig.accepted_side.stats(),
            rig.listener_side.pump_trace(),
            rig.accepted_side.pump_trace(),
            quic_stats(&rig.pair.server),
            quic_stats(&rig.pair.client),
        )
    };
    let sent = match tokio::time::timeout(HANG_GUARD, &mut writer).await {
        Ok(sent) => sent.expect("writer"),
        Err(_) => {
            let first = hung("sending 256 MiB");
            thread_dump();
            // Does it resume on its own (a stall: the kernel's backed-off TCP timers),
            // or never (a deadlock)?
            let stalled = Instant::now();
            let resumed = tokio::time::timeout(3 * HANG_GUARD, &mut writer)
                .await
                .is_ok();
            panic!(
                "{first}\nresumed on its own: {resumed}, after a further {:.1?}; then: {}",
                stalled.elapsed(),
                hung("sending 256 MiB")
            );
        }
    };
    let (total, received) = tokio::time::timeout(HANG_GUARD, reader)
        .await
        .unwrap_or_else(|_| panic!("{}", hung("receiving 256 MiB")))
        .expect("reader");
    let took = started.elapsed();
    assert_eq!(total, 256 * MIB);
    assert_eq!(received, sent, "SHA-256 of the echo");
    eprintln!(
        "256 MiB each way in {took:.2?} ({:.0} MiB/s each way)",
        256.0 / took.as_secs_f64()
    );
    stats_reach(&rig.listener_side, "listener side completed", |s| {
        s.completed == 1 && s.active == 0
    })
    .await;
    stats_reach(&rig.accepted_side, "accepted side completed", |s| {
        s.completed == 1 && s.active == 0
    })
    .await;
    let s = rig.listener_side.stats();
    assert_eq!(s.tcp_to_stream_bytes, (256 * MIB) as u64);
    assert_eq!(s.stream_to_tcp_bytes, (256 * MIB) as u64);
    assert_eq!((s.accepted, s.failed, s.refused), (1, 0, 0));
}

/// quinn's counters (packets lost, frames sent and received: `MAX_STREAM_DATA`,
/// `STREAM_DATA_BLOCKED`...) for a QUIC session; "-" for the TCP backend.
fn quic_stats<S: 'static>(session: &S) -> String {
    match (session as &dyn std::any::Any).downcast_ref::<qymux_quic::Session>() {
        Some(quic) => format!("{:?}", quic.connection().stats()),
        None => "-".into(),
    }
}

/// With `QYMUX_HANG_GDB=<dir>` set, a hang writes every thread's stack (gdb attached to
/// this process) to `<dir>/hang-<pid>.txt`: a worker thread that is stuck, rather than
/// idle, shows there.
fn thread_dump() {
    let Some(dir) = std::env::var_os("QYMUX_HANG_GDB") else {
        return;
    };
    let pid = std::process::id().to_string();
    let run = |program: &str, args: &[&str], name: &str| match std::process::Command::new(program)
        .args(args)
        .output()
    {
        Ok(out) => {
            let path = std::path::Path::new(&dir).join(format!("hang-{pid}.{name}"));
            let written = std::fs::write(&path, [out.stdout, out.stderr].concat());
            eprintln!("{program}: {} ({written:?})", path.display());
        }
        Err(e) => eprintln!("{program}: {e}"),
    };
    // The kernel's view of every loopback TCP connection: queues, windows, timers.
    run("ss", &["-tinmpoe"], "ss");
    run(
        "gdb",
        &["-p", &pid, "-batch", "-ex", "thread apply all bt"],
        "gdb",
    );
}

/// 100 connections at once, each with its own payload, echoed and SHA-256 checked.
async fn hundred_concurrent_connections<B: Backend>() {
    let rig = Rig::<B>::new(echo_target().await).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let tcp = rig.connect().await;
        tasks.push(tokio::spawn(async move {
            let data = payload(i, 512 * 1024 + i as usize * 997);
            let got = round_trip(tcp, &data).await.expect("round trip");
            assert_eq!(got.len(), data.len(), "connection {i}: length");
            assert_eq!(sha256(&got), sha256(&data), "connection {i}: SHA-256");
        }));
    }
    for t in tasks {
        guard("a connection", t).await.expect("connection task");
    }
    eprintln!("100 connections in {:.2?}", started.elapsed());
    for (side, handle) in [
        ("listener", &rig.listener_side),
        ("accepted", &rig.accepted_side),
    ] {
        stats_reach(handle, side, |s| s.completed == 100 && s.active == 0).await;
        let s = handle.stats();
        assert_eq!(
            (s.accepted, s.failed, s.refused),
            (100, 0, 0),
            "{side}: {s:?}"
        );
    }
}

/// The client finishes its request with `shutdown(Write)`; the target reads EOF, replies
/// and closes; the client reads the whole reply. Then the other way round: the target
/// speaks first and finishes, the client reads EOF and still sends its part.
async fn half_close_passes_through<B: Backend>() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let target = serve_target(move |mut conn| {
        let seen = seen_tx.clone();
        async move {
            let mut first = [0u8; 1];
            conn.read_exact(&mut first).await.expect("mode byte");
            if first[0] == b'R' {
                // Request/response: read to EOF, then reply and close.
                let mut request = Vec::new();
                conn.read_to_end(&mut request)
                    .await
                    .expect("request to EOF");
                let reply = format!("reply to {} bytes", request.len() + 1);
                conn.write_all(reply.as_bytes()).await.expect("reply");
                conn.shutdown().await.expect("finish");
                seen.send(request).unwrap();
            } else {
                // Server speaks first and finishes its side, then reads the client's part.
                conn.write_all(b"greeting, then EOF")
                    .await
                    .expect("greeting");
                conn.shutdown().await.expect("finish");
                let mut rest = Vec::new();
                conn.read_to_end(&mut rest).await.expect("client part");
                seen.send(rest).unwrap();
            }
        }
    })
    .await;
    let rig = Rig::<B>::new(target).await;

    let mut tcp = rig.connect().await;
    let request = payload(7, 300_000);
    tcp.write_all(b"R").await.unwrap();
    tcp.write_all(&request).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut reply = String::new();
    guard("reply", tcp.read_to_string(&mut reply))
        .await
        .expect("read reply");
    assert_eq!(reply, "reply to 300001 bytes");
    let got = guard("target", seen_rx.recv()).await.unwrap();
    assert_eq!(sha256(&got), sha256(&request));

    let mut tcp = rig.connect().await;
    tcp.write_all(b"S").await.unwrap();
    let mut greeting = String::new();
    guard("greeting", tcp.read_to_string(&mut greeting))
        .await
        .expect("read greeting to EOF");
    assert_eq!(greeting, "greeting, then EOF");
    let part = payload(8, 200_000);
    tcp.write_all(&part)
        .await
        .expect("write after the peer finished");
    tcp.shutdown().await.unwrap();
    let got = guard("target", seen_rx.recv()).await.unwrap();
    assert_eq!(sha256(&got), sha256(&part));
    let mut rest = Vec::new();
    assert_eq!(tcp.read_to_end(&mut rest).await.unwrap(), 0);

    for side in [&rig.listener_side, &rig.accepted_side] {
        stats_reach(side, "both completed", |s| {
            s.completed == 2 && s.active == 0
        })
        .await;
    }
}

/// The target refuses the connection: the client's local connection is reset, not left
/// hanging, and both forwarders count a failure and go on.
async fn refused_target_resets_the_local_connection<B: Backend>() {
    let rig = Rig::<B>::new(refusing_target().await).await;
    for _ in 0..2 {
        let read = guard("reset after refusal", rig.connect_and_read()).await;
        assert_reset("client read", read);
    }
    stats_reach(&rig.accepted_side, "accepted side", |s| s.failed == 2).await;
    stats_reach(&rig.listener_side, "listener side", |s| s.failed == 2).await;
    assert!(
        rig.pair.client.close_reason().is_none(),
        "the session is unharmed"
    );
}

/// The target sends part of a reply and resets: the client sees a reset, not EOF.
async fn target_reset_reaches_the_client<B: Backend>() {
    let target = serve_target(|mut conn| async move {
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.expect("request");
        conn.write_all(&payload(9, 100_000))
            .await
            .expect("partial reply");
        reset(conn);
    })
    .await;
    let rig = Rig::<B>::new(target).await;
    let mut tcp = rig.connect().await;
    tcp.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    let read = guard("client read", tcp.read_to_end(&mut got)).await;
    assert_reset("client read after the target's reset", read);
    assert!(got.len() <= 100_000);
    stats_reach(&rig.accepted_side, "accepted side", |s| s.failed == 1).await;
    stats_reach(&rig.listener_side, "listener side", |s| s.failed == 1).await;
}

/// The client sends part of a request and resets: the target sees a reset, not EOF.
async fn client_reset_reaches_the_target<B: Backend>() {
    let (tx, rx) = oneshot::channel::<io::Result<usize>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let target = serve_target(move |mut conn| {
        let tx = tx.lock().unwrap().take();
        async move {
            let mut got = Vec::new();
            let result = conn.read_to_end(&mut got).await;
            if let Some(tx) = tx {
                let _ = tx.send(result);
            }
        }
    })
    .await;
    let rig = Rig::<B>::new(target).await;
    let mut tcp = rig.connect().await;
    tcp.write_all(&payload(10, 100_000)).await.unwrap();
    tcp.flush().await.unwrap();
    // Let some of it reach the target before the reset.
    stats_reach(&rig.accepted_side, "bytes reached the target", |s| {
        s.stream_to_tcp_bytes > 0
    })
    .await;
    reset(tcp);
    let result = guard("target read", rx).await.expect("target result");
    assert_reset("target read after the client's reset", result);
    stats_reach(&rig.listener_side, "listener side", |s| s.failed == 1).await;
    stats_reach(&rig.accepted_side, "accepted side", |s| s.failed == 1).await;
}

/// The peer aborts the stream itself (no TCP behind it): the local client sees a reset.
async fn peer_stream_abort_resets_the_local_connection<B: Backend>() {
    let pair = qymux_conformance::pair::<B>().await;
    let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let forwarder = qymux_forward::forward_listener(local, pair.server.clone());
    let handle = forwarder.handle();
    let _task = tokio::spawn(forwarder);

    let mut tcp = tokio::net::TcpStream::connect(local_addr).await.unwrap();
    tcp.write_all(b"request").await.unwrap();
    let mut stream = guard("accept", pair.client.accept()).await.expect("accept");
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"request");
    stream.write_all(&payload(11, 50_000)).await.unwrap();
    stream.abort();
    let mut got = Vec::new();
    let read = guard("client read", tcp.read_to_end(&mut got)).await;
    assert_reset("client read after the stream was aborted", read);
    stats_reach(&handle, "listener side", |s| s.failed == 1).await;
}

/// Over `max_connections`, a new connection is reset at once (TCP side) or its stream
/// aborted (stream side, which the client sees as a reset); a freed slot is reused.
async fn max_connections_refuses_clearly<B: Backend>() {
    let mut two = ForwardConfig::default();
    two.max_connections(Some(2));
    let rig = Rig::<B>::with(echo_target().await, two, ForwardConfig::default()).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = rig.connect().await;
        tcp.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        guard("echo", tcp.read_exact(&mut b)).await.unwrap();
        held.push(tcp);
    }
    assert_reset(
        "over the limit",
        guard("refusal", rig.connect_and_read()).await,
    );
    assert_eq!(rig.listener_side.stats().refused, 1);

    // Free a slot: finish one connection cleanly.
    let mut first = held.remove(0);
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    guard("finish", first.read_to_end(&mut rest)).await.unwrap();
    stats_reach(&rig.listener_side, "slot freed", |s| s.active == 1).await;
    let got = round_trip(rig.connect().await, b"again")
        .await
        .expect("within the limit");
    assert_eq!(got, b"again");

    // The stream side: one connection at a time to the target.
    let mut one = ForwardConfig::default();
    one.max_connections(Some(1));
    let rig = Rig::<B>::with(echo_target().await, ForwardConfig::default(), one).await;
    let mut first = rig.connect().await;
    first.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    guard("echo", first.read_exact(&mut b)).await.unwrap();
    assert_reset(
        "stream over the limit",
        guard("refusal", rig.connect_and_read()).await,
    );
    assert_eq!(rig.accepted_side.stats().refused, 1);
    stats_reach(&rig.listener_side, "listener side failed", |s| {
        s.failed == 1
    })
    .await;
}

/// When the session ends, both forwarders resolve and say why; connections in progress
/// are reset.
async fn session_end_stops_both_forwarders<B: Backend>() {
    let rig = Rig::<B>::new(echo_target().await).await;
    let mut tcp = rig.connect().await;
    tcp.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    guard("echo", tcp.read_exact(&mut b)).await.unwrap();

    rig.pair.client.close().await;
    let accepted = guard("accepted side stops", rig.accepted_task)
        .await
        .unwrap();
    assert!(
        matches!(
            accepted.reason,
            StopReason::SessionEnded(CloseReason::Local)
        ),
        "{:?}",
        accepted.reason
    );
    let listener = guard("listener side stops", rig.listener_task)
        .await
        .unwrap();
    assert!(
        matches!(
            listener.reason,
            StopReason::SessionEnded(CloseReason::Peer(_))
        ),
        "{:?}",
        listener.reason
    );
    assert_eq!(listener.stats.failed, 1, "{:?}", listener.stats);
    let mut rest = Vec::new();
    let read = guard("client read", tcp.read_to_end(&mut rest)).await;
    assert_reset("a connection cut by the session's end", read);
}

/// `shutdown` stops accepting and lets connections finish; `abort` resets them.
async fn shutdown_drains_and_abort_resets<B: Backend>() {
    let rig = Rig::<B>::new(echo_target().await).await;
    let mut tcp = rig.connect().await;
    tcp.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    guard("echo", tcp.read_exact(&mut b)).await.unwrap();

    rig.listener_side.shutdown();
    // The listener is closed: new connections are refused by the kernel.
    guard("listener closed", async {
        while tokio::net::TcpStream::connect(rig.local).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !rig.listener_task.is_finished(),
        "drains the active connection"
    );
    // The connection in progress still works, and ends cleanly.
    let got = round_trip(tcp, b"more").await.expect("still forwarded");
    assert_eq!(got, b"more");
    let stopped = guard("drained", rig.listener_task).await.unwrap();
    assert!(
        matches!(stopped.reason, StopReason::Shutdown),
        "{:?}",
        stopped.reason
    );
    assert_eq!(stopped.stats.completed, 1);

    // abort: connections in progress are reset.
    let rig = Rig::<B>::new(echo_target().await).await;
    let mut tcp = rig.connect().await;
    tcp.write_all(b"x").await.unwrap();
    guard("echo", tcp.read_exact(&mut b)).await.unwrap();
    rig.accepted_side.abort();
    let stopped = guard("aborted", rig.accepted_task).await.unwrap();
    assert!(
        matches!(stopped.reason, StopReason::Aborted),
        "{:?}",
        stopped.reason
    );
    assert_eq!(stopped.stats.failed, 1);
    let mut rest = Vec::new();
    let read = guard("client read", tcp.read_to_end(&mut rest)).await;
    assert_reset("a connection of an aborted forwarder", read);
}
