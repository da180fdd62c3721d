//! A fault-injecting loopback proxy for TCP and UDP.
//!
//! [`FaultProxy`] sits between a client and an upstream address. Tests connect to
//! [`FaultProxy::local_addr`] instead of the upstream, and switch at run time, with
//! [`FaultProxy::set`], what happens to the traffic:
//!
//! | [`Fault`]      | established connections / flows          | new connections / flows                    |
//! |----------------|------------------------------------------|--------------------------------------------|
//! | `Pass`         | forwarded both ways                      | connected to the upstream and forwarded    |
//! | `Delay(d)`     | forwarded, each chunk / datagram `d` late | the same                                   |
//! | `Drop`         | kept open, everything discarded both ways, closes too (a frozen peer) | TCP: accepted and connected upstream, all traffic discarded; UDP: discarded |
//! | `Blackhole`    | like `Drop`                              | TCP: accepted, never connected upstream nor answered (even after the fault is lifted); UDP: discarded |
//! | `Cut`          | closed (TCP: with a reset); UDP flows forgotten | TCP: reset at once; UDP: discarded    |
//!
//! A close (FIN) or reset from one side is passed on as such, except under `Drop` and
//! `Blackhole`, where it is swallowed like everything else. A TCP connection that lost
//! bytes under `Drop` cannot carry a valid byte stream afterwards: cut it, or let the
//! endpoints time out. UDP flows (one per client address, each with its own upstream
//! socket) are only forgotten by `Cut`; after a cut a client's next datagram starts a new
//! flow from a new upstream port, as a rebooted NAT would.
//!
//! The proxy counts what it forwarded and dropped ([`Counts`]), so tests can assert on
//! counts rather than on timings, and [`FaultProxy::wait_until`] waits for a condition on
//! them without polling. Dropping the proxy stops it and closes every connection.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use qymux_testsupport::fault::{Fault, FaultProxy};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = FaultProxy::tcp(upstream.local_addr()?).await?;
//! let mut client = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
//! let (mut server, _) = upstream.accept().await?;
//!
//! client.write_all(b"ping").await?;
//! let mut buf = [0u8; 4];
//! server.read_exact(&mut buf).await?;
//!
//! proxy.set(Fault::Drop); // the peer now looks frozen
//! client.write_all(b"lost").await?;
//! proxy.wait_until(|c| c.dropped_bytes.to_upstream == 4).await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What the proxy does with traffic; see the [module docs](self) for the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything (the initial state).
    #[default]
    Pass,
    /// Forward everything, each chunk (TCP) or datagram (UDP) this much later than it
    /// arrived; order is kept.
    Delay(Duration),
    /// Discard everything in both directions, closes included, but keep connections and
    /// flows open: the peer looks frozen.
    Drop,
    /// Like [`Fault::Drop`], and new TCP connections are accepted but never connected to the
    /// upstream: nothing behind the address answers.
    Blackhole,
    /// Close every connection (TCP with a reset) and forget every UDP flow, once on
    /// entering this state; while it lasts, new TCP connections are reset at once and
    /// datagrams are discarded.
    Cut,
}

impl Fault {
    /// The added latency if traffic is forwarded, `None` if it is discarded.
    fn forwarding_delay(self) -> Option<Duration> {
        match self {
            Fault::Pass => Some(Duration::ZERO),
            Fault::Delay(d) => Some(d),
            Fault::Drop | Fault::Blackhole | Fault::Cut => None,
        }
    }
}

/// Which transport a [`FaultProxy`] relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP connections (TLS + yamux sessions run over it).
    Tcp,
    /// UDP datagrams (QUIC sessions run over it).
    Udp,
}

/// A count per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// From the client to the upstream.
    pub to_upstream: u64,
    /// From the upstream to the client.
    pub to_client: u64,
}

impl Tally {
    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.to_upstream + self.to_client
    }

    fn add(&mut self, dir: Dir, n: u64) {
        match dir {
            Dir::ToUpstream => self.to_upstream += n,
            Dir::ToClient => self.to_client += n,
        }
    }
}

/// What a [`FaultProxy`] did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counts {
    /// TCP connections accepted, or UDP flows started, in total.
    pub connections: u64,
    /// TCP connections or UDP flows open right now.
    pub open: u64,
    /// Connections reset, or flows forgotten, by [`Fault::Cut`].
    pub cut: u64,
    /// Payload bytes passed on.
    pub forwarded_bytes: Tally,
    /// Payload bytes discarded.
    pub dropped_bytes: Tally,
    /// Datagrams passed on (UDP only).
    pub forwarded_datagrams: Tally,
    /// Datagrams discarded (UDP only).
    pub dropped_datagrams: Tally,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToUpstream,
    ToClient,
}

/// The current fault, and how many times [`Fault::Cut`] was set: a connection older than
/// the last cut is closed even if the fault was lifted before it noticed.
#[derive(Debug, Clone, Copy)]
struct State {
    fault: Fault,
    cuts: u64,
}

struct Inner {
    state: watch::Sender<State>,
    counts: Mutex<Counts>,
    changed: Notify,
}

impl Inner {
    fn fault(&self) -> Fault {
        self.state.borrow().fault
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, update: impl FnOnce(&mut Counts)) {
        update(&mut self.counts());
        self.changed.notify_waiters();
    }

    fn forwarded(&self, dir: Dir, bytes: usize, datagram: bool) {
        self.count(|c| {
            c.forwarded_bytes.add(dir, bytes as u64);
            if datagram {
                c.forwarded_datagrams.add(dir, 1);
            }
        });
    }

    fn dropped(&self, dir: Dir, bytes: usize, datagram: bool) {
        self.count(|c| {
            c.dropped_bytes.add(dir, bytes as u64);
            if datagram {
                c.dropped_datagrams.add(dir, 1);
            }
        });
    }

    /// Counts a new connection or flow; the guard counts it closed when dropped.
    fn opened(self: &Arc<Self>) -> OpenGuard {
        self.count(|c| {
            c.connections += 1;
            c.open += 1;
        });
        OpenGuard(self.clone())
    }
}

struct OpenGuard(Arc<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count(|c| c.open -= 1);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A loopback proxy in front of one upstream address whose behaviour tests switch at run
/// time; see the [module docs](self).
///
/// All methods take `&self`; share it between tasks in an [`Arc`]. Dropping it stops the
/// proxy and closes every connection it holds.
pub struct FaultProxy {
    inner: Arc<Inner>,
    transport: Transport,
    local_addr: SocketAddr,
    upstream: SocketAddr,
    _task: AbortOnDrop,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("transport", &self.transport)
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.upstream)
            .field("fault", &self.fault())
            .field("counts", &self.counts())
            .finish()
    }
}

/// A loopback address of the same family as `upstream`, any port.
fn loopback_like(upstream: SocketAddr) -> SocketAddr {
    match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::LOCALHOST, 0).into(),
    }
}

impl FaultProxy {
    /// Starts a proxy for `transport` on a free loopback port, in front of `upstream`,
    /// in the [`Fault::Pass`] state.
    pub async fn start(transport: Transport, upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::bind(transport, loopback_like(upstream), upstream).await
    }

    /// Like [`FaultProxy::start`], listening on `local`: for instance a TCP and a UDP
    /// proxy on the same port number (as an Auto-mode listener has), or a proxy that comes
    /// back on the port of one that was dropped.
    pub async fn bind(
        transport: Transport,
        local: SocketAddr,
        upstream: SocketAddr,
    ) -> io::Result<FaultProxy> {
        let inner = Arc::new(Inner {
            state: watch::Sender::new(State {
                fault: Fault::Pass,
                cuts: 0,
            }),
            counts: Mutex::new(Counts::default()),
            changed: Notify::new(),
        });
        let (local_addr, task) = match transport {
            Transport::Tcp => {
                let listener = TcpListener::bind(local).await?;
                let addr = listener.local_addr()?;
                (
                    addr,
                    tokio::spawn(tcp_accept(listener, upstream, inner.clone())),
                )
            }
            Transport::Udp => {
                let socket = UdpSocket::bind(local).await?;
                let addr = socket.local_addr()?;
                (
                    addr,
                    tokio::spawn(udp_relay(socket, upstream, inner.clone())),
                )
            }
        };
        Ok(FaultProxy {
            inner,
            transport,
            local_addr,
            upstream,
            _task: AbortOnDrop(task),
        })
    }

    /// A TCP proxy in front of `upstream`; see [`FaultProxy::start`].
    pub async fn tcp(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::start(Transport::Tcp, upstream).await
    }

    /// A UDP proxy in front of `upstream`; see [`FaultProxy::start`].
    pub async fn udp(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::start(Transport::Udp, upstream).await
    }

    /// The address clients connect or send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address traffic is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The transport this proxy relays.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Switches the behaviour; it applies to data that arrives from now on, and to data
    /// not yet passed on. Setting [`Fault::Cut`] closes every current connection even if
    /// another fault is set right after.
    pub fn set(&self, fault: Fault) {
        self.inner.state.send_modify(|state| {
            state.fault = fault;
            if fault == Fault::Cut {
                state.cuts += 1;
            }
        });
    }

    /// The current behaviour.
    pub fn fault(&self) -> Fault {
        self.inner.fault()
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> Counts {
        *self.inner.counts()
    }

    /// Waits until `condition` holds for the counts, and returns them. It is checked at
    /// once and after every change; wrap it in a timeout in tests.
    pub async fn wait_until(&self, mut condition: impl FnMut(&Counts) -> bool) -> Counts {
        loop {
            let mut changed = pin!(self.inner.changed.notified());
            changed.as_mut().enable();
            let counts = self.counts();
            if condition(&counts) {
                return counts;
            }
            changed.await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// TCP

async fn tcp_accept(listener: TcpListener, upstream: SocketAddr, inner: Arc<Inner>) {
    // Dropping the set (when the proxy is dropped) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(tcp_connection(client, upstream, inner.clone()));
                }
                // Per-connection failures (the client reset before accept, no file
                // descriptors for a moment); the listener itself stays usable. Pause a
                // little so that a lasting one (out of descriptors) does not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Makes the close of `stream` a reset (`SO_LINGER` 0).
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn tcp_connection(mut client: TcpStream, upstream: SocketAddr, inner: Arc<Inner>) {
    let _open = inner.opened();
    let mut state = inner.state.subscribe();
    let born = *state.borrow_and_update();
    let _ = client.set_nodelay(true);
    match born.fault {
        Fault::Cut => {
            inner.count(|c| c.cut += 1);
            reset_on_close(&client);
            return;
        }
        Fault::Blackhole => {
            if blackhole(&mut client, &mut state, born.cuts, &inner).await {
                reset_on_close(&client);
            }
            return;
        }
        _ => {}
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            reset_on_close(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let mut up = pin!(direction(
            &mut client_read,
            &mut server_write,
            Dir::ToUpstream,
            &inner
        ));
        let mut down = pin!(direction(
            &mut server_read,
            &mut client_write,
            Dir::ToClient,
            &inner
        ));
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => {
                    if end == End::Reset { break true; }
                    up_done = true;
                }
                end = &mut down, if !down_done => {
                    if end == End::Reset { break true; }
                    down_done = true;
                }
                changed = state.changed() => {
                    if changed.is_err() { break false; }
                    if state.borrow_and_update().cuts != born.cuts {
                        inner.count(|c| c.cut += 1);
                        break true;
                    }
                }
            }
            if up_done && down_done {
                break false;
            }
        }
    };
    if reset {
        reset_on_close(&client);
        reset_on_close(&server);
    }
}

/// Holds a connection that nothing answers: reads and discards until a cut (`true`) or
/// until the proxy stops.
async fn blackhole(
    client: &mut TcpStream,
    state: &mut watch::Receiver<State>,
    born_cuts: u64,
    inner: &Inner,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut reading = true;
    loop {
        tokio::select! {
            read = client.read(&mut buf), if reading => match read {
                Ok(0) | Err(_) => reading = false,
                Ok(n) => inner.dropped(Dir::ToUpstream, n, false),
            },
            changed = state.changed() => {
                if changed.is_err() { return false; }
                if state.borrow_and_update().cuts != born_cuts {
                    inner.count(|c| c.cut += 1);
                    return true;
                }
            }
        }
    }
}

/// How one direction of a TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender closed and the close was passed on (FIN).
    Eof,
    /// A read or write failed: the whole connection is reset.
    Reset,
    /// The sender closed or failed while traffic was discarded; nothing was passed on.
    Swallowed,
}

enum Item {
    Data(Instant, Vec<u8>),
    Eof,
    Failed,
}

/// Pumps one direction: a reader that decides per chunk whether and when it goes on, and a
/// writer that passes it on at that time (unless the fault changed to discarding meanwhile).
async fn direction<R, W>(reader: &mut R, writer: &mut W, dir: Dir, inner: &Inner) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Item>(64);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let item = match reader.read(&mut buf).await {
                Ok(0) => Item::Eof,
                Ok(n) => match inner.fault().forwarding_delay() {
                    Some(delay) => Item::Data(Instant::now() + delay, buf[..n].to_vec()),
                    None => {
                        inner.dropped(dir, n, false);
                        continue;
                    }
                },
                Err(_) => Item::Failed,
            };
            let last = !matches!(item, Item::Data(..));
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    };
    let write = async {
        while let Some(item) = rx.recv().await {
            let discarding = |inner: &Inner| inner.fault().forwarding_delay().is_none();
            match item {
                Item::Data(at, data) => {
                    tokio::time::sleep_until(at).await;
                    if discarding(inner) {
                        inner.dropped(dir, data.len(), false);
                        continue;
                    }
                    if writer.write_all(&data).await.is_err() {
                        return End::Reset;
                    }
                    inner.forwarded(dir, data.len(), false);
                }
                Item::Eof if discarding(inner) => return End::Swallowed,
                Item::Eof => {
                    let _ = writer.shutdown().await;
                    return End::Eof;
                }
                Item::Failed if discarding(inner) => return End::Swallowed,
                Item::Failed => return End::Reset,
            }
        }
        // The reader always ends with an `Eof` or `Failed` item.
        End::Swallowed
    };
    let mut write = pin!(write);
    tokio::select! {
        end = &mut write => end,
        () = read => write.await,
    }
}

// ---------------------------------------------------------------------------------------
// UDP

/// A datagram and when to pass it on.
type Timed = (Instant, Vec<u8>);

/// Datagrams queued per flow and direction before further ones are dropped (as a full
/// router queue would).
const UDP_QUEUE: usize = 1024;

struct Flow {
    to_upstream: mpsc::Sender<Timed>,
    _task: AbortOnDrop,
}

async fn udp_relay(front: UdpSocket, upstream: SocketAddr, inner: Arc<Inner>) {
    let front = Arc::new(front);
    let mut state = inner.state.subscribe();
    let mut cuts = state.borrow_and_update().cuts;
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            received = front.recv_from(&mut buf) => {
                // Errors here concern one datagram, not the socket.
                let Ok((n, client)) = received else { continue };
                let Some(delay) = inner.fault().forwarding_delay() else {
                    inner.dropped(Dir::ToUpstream, n, true);
                    continue;
                };
                let flow = match flows.entry(client) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => match udp_flow(&front, client, upstream, &inner).await {
                        Ok(flow) => e.insert(flow),
                        Err(_) => {
                            inner.dropped(Dir::ToUpstream, n, true);
                            continue;
                        }
                    },
                };
                if flow.to_upstream.try_send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    inner.dropped(Dir::ToUpstream, n, true);
                }
            }
            changed = state.changed() => {
                if changed.is_err() { return; }
                let now = state.borrow_and_update().cuts;
                if now != cuts {
                    cuts = now;
                    let n = flows.len() as u64;
                    inner.count(|c| c.cut += n);
                    flows.clear();
                }
            }
        }
    }
}

/// Starts a flow for `client`: its own socket towards the upstream, and a task that
/// passes datagrams both ways.
async fn udp_flow(
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    inner: &Arc<Inner>,
) -> io::Result<Flow> {
    let socket = UdpSocket::bind(loopback_like(upstream)).await?;
    socket.connect(upstream).await?;
    let (to_upstream, up_rx) = mpsc::channel(UDP_QUEUE);
    let open = inner.opened();
    let task = tokio::spawn(run_flow(
        socket,
        up_rx,
        front.clone(),
        client,
        inner.clone(),
        open,
    ));
    Ok(Flow {
        to_upstream,
        _task: AbortOnDrop(task),
    })
}

async fn run_flow(
    socket: UdpSocket,
    mut up_rx: mpsc::Receiver<Timed>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    inner: Arc<Inner>,
    _open: OpenGuard,
) {
    let (down_tx, mut down_rx) = mpsc::channel::<Timed>(UDP_QUEUE);
    let inner = &*inner;
    let discarding = || inner.fault().forwarding_delay().is_none();
    let send_up = async {
        while let Some((at, data)) = up_rx.recv().await {
            tokio::time::sleep_until(at).await;
            if discarding() {
                inner.dropped(Dir::ToUpstream, data.len(), true);
            } else if socket.send(&data).await.is_ok() {
                inner.forwarded(Dir::ToUpstream, data.len(), true);
            } else {
                inner.dropped(Dir::ToUpstream, data.len(), true);
            }
        }
    };
    let receive_down = async {
        let mut buf = vec![0u8; 65536];
        loop {
            // An error is an ICMP report about an earlier datagram (the upstream is not
            // listening); the socket stays usable.
            let Ok(n) = socket.recv(&mut buf).await else {
                continue;
            };
            match inner.fault().forwarding_delay() {
                Some(delay) => {
                    if down_tx
                        .try_send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        inner.dropped(Dir::ToClient, n, true);
                    }
                }
                None => inner.dropped(Dir::ToClient, n, true),
            }
        }
    };
    let send_down = async {
        while let Some((at, data)) = down_rx.recv().await {
            tokio::time::sleep_until(at).await;
            if discarding() {
                inner.dropped(Dir::ToClient, data.len(), true);
            } else if front.send_to(&data, client).await.is_ok() {
                inner.forwarded(Dir::ToClient, data.len(), true);
            } else {
                inner.dropped(Dir::ToClient, data.len(), true);
            }
        }
    };
    // The flow lives until the relay forgets it (cut, or the proxy stops).
    tokio::join!(send_up, receive_down, send_down);
}

#[cfg(test)]
mod tests;
