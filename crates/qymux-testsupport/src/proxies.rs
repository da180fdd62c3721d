//! Real proxy servers, written by others, for the tests of agents behind proxies:
//! tinyproxy (HTTP CONNECT, Debian `tinyproxy`) and microsocks (SOCKS5, Debian
//! `microsocks`), each started on a free loopback port with its own configuration in a
//! temporary directory, and killed when dropped.
//!
//! ```no_run
//! # async fn example() {
//! use qymux_testsupport::tinyproxy;
//!
//! // `None` (after a SKIP line, or a panic under QYMUX_REQUIRE_PEERS=1) without tinyproxy.
//! let Some(proxy) = tinyproxy(Some(("alice", "s3cret")), &[]).await else { return };
//! let url = format!("http://alice:s3cret@{}", proxy.addr());
//! # }
//! ```

use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::{TempDir, missing_peer};

/// How long a proxy gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running proxy server; killed when dropped.
#[derive(Debug)]
pub struct ProxyServer {
    name: &'static str,
    addr: SocketAddr,
    log: PathBuf,
    _child: Child,
    _dir: TempDir,
}

impl ProxyServer {
    /// Where it listens (on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which program it is (`tinyproxy`, `microsocks`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What it logged so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts tinyproxy (HTTP CONNECT) on a free loopback port: with `BasicAuth` when
/// `credentials` are given, and with `CONNECT` allowed only to `connect_ports` when that
/// is not empty (to every port when it is).
///
/// Returns `None` after a `SKIP:` line when tinyproxy is not installed (Debian:
/// `apt-get install tinyproxy`), or panics then if
/// [`peers_required`](crate::peers_required). Panics if it is installed but does not
/// start.
#[track_caller]
pub fn tinyproxy(
    credentials: Option<(&str, &str)>,
    connect_ports: &[u16],
) -> impl Future<Output = Option<ProxyServer>> + use<> {
    let bin = find("tinyproxy");
    let credentials = credentials.map(|(u, p)| (u.to_owned(), p.to_owned()));
    let connect_ports = connect_ports.to_vec();
    async move {
        let bin = bin?;
        let server = start("tinyproxy", &bin, |port, dir| {
            let log = dir.join("tinyproxy.log");
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\n\
                 DisableViaHeader Yes\nLogLevel Info\nLogFile \"{}\"\n",
                log.display()
            );
            if let Some((user, password)) = &credentials {
                conf.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            for port in &connect_ports {
                conf.push_str(&format!("ConnectPort {port}\n"));
            }
            let path = dir.join("tinyproxy.conf");
            std::fs::write(&path, conf)?;
            Ok((vec!["-d".into(), "-c".into(), path.into_os_string()], log))
        })
        .await;
        Some(server.unwrap_or_else(|e| panic!("tinyproxy is installed but does not start: {e}")))
    }
}

/// Starts microsocks (SOCKS5) on a free loopback port, requiring username/password
/// authentication when `credentials` are given.
///
/// Returns `None` after a `SKIP:` line when microsocks is not installed (Debian:
/// `apt-get install microsocks`), or panics then if
/// [`peers_required`](crate::peers_required). Panics if it is installed but does not
/// start.
#[track_caller]
pub fn microsocks(
    credentials: Option<(&str, &str)>,
) -> impl Future<Output = Option<ProxyServer>> + use<> {
    let bin = find("microsocks");
    let credentials = credentials.map(|(u, p)| (u.to_owned(), p.to_owned()));
    async move {
        let bin = bin?;
        let server = start("microsocks", &bin, |port, dir| {
            let mut args: Vec<OsString> = vec![
                "-i".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
            ];
            if let Some((user, password)) = &credentials {
                args.extend(["-u".into(), user.into(), "-P".into(), password.into()]);
            }
            // microsocks logs to its standard output and error, which go to this file.
            Ok((args, dir.join("microsocks.out")))
        })
        .await;
        Some(server.unwrap_or_else(|e| panic!("microsocks is installed but does not start: {e}")))
    }
}

/// The program on `PATH` (or in `/usr/sbin`, where some systems put tinyproxy).
#[track_caller]
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        missing_peer(&format!(
            "the proxy tests need {name}, a proxy server from outside the project \
             (Debian: apt-get install {name}); it is not on PATH"
        ));
    }
    found
}

type Setup<'a> = dyn Fn(u16, &TempDir) -> io::Result<(Vec<OsString>, PathBuf)> + 'a;

/// Runs `bin` with the arguments `setup` writes for a free port, until it listens. A
/// port taken by someone else between our check and the proxy's bind makes the proxy
/// exit: then again with another port.
async fn start(
    name: &'static str,
    bin: &Path,
    setup: impl Fn(u16, &TempDir) -> io::Result<(Vec<OsString>, PathBuf)>,
) -> io::Result<ProxyServer> {
    let setup: &Setup<'_> = &setup;
    let mut last = None;
    for _ in 0..3 {
        let dir = TempDir::new(name)?;
        let port = free_port()?;
        let (args, log) = setup(port, &dir)?;
        let out = std::fs::File::create(dir.join(format!("{name}.out")))?;
        let err = out.try_clone()?;
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match wait_listening(&mut child, addr).await {
            Ok(()) => {
                return Ok(ProxyServer {
                    name,
                    addr,
                    log,
                    _child: child,
                    _dir: dir,
                });
            }
            Err(e) => {
                let output =
                    std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
                let logged = if log.ends_with(format!("{name}.out")) {
                    String::new()
                } else {
                    std::fs::read_to_string(&log).unwrap_or_default()
                };
                last = Some(io::Error::new(
                    e.kind(),
                    format!("{e}; output: {output:?}; log: {logged:?}"),
                ));
                if e.kind() == io::ErrorKind::TimedOut {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("did not start")))
}

/// A loopback port nobody listens on right now.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Polls a TCP connect to `addr` until it succeeds, the child exits, or
/// [`START_TIMEOUT`] passes.
async fn wait_listening(child: &mut Child, addr: SocketAddr) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("it exited ({status})")));
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not listening on {addr} after {START_TIMEOUT:?}"),
            ));
        }
        // Polling: a process gives no event when it starts listening.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
