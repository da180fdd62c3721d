#!/usr/bin/env python3
"""aioquic-peer: an independent Qymux peer for interoperability tests.

QUIC v1 with ALPN "qymux" on aioquic (PyPI), the wire format of the Go Qymux
in QUIC mode: one Qymux stream is one bidirectional QUIC stream carrying
exactly the application's bytes, and either side may open streams. The Rust
test harness in crates/qymux-testsupport drives it (aioquic.rs). It shares no
code with Qymux or quinn.

Install: python3 -m pip install aioquic   (aioquic 1.x, Python 3.10 or newer)

Modes:

    peer.py server --listen 127.0.0.1:0 --cert C --key K [--open N --bytes B]
                   [--watch-stdin true]
    peer.py client --connect H:P --ca CA [--cert C --key K]
                   [--server-name localhost] --streams N --bytes B
                   [--expect-reverse K] [--timeout 60s]

Both: --alpn qymux (the protocol offered and required; --alpn= offers none
and checks nothing), --stall-timeout 10s. Durations take a unit (500ms, 10s,
2m) or are seconds. TLS 1.3 (QUIC). The server exits when its stdin reaches
EOF (unless --watch-stdin false). The server cannot require client
certificates (aioquic does not support that); a client given --cert/--key
presents them when the server asks.

Both sides echo every stream the other side opens (every chunk written back
as it arrives; at the peer's FIN, FIN). A stream is accepted as soon as its
first STREAM frame arrives, even one without data: Qymux announces a stream
at open with a STREAM frame of length zero, and aioquic reports no event for
such a frame, so this peer looks for new peer-opened streams after every
datagram.

A "verify-open" stream writes B bytes of deterministic data and FIN at once,
and reads the echo back, comparing it byte for byte; it succeeds once all B
bytes came back followed by the peer's FIN, and fails on a short, long or
different echo, a reset, a lost connection, or nothing received for
--stall-timeout. Its data is splitmix64 seeded with the QUIC stream id, each
64-bit output written little-endian.

Output, server (stdout, one line each):

    LISTENING <host:port>           once, when listening
    HANDSHAKE-ERROR <err>           a handshake (or the ALPN check) failed
    ACCEPTED <stream-id>            a stream the client opened was accepted
    REVERSE ok=<n> failed=<m>       per session, when its --open streams are done
    SESSION-END <how>               per session, when it ended (after REVERSE)

where <how> is "app-close code=<n> reason=<json string>" for a
CONNECTION_CLOSE of the application kind, "transport-close code=<n>
frame=<type> reason=<json string>" for one of the transport kind (sent by
the peer, or by aioquic itself on a protocol error), "idle-timeout", and
starts with "local " when this peer closed the session itself.

Output, client (stdout): RESULT ok=<n> failed=<m> reverse=<k>; exit status 0
on success, 1 on failure, 2 on a handshake failure (with "ERROR handshake:
<err>" on stdout and stderr). Other failures print "ERROR <what>: <err>".
Stream failures print "STREAM-ERROR <id> <err>" to stderr. Before it closes
the session (CONNECTION_CLOSE, application code 0, reason "done"), the
client waits until the server acknowledged everything it sent, so no echo is
cut short; on a timeout or a failed ALPN check it closes with application
code 1 instead.
"""

import argparse
import asyncio
import collections
import functools
import json
import os
import re
import ssl
import struct
import sys
import threading

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

# Flow-control windows offered to the other side: large enough that
# megabyte streams are not throttled by round trips of credit.
STREAM_WINDOW = 8 * 1024 * 1024
CONNECTION_WINDOW = 32 * 1024 * 1024
# A handshake the server does not see complete in this time is dropped.
HANDSHAKE_TIMEOUT = 10.0


def say(line):
    """Prints one line to stdout, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(line):
    """Prints one line to stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(code, what, err):
    """Prints "ERROR <what>: <err>" to stdout and stderr and exits."""
    say(f"ERROR {what}: {err}")
    warn(f"ERROR {what}: {err}")
    sys.stdout.flush()
    os._exit(code)


# ------------------------------------------------------------------ data


_MASK = (1 << 64) - 1


def pattern(stream_id, size):
    """The verify-open data of a stream: splitmix64 seeded with its id."""
    state = stream_id & _MASK
    words = []
    for _ in range((size + 7) // 8):
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        words.append(z ^ (z >> 31))
    return struct.pack(f"<{len(words)}Q", *words)[:size]


def duration(text):
    """Parses "10s", "500ms", "2m" or plain seconds into seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}")
    value = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
    return value * scale[match.group(2)]


def boolean(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"bad boolean {text!r}")


def split_host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def join_host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------- streams


class StreamError(Exception):
    """A stream failed: reset, stopped, stalled, or its connection was lost."""


class Stream:
    """One bidirectional QUIC stream, as bytes in and bytes out."""

    def __init__(self, session, stream_id):
        self.session = session
        self.id = stream_id
        self._chunks = collections.deque()
        self._eof = False
        self._error = None
        self._wakeup = None

    def _notify(self):
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _on_data(self, data, end_stream):
        if data:
            self._chunks.append(data)
        if end_stream:
            self._eof = True
        self._notify()

    def _on_error(self, error):
        if self._error is None and not self._eof:
            self._error = error
        self._notify()

    async def read(self, stall):
        """The next chunk of data, b"" at the peer's FIN; raises StreamError."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._wakeup, stall)
            except asyncio.TimeoutError:
                raise StreamError(f"nothing received for {stall:g}s") from None
            finally:
                self._wakeup = None
        if self._error is not None:
            raise self._error
        return self._chunks.popleft()

    def write(self, data, end_stream=False):
        """Queues data (and FIN) for sending."""
        if self._error is not None:
            raise self._error
        try:
            self.session._quic.send_stream_data(self.id, data, end_stream=end_stream)
        except (RuntimeError, ValueError) as err:
            raise StreamError(f"write: {err}") from None
        self.session.transmit()

    def reset(self):
        try:
            self.session._quic.reset_stream(self.id, 0)
            self.session.transmit()
        except (RuntimeError, ValueError):
            pass


# --------------------------------------------------------------- session


def describe_end(event, closed_locally):
    """How a session ended, for SESSION-END and error messages."""
    if event is None:
        how = "unknown"
    elif event.reason_phrase == "Idle timeout" and event.frame_type is not None:
        how = "idle-timeout"
    elif event.frame_type is None:
        how = f"app-close code={event.error_code} reason={json.dumps(event.reason_phrase)}"
    else:
        how = (
            f"transport-close code={event.error_code:#x} frame={event.frame_type:#x} "
            f"reason={json.dumps(event.reason_phrase)}"
        )
    return ("local " + how) if closed_locally else how


class Session(QuicConnectionProtocol):
    """A QUIC connection; every stream the peer opens comes out of `inbound`
    (then None once the connection ended)."""

    # aioquic passes stream_handler; this class hands streams out itself.
    def __init__(self, quic, stream_handler=None, *, on_session=None):
        super().__init__(quic)
        self.streams = {}
        self.alpn = None
        self.handshake_done = False
        self.terminated = None
        self.closed_locally = False
        self.ended = asyncio.get_running_loop().create_future()
        self.handshake = asyncio.get_running_loop().create_future()
        self.inbound = asyncio.Queue()
        # The lowest id a stream the peer opens next can have: bidirectional
        # streams the peer initiates are 0, 4, 8, … for a client, 1, 5, 9, …
        # for a server.
        self._next_peer_stream = 1 if quic.configuration.is_client else 0
        if on_session is not None:
            on_session(self)

    # Streams -------------------------------------------------------------

    def open_stream(self, data, end_stream):
        """Opens a bidirectional stream and sends data (and FIN) on it."""
        stream_id = self._quic.get_next_available_stream_id()
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        stream.write(data, end_stream)
        return stream

    def _peer_opened(self, stream_id):
        """Accepts every peer stream up to stream_id (opening one opens the
        lower-numbered ones too, RFC 9000 section 2.1)."""
        while self._next_peer_stream <= stream_id:
            sid = self._next_peer_stream
            self._next_peer_stream += 4
            stream = Stream(self, sid)
            self.streams[sid] = stream
            self.inbound.put_nowait(stream)

    def _find_new_streams(self):
        # aioquic creates a stream for any STREAM frame, but reports an event
        # only for one that carries data or FIN. Its stream table shows the
        # others, such as a Qymux stream announced at open.
        for sid in list(self._quic._streams):
            is_peer = (sid & 1) == (1 if self._quic.configuration.is_client else 0)
            if is_peer and not sid & 2 and sid >= self._next_peer_stream:
                self._peer_opened(sid)

    def all_sent_acknowledged(self):
        """Whether the peer acknowledged every byte and FIN this side sent."""
        for stream in self._quic._streams.values():
            sender = stream.sender
            wrote = sender.highest_offset or sender._buffer_fin is not None
            if not sender.is_finished and (wrote or not sender.buffer_is_empty):
                return False
        return True

    # aioquic hooks -------------------------------------------------------

    def datagram_received(self, data, addr):
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        self._find_new_streams()
        self._process_events()
        self.transmit()

    def quic_event_received(self, event):
        if isinstance(event, events.HandshakeCompleted):
            self.alpn = event.alpn_protocol
            self.handshake_done = True
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, events.StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None and event.stream_id >= self._next_peer_stream:
                self._peer_opened(event.stream_id)
                stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_error(StreamError(f"reset by the peer (code {event.error_code})"))
        elif isinstance(event, events.StopSendingReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_error(
                    StreamError(f"stopped by the peer (STOP_SENDING code {event.error_code})")
                )
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            how = describe_end(event, self.closed_locally)
            for stream in self.streams.values():
                stream._on_error(StreamError(f"session ended: {how}"))
            if not self.handshake.done():
                self.handshake.set_exception(ConnectionError(how))
                self.handshake.exception()  # retrieved: no "never retrieved" warning
            if not self.ended.done():
                self.ended.set_result(how)
            self.inbound.put_nowait(None)

    def close_session(self, error_code=0, reason=""):
        if self.terminated is None:
            self.closed_locally = True
        self.close(error_code=error_code, reason_phrase=reason)


# ------------------------------------------------------ stream behaviours


async def echo(stream):
    """Copies everything from the stream back to it; FIN after the peer's FIN."""
    try:
        while True:
            # An echo waits for the peer as long as the session lives: the
            # peer decides when it writes.
            chunk = await stream.read(None)
            if not chunk:
                stream.write(b"", end_stream=True)
                return True
            stream.write(chunk)
    except StreamError as err:
        warn(f"STREAM-ERROR {stream.id} echo: {err}")
        stream.reset()
        return False


async def verify_open(session, size, stall):
    """Opens a stream, sends size bytes and FIN, and checks the echo."""
    # No await between choosing the id and opening the stream: the id is the
    # one open_stream takes.
    stream_id = session._quic.get_next_available_stream_id()
    data = pattern(stream_id, size)
    view = memoryview(data)
    try:
        stream = session.open_stream(data, end_stream=True)
        assert stream.id == stream_id
        got = 0
        while True:
            chunk = await stream.read(stall)
            if not chunk:
                break
            end = got + len(chunk)
            if end > size:
                raise StreamError(f"echo longer than the {size} bytes sent")
            if view[got:end] != chunk:
                for i, byte in enumerate(chunk):
                    if byte != data[got + i]:
                        raise StreamError(f"echo differs at offset {got + i}")
            got = end
        if got != size:
            raise StreamError(f"short echo: {got} of {size} bytes before FIN")
        return True
    except StreamError as err:
        warn(f"STREAM-ERROR {stream_id} {err}")
        return False


async def open_verified(session, n, size, stall):
    results = await asyncio.gather(*(verify_open(session, size, stall) for _ in range(n)))
    ok = sum(1 for r in results if r)
    return ok, n - ok


def quic_configuration(args, is_client):
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[args.alpn] if args.alpn else None,
        max_stream_data=STREAM_WINDOW,
        max_data=CONNECTION_WINDOW,
    )
    if args.cert or args.key:
        if not (args.cert and args.key):
            fail(1, "config", "--cert and --key go together")
        try:
            config.load_cert_chain(args.cert, args.key)
        except (OSError, ValueError) as err:
            fail(1, "config", f"loading --cert/--key: {err}")
    return config


# ---------------------------------------------------------------- server


def watch_stdin():
    """Exits the process once stdin reaches EOF."""

    def run():
        try:
            while os.read(sys.stdin.fileno(), 65536):
                pass
        except OSError:
            pass
        sys.stdout.flush()
        os._exit(0)

    threading.Thread(target=run, name="watch-stdin", daemon=True).start()


async def serve_session(session, args):
    """Runs one accepted session until it ends."""
    loop = asyncio.get_running_loop()
    timer = loop.call_later(
        HANDSHAKE_TIMEOUT,
        lambda: session.handshake_done
        or session.close_session(0x1, f"handshake not done within {HANDSHAKE_TIMEOUT:g}s"),
    )
    try:
        await session.handshake
    except ConnectionError as err:
        say(f"HANDSHAKE-ERROR {err}")
        warn(f"HANDSHAKE-ERROR {err}")
        return
    finally:
        timer.cancel()
    if args.alpn and session.alpn != args.alpn:
        err = f"ALPN: negotiated {session.alpn!r}, want {args.alpn!r}"
        say(f"HANDSHAKE-ERROR {err}")
        warn(f"HANDSHAKE-ERROR {err}")
        session.close_session(0x1, "no qymux ALPN")
        return

    reverse = None
    if args.open > 0:

        async def reverse_streams():
            ok, failed = await open_verified(session, args.open, args.bytes, args.stall_timeout)
            say(f"REVERSE ok={ok} failed={failed}")

        reverse = asyncio.ensure_future(reverse_streams())

    echoes = set()
    while True:
        stream = await session.inbound.get()
        if stream is None:
            break
        say(f"ACCEPTED {stream.id}")
        task = asyncio.ensure_future(echo(stream))
        echoes.add(task)
        task.add_done_callback(echoes.discard)
    how = await session.ended
    if reverse is not None:
        await reverse
    say(f"SESSION-END {how}")


async def run_server(args):
    if not (args.cert and args.key):
        fail(1, "config", "server needs --cert and --key")
    if args.ca:
        fail(1, "config", "--ca (requiring client certificates) is not supported by aioquic-peer")
    config = quic_configuration(args, is_client=False)
    try:
        host, port = split_host_port(args.listen)
    except ValueError as err:
        fail(1, "usage", err)

    sessions = set()

    def on_session(session):
        task = asyncio.ensure_future(serve_session(session, args))
        sessions.add(task)
        task.add_done_callback(sessions.discard)

    try:
        server = await serve(
            host,
            port,
            configuration=config,
            create_protocol=functools.partial(Session, on_session=on_session),
        )
    except OSError as err:
        fail(1, "listen", err)
    if args.watch_stdin:
        watch_stdin()
    # aioquic's QuicServer does not expose its socket's address otherwise.
    bound = server._transport.get_extra_info("sockname")
    say(f"LISTENING {join_host_port(bound[0], bound[1])}")
    await asyncio.Event().wait()


# ---------------------------------------------------------------- client


async def run_client(args):
    if not args.connect:
        fail(1, "usage", "client needs --connect")
    if not args.ca:
        fail(1, "config", "client needs --ca")
    config = quic_configuration(args, is_client=True)
    config.server_name = args.server_name
    config.verify_mode = ssl.CERT_REQUIRED
    try:
        with open(args.ca, "rb"):
            pass
    except OSError as err:
        fail(1, "config", f"--ca: {err}")
    config.load_verify_locations(cafile=args.ca)
    try:
        host, port = split_host_port(args.connect)
    except ValueError as err:
        fail(1, "usage", err)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout

    async def dial_and_run():
        # wait_connected=False: this waits for the handshake itself, bounded,
        # and learns why it failed.
        async with connect(
            host, port, configuration=config, create_protocol=Session, wait_connected=False
        ) as session:
            session.transmit()
            done, _ = await asyncio.wait(
                {session.handshake}, timeout=max(0.0, deadline - loop.time())
            )
            if not done:
                abort(session, 2, "handshake", f"not done within {args.timeout:g}s")
            if session.handshake.exception() is not None:
                fail(2, "handshake", session.handshake.exception())
            await client_session(session, args, deadline)

    try:
        # Only a backstop: the steps above and client_session watch the deadline.
        await asyncio.wait_for(dial_and_run(), timeout=args.timeout + 5)
    except asyncio.TimeoutError:
        fail(1, "timeout", f"after {args.timeout:g}s")
    except (OSError, ssl.SSLError) as err:
        fail(1, "dial", err)


def abort(session, code, what, err):
    """Closes the session with application error 1 and fails."""
    session.close_session(0x1, what)
    fail(code, what, err)


def is_tls_alert(event):
    """Whether a connection ended with a TLS alert (QUIC CRYPTO_ERROR), which
    is how a TLS 1.3 client learns after its handshake that the server
    rejected its certificate."""
    return event is not None and event.frame_type is not None and 0x100 <= event.error_code < 0x200


async def client_session(session, args, deadline):
    loop = asyncio.get_running_loop()
    if args.alpn and session.alpn != args.alpn:
        abort(session, 2, "handshake", f"ALPN: negotiated {session.alpn!r}, want {args.alpn!r}")

    reverse_done = asyncio.Queue()

    async def accept_loop():
        while True:
            stream = await session.inbound.get()
            if stream is None:
                return
            task = asyncio.ensure_future(echo(stream))
            task.add_done_callback(lambda t: reverse_done.put_nowait(t.result()))

    acceptor = asyncio.ensure_future(accept_loop())
    own_done = asyncio.Queue()
    for _ in range(args.streams):
        task = asyncio.ensure_future(verify_open(session, args.bytes, args.stall_timeout))
        task.add_done_callback(lambda t: own_done.put_nowait(t.result()))

    ok = failed = reverse = own = inbound = 0
    ended = session.ended
    while own < args.streams or inbound < args.expect_reverse:
        own_get = asyncio.ensure_future(own_done.get())
        rev_get = asyncio.ensure_future(reverse_done.get())
        waits = {own_get, rev_get, ended}
        try:
            done, _ = await asyncio.wait(
                waits, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in (own_get, rev_get):
                if not w.done():
                    w.cancel()
        if own_get in done:
            own += 1
            ok, failed = (ok + 1, failed) if own_get.result() else (ok, failed + 1)
        if rev_get in done:
            inbound += 1
            reverse, failed = (reverse + 1, failed) if rev_get.result() else (reverse, failed + 1)
        if not done:
            abort(
                session,
                1,
                "timeout",
                f"after {args.timeout:g}s: own streams done {own} of {args.streams} (ok={ok}), "
                f"inbound streams echoed {inbound} of {args.expect_reverse}, failed={failed}",
            )
        if ended in done and own_get not in done and rev_get not in done:
            if own < args.streams or inbound < args.expect_reverse:
                if is_tls_alert(session.terminated):
                    fail(2, "handshake", ended.result())
                fail(1, "session", f"{ended.result()} (ok={ok} failed={failed} reverse={reverse})")

    # Everything this side sent (the echoes above all) must reach the peer
    # before CONNECTION_CLOSE discards what is still in flight.
    while session.terminated is None and not session.all_sent_acknowledged():
        if loop.time() >= deadline:
            abort(session, 1, "timeout", "the server did not acknowledge all data in time")
        await asyncio.sleep(0.005)
    acceptor.cancel()
    session.close_session(0, "done")
    say(f"RESULT ok={ok} failed={failed} reverse={reverse}")
    if failed > 0 or ok != args.streams or reverse < args.expect_reverse:
        sys.stdout.flush()
        os._exit(1)


# ------------------------------------------------------------------ main


def parser():
    top = argparse.ArgumentParser(
        prog="peer.py", description="aioquic peer for Qymux interop tests (QUIC, ALPN qymux)"
    )
    modes = top.add_subparsers(dest="mode", required=True)

    def common(p):
        p.add_argument("--cert", default="", help="PEM file with our certificate (chain)")
        p.add_argument("--key", default="", help="PEM file with our private key")
        p.add_argument("--ca", default="", help="PEM file with the CA that verifies the server")
        p.add_argument("--alpn", default="qymux", help='ALPN protocol to offer and require ("" offers none)')
        p.add_argument("--stall-timeout", type=duration, default=10.0, help="fail a verify-open stream that receives nothing this long")

    server = modes.add_parser("server", help="listen, echo, optionally open streams")
    common(server)
    server.add_argument("--listen", default="127.0.0.1:0", help="UDP address to listen on")
    server.add_argument("--open", type=int, default=0, help="verify-open streams to open to each client")
    server.add_argument("--bytes", type=int, default=1 << 20, help="bytes per stream opened with --open")
    server.add_argument("--watch-stdin", type=boolean, default=True, help="exit when stdin reaches EOF")

    client = modes.add_parser("client", help="dial, open verify-open streams, echo the server's")
    common(client)
    client.add_argument("--connect", default="", help="host:port to dial")
    client.add_argument("--server-name", default="localhost", help="name to verify the server certificate against (SNI)")
    client.add_argument("--streams", type=int, default=1, help="verify-open streams to open")
    client.add_argument("--bytes", type=int, default=1 << 20, help="bytes per verify-open stream")
    client.add_argument("--expect-reverse", type=int, default=0, help="streams the server opens that must be echoed before closing")
    client.add_argument("--timeout", type=duration, default=60.0, help="fail if the whole run takes longer")
    return top


def main():
    args = parser().parse_args()
    run = run_server if args.mode == "server" else run_client
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
