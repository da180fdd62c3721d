//! `qymux probe ADDR`: what works towards a server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qymux::cert::{CertNames, Fingerprint};
use qymux::tls::ClientTls;
use qymux::{BoxSession, ClientConfig, Mode, Qymux, Session};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::config::parse_duration;
use crate::proto::{self, Msg};

/// `qymux probe` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// The server's address, `host:port`.
    addr: String,
    /// The name to verify the server's certificate against (default: the host of ADDR).
    #[arg(long)]
    server_name: Option<String>,
    /// Verify the server with this CA certificate file.
    #[arg(long, conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Verify the server by its certificate's SHA-256 fingerprint.
    #[arg(long)]
    pin: Option<String>,
    /// A client certificate, for servers that require one (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// How long each attempt may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

pub(crate) async fn run(args: ProbeArgs) -> Result<()> {
    let (mut tls, verified) = match (&args.ca, &args.pin) {
        (Some(ca), _) => (
            ClientTls::with_ca_file(ca).with_context(|| format!("loading {}", ca.display()))?,
            "verified with the CA",
        ),
        (None, Some(pin)) => (
            ClientTls::with_pinned(
                pin.parse::<Fingerprint>()
                    .map_err(|e| anyhow::anyhow!("--pin: {e}"))?,
            ),
            "verified by its pinned fingerprint",
        ),
        (None, None) => (
            qymux::tls::dangerous::skip_server_verification(),
            "NOT verified (give --ca or --pin)",
        ),
    };
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.client_identity_files(cert, key)?;
    }
    let dial = |mode: Mode| {
        let mut config = ClientConfig::new(args.addr.clone());
        config
            .mode(mode)
            .client_tls(tls.clone())
            .connect_timeout(args.timeout)
            .handshake_timeout(args.timeout);
        if let Some(name) = &args.server_name {
            config.server_name(name.clone());
        }
        async move {
            let start = Instant::now();
            let session = tokio::time::timeout(args.timeout, Qymux::new(config).dial()).await;
            let elapsed = start.elapsed();
            match session {
                Ok(Ok(s)) => Ok((s, elapsed)),
                Ok(Err(e)) => Err(e.report().to_string()),
                Err(_) => Err(format!("no answer within {:?}", args.timeout)),
            }
        }
    };
    println!("probe {}", args.addr);
    let mut any: Option<BoxSession> = None;
    for (label, mode) in [("quic", Mode::Quic), ("tcp", Mode::Tcp)] {
        match dial(mode).await {
            Ok((session, t)) => {
                println!("  {label:<5} ok      handshake {}", ms(t));
                if let Some(old) = any.replace(session) {
                    old.close().await;
                }
            }
            Err(e) => println!("  {label:<5} failed  {e}"),
        }
    }
    match dial(Mode::Auto).await {
        Ok((session, t)) => {
            println!(
                "  auto  {}    in {} (the time a dialer in auto mode takes, fallback included)",
                session.protocol(),
                ms(t)
            );
            session.close().await;
        }
        Err(e) => println!("  auto  failed  {e}"),
    }
    let Some(session) = any else {
        bail!("neither QUIC nor TCP reached {}", args.addr);
    };
    match rtt(&session, args.timeout).await {
        Some(t) => println!(
            "  rtt   {} (a control-stream round trip over {})",
            ms(t),
            session.protocol()
        ),
        None => println!("  rtt   n/a (no answer on a control stream: not a qymux server?)"),
    }
    if let Some(identity) = session.peer_identity() {
        let cert = identity.end_entity();
        println!(
            "  certificate sha256:{} ({verified})",
            Fingerprint::of(cert)
        );
        if let Ok(names) = CertNames::of(cert) {
            let mut list: Vec<String> = names
                .common_name
                .map(|cn| format!("CN={cn}"))
                .into_iter()
                .collect();
            list.extend(names.dns_names.iter().map(|n| format!("DNS:{n}")));
            list.extend(names.ip_addresses.iter().map(|n| format!("IP:{n}")));
            println!("  names {}", list.join(", "));
        }
    }
    session.close().await;
    Ok(())
}

/// One round trip on a control stream: a claim, answered by a challenge.
async fn rtt(session: &BoxSession, timeout: Duration) -> Option<Duration> {
    let work = async {
        let stream = session.open().await.ok()?;
        let (reader, mut writer) = tokio::io::split(stream);
        let mut reader = BufReader::new(reader);
        let claim = Msg::Claim {
            service: "qymux-probe".into(),
            nonce: proto::nonce(),
        };
        let start = Instant::now();
        writer.write_all(claim.encode().as_bytes()).await.ok()?;
        writer.flush().await.ok()?;
        loop {
            match proto::read_msg(&mut reader).await.ok()?? {
                Msg::Challenge { .. } => return Some(start.elapsed()),
                Msg::Ping { .. } => continue,
                _ => return None,
            }
        }
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
