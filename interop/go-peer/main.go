// Command go-peer is an independent Qymux peer for interoperability tests:
// Go crypto/tls (TLS over TCP, ALPN "qymux") + hashicorp yamux, the wire
// format of the Go Qymux in TCP mode. The Rust test harness in
// crates/qymux-testsupport drives it.
//
// Build (GOPATH mode, Debian packages golang-go and
// golang-github-hashicorp-yamux-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o go-peer ./interop/go-peer
//
// Modes:
//
//	go-peer server --listen 127.0.0.1:0 --cert C --key K [--ca CA] [--open N --bytes B]
//	               [--watch-stdin=true] [--goaway-after B]
//	go-peer client --connect H:P --ca CA [--cert C --key K] [--server-name localhost]
//	               --streams N --bytes B [--expect-reverse K] [--timeout 60s]
//
// Both: --alpn qymux (the protocol offered and required; --alpn= offers none
// and checks nothing), --stall-timeout 10s, --max-window B (yamux
// MaxStreamWindowSize; 0, the default, keeps hashicorp's 256 KiB),
// --report, --hold-fin N. TLS 1.2 at least. The server exits when its stdin
// reaches EOF (unless --watch-stdin=false); with --ca it requires and
// verifies client certificates.
//
// Both sides echo every stream the other side opens (io.Copy until EOF, then
// Close, which sends FIN). A "verify-open" stream writes B bytes of
// deterministic data in one single Write, closes its write side (FIN) and
// reads the echo back, comparing it byte for byte; it succeeds once all B
// bytes came back and the peer closed the stream too (checked per session,
// within --stall-timeout). An echo that stops early, or never closes, fails
// after --stall-timeout: the 2019 hashicorp yamux packaged by Debian returns
// a spurious EOF from Read after our own Close (see verifyOpen), so EOF alone
// cannot tell.
//
// The data of a verify-open stream is splitmix64 seeded with the yamux
// stream id, each 64-bit output written little-endian.
//
// --report prints "ECHOED <id> bytes=<n> sha256=<hex>" for every stream the
// other side opened, once its FIN came: what we received (and echoed).
//
// --hold-fin N keeps our own side of the first N streams the other side
// opens in a session open after its FIN (the echo is complete, our FIN is
// held back) until it opens its next stream, the session ends, or
// --stall-timeout passes. A second FIN on such a stream reaches hashicorp
// while the stream is half-closed, which it answers with GoAway(protocol
// error) and the end of the session: so a peer that sends FIN twice is seen.
//
// --goaway-after B (server): once a session has echoed B bytes in total over
// the streams the client opened, send GoAway (hashicorp's Session.GoAway,
// goAwayNormal: the client may open no new streams, the streams in flight go
// on) and print GOAWAY-SENT; the GoAway frame is on the connection before that
// line, and before any echo byte written after it. (GOAWAY-FAILED instead:
// GoAway returned an error, as it can when the session ends while it waits,
// even if the frame went out.) Then wait until the echo
// of every stream is over, the peer's FIN and ours (at most --stall-timeout),
// print "DRAINED open=<n>" (n: echoes still running), and close the session.
//
// Output, server (stdout, one line each):
//
//	LISTENING <host:port>           once, when listening
//	HANDSHAKE-ERROR <err>           a TLS handshake (or ALPN check) failed
//	REVERSE ok=<n> failed=<m>       per session, when its --open streams are done
//	ECHOED <id> bytes=<n> sha256=<hex>  with --report
//	GOAWAY-SENT                     with --goaway-after, per session
//	GOAWAY-FAILED <err>             instead, if Session.GoAway returned an error
//	DRAINED open=<n>                with --goaway-after, per session
//	SESSION-END <reason>            per session, when it ended (after REVERSE)
//
// Output, client (stdout): ECHOED lines with --report, then
// RESULT ok=<n> failed=<m> reverse=<k>; exit status
// 0 on success, 1 on failure, 2 on a TLS handshake failure (with
// "ERROR handshake: <err>" on stdout and stderr). Other failures print
// "ERROR <what>: <err>". Stream failures print "STREAM-ERROR <id> <err>" to
// stderr.
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

var outMu sync.Mutex

// say prints one line to stdout (unbuffered, so it is flushed at once).
func say(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// warn prints one line to stderr.
func warn(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// fail prints "ERROR <what>: <err>" to stdout and stderr and exits.
func fail(code int, what string, err error) {
	outMu.Lock()
	fmt.Fprintf(os.Stdout, "ERROR %s: %v\n", what, err)
	fmt.Fprintf(os.Stderr, "ERROR %s: %v\n", what, err)
	outMu.Unlock()
	os.Exit(code)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go-peer server|client [flags]; go-peer server -h / go-peer client -h for flags")
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "server":
		runServer(os.Args[2:])
	case "client":
		runClient(os.Args[2:])
	default:
		usage()
	}
}

// tlsFlags are the flags both modes share.
type tlsFlags struct {
	cert, key, ca, alpn string
}

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.cert, "cert", "", "PEM file with our certificate (chain)")
	fs.StringVar(&t.key, "key", "", "PEM file with our private key")
	fs.StringVar(&t.ca, "ca", "", "PEM file with the CA that verifies the other side (server: require client certificates)")
	fs.StringVar(&t.alpn, "alpn", "qymux", `ALPN protocol to offer and require ("" offers none and checks nothing)`)
}

func (t *tlsFlags) baseConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.alpn != "" {
		cfg.NextProtos = []string{t.alpn}
	}
	if t.cert != "" || t.key != "" {
		if t.cert == "" || t.key == "" {
			return nil, errors.New("--cert and --key go together")
		}
		pair, err := tls.LoadX509KeyPair(t.cert, t.key)
		if err != nil {
			return nil, fmt.Errorf("loading --cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate found in %s", path)
	}
	return pool, nil
}

// checkALPN fails if we asked for a protocol and the peer did not agree on it.
func checkALPN(conn *tls.Conn, alpn string) error {
	if alpn == "" {
		return nil
	}
	got := conn.ConnectionState().NegotiatedProtocol
	if got != alpn {
		return fmt.Errorf("ALPN: negotiated %q, want %q", got, alpn)
	}
	return nil
}

// sessionFlags are the session-level flags both modes share.
type sessionFlags struct {
	maxWindow uint64
	report    bool
	holdFin   int
	stall     time.Duration
}

func (f *sessionFlags) register(fs *flag.FlagSet) {
	fs.Uint64Var(&f.maxWindow, "max-window", 0, "yamux MaxStreamWindowSize in bytes (0: hashicorp's default, 256 KiB)")
	fs.BoolVar(&f.report, "report", false, `print "ECHOED <id> bytes=<n> sha256=<hex>" for every stream the other side opened, once its FIN came`)
	fs.IntVar(&f.holdFin, "hold-fin", 0, "hold our FIN on the first N streams the other side opens until it opens its next one")
	fs.DurationVar(&f.stall, "stall-timeout", 10*time.Second, "fail a stream whose echo stops (or whose FIN does not come) for this long")
}

func (f *sessionFlags) yamuxConfig() (*yamux.Config, error) {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	if f.maxWindow > math.MaxUint32 {
		return nil, fmt.Errorf("--max-window %d does not fit in 32 bits", f.maxWindow)
	}
	if f.maxWindow > 0 {
		cfg.MaxStreamWindowSize = uint32(f.maxWindow)
	}
	if err := yamux.VerifyConfig(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// isTLSAlert tells whether err is a TLS alert from the peer, which is how a
// TLS 1.3 client learns that the server rejected its certificate: after its
// own side of the handshake has completed.
func isTLSAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// pattern fills buf with the verify-open data of a stream: splitmix64 seeded
// with the stream id, each output little-endian.
func pattern(id uint32, buf []byte) {
	state := uint64(id)
	next := func() uint64 {
		state += 0x9e3779b97f4a7c15
		z := state
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	i := 0
	for ; i+8 <= len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], next())
	}
	if i < len(buf) {
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], next())
		copy(buf[i:], tail[:])
	}
}

// tracker follows the streams of one session, to check at the end that the
// peer closed (FIN) every stream we opened, and runs the echo of the streams
// the peer opens.
type tracker struct {
	sess *yamux.Session
	opts *sessionFlags
	// goAwayAfter (server, --goaway-after): echoed bytes that trigger GoAway.
	goAwayAfter int64

	// activeEcho counts inbound streams being echoed: they are in the
	// session's stream table until our Close after the peer's FIN.
	activeEcho int64
	// echoed counts the bytes echoed on all inbound streams.
	echoed     int64
	goAwayOnce sync.Once

	mu sync.Mutex
	// inboundSeen counts the inbound streams accepted so far.
	inboundSeen int
	// next is closed when the next inbound stream is accepted (--hold-fin).
	next chan struct{}
}

// inbound registers a stream the peer opened, just accepted. It tells the
// stream's echo whether to hold its FIN (--hold-fin) and returns what releases
// it: a channel closed when the next inbound stream is accepted.
func (t *tracker) inbound() (hold bool, next <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next != nil {
		close(t.next)
	}
	t.next = make(chan struct{})
	t.inboundSeen++
	return t.inboundSeen <= t.opts.holdFin, t.next
}

// echoInbound copies everything from an accepted stream back to it until EOF
// (the peer's FIN), then closes it (our FIN), keeping activeEcho up to date.
// With hold, our FIN waits until next is closed (the peer opened another
// stream), the session ends, or the stall timeout passes. With --report it
// prints what it received. It returns nil on success.
func (t *tracker) echoInbound(s *yamux.Stream, hold bool, next <-chan struct{}) error {
	atomic.AddInt64(&t.activeEcho, 1)
	defer atomic.AddInt64(&t.activeEcho, -1)

	sum := sha256.New()
	buf := make([]byte, 64*1024)
	var total int64
	for {
		n, rerr := s.Read(buf)
		if n > 0 {
			sum.Write(buf[:n])
			if _, werr := s.Write(buf[:n]); werr != nil {
				s.Close()
				return fmt.Errorf("echo: write after %d bytes: %w", total, werr)
			}
			total += int64(n)
			t.countEchoed(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			s.Close()
			return fmt.Errorf("echo: read after %d bytes: %w", total, rerr)
		}
	}
	if t.opts.report {
		say("ECHOED %d bytes=%d sha256=%x", s.StreamID(), total, sum.Sum(nil))
	}
	if hold {
		select {
		case <-next:
		case <-t.sess.CloseChan():
		case <-time.After(t.opts.stall):
			warn("hold-fin: no further stream within %v; closing stream %d", t.opts.stall, s.StreamID())
		}
	}
	return s.Close()
}

// countEchoed adds n echoed bytes, and sends GoAway once --goaway-after is
// reached.
func (t *tracker) countEchoed(n int64) {
	total := atomic.AddInt64(&t.echoed, n)
	if t.goAwayAfter > 0 && total >= t.goAwayAfter {
		t.goAwayOnce.Do(t.goAwayAndDrain)
	}
}

// goAwayAndDrain sends GoAway (normal: no new streams), prints GOAWAY-SENT
// once the frame is on the connection, then in the background waits until
// the echo of every stream is over (the peer's FIN came and ours went out),
// prints DRAINED and closes the session.
func (t *tracker) goAwayAndDrain() {
	// Session.GoAway returns once the send loop wrote the frame.
	if err := t.sess.GoAway(); err != nil {
		warn("ERROR goaway: %v", err)
		say("GOAWAY-FAILED %v", err)
		return
	}
	say("GOAWAY-SENT")
	go func() {
		open := t.waitEchoesDone(t.opts.stall)
		say("DRAINED open=%d", open)
		// hashicorp yamux's Close drops frames still queued; a ping queues
		// behind them and its answer comes after the peer read them all.
		pong := make(chan struct{})
		go func() {
			t.sess.Ping()
			close(pong)
		}()
		select {
		case <-pong:
		case <-time.After(t.opts.stall):
		}
		t.sess.Close()
	}()
}

// waitEchoesDone waits until every inbound stream's echo is over (our FIN
// sent after the peer's, or the echo failed), and returns how many are still
// running after the timeout. Once the session is closed, the echoes end at
// once; they get a second to say so.
func (t *tracker) waitEchoesDone(timeout time.Duration) int64 {
	deadline := time.Now().Add(timeout)
	closedAt := time.Time{}
	for {
		open := atomic.LoadInt64(&t.activeEcho)
		if open == 0 || time.Now().After(deadline) {
			return open
		}
		if closedAt.IsZero() && t.sess.IsClosed() {
			closedAt = time.Now()
			if d := closedAt.Add(time.Second); d.Before(deadline) {
				deadline = d
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// waitOpenedClosed waits until every stream we opened has been closed by the
// peer too (yamux drops a stream from its table once both sides sent FIN),
// and returns how many are still open after the timeout. Inbound streams
// being echoed are not counted; inbound streams not yet accepted can only
// delay the answer.
func (t *tracker) waitOpenedClosed(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		open := t.sess.NumStreams() - int(atomic.LoadInt64(&t.activeEcho))
		if open <= 0 {
			return 0
		}
		// A closed session no longer drops streams from its table.
		if t.sess.IsClosed() || time.Now().After(deadline) {
			return open
		}
		time.Sleep(time.Millisecond)
	}
}

// verifyOpen opens a stream, writes size bytes in one single Write, closes
// its write side (FIN) and compares the echo, read back concurrently.
//
// The hashicorp yamux of Debian (2019) returns io.EOF from Read after our own
// Close whenever its receive buffer is momentarily empty, although the peer
// has not sent FIN (newer versions fixed this). So an EOF after our Close and
// before all bytes came back is retried with a short sleep, and it only counts
// as a short echo once no byte has come for the stall timeout. Whether the
// peer really sent FIN is checked per session by tracker.waitOpenedClosed.
func verifyOpen(sess *yamux.Session, size int, stall time.Duration) (uint32, error) {
	s, err := sess.OpenStream()
	if err != nil {
		return 0, fmt.Errorf("open: %w", err)
	}
	id := s.StreamID()
	data := make([]byte, size)
	pattern(id, data)

	writeErr := make(chan error, 1)
	closed := make(chan struct{}) // closed just before our FIN (or when writing failed)
	go func() {
		n, err := s.Write(data)
		close(closed)
		if err != nil {
			writeErr <- fmt.Errorf("write (%d of %d bytes written): %w", n, size, err)
			return
		}
		if err := s.Close(); err != nil {
			writeErr <- fmt.Errorf("close: %w", err)
			return
		}
		writeErr <- nil
	}()

	var readErr, updateErr error
	buf := make([]byte, 64*1024)
	got := 0
	lastProgress := time.Now()
	backoff := 50 * time.Microsecond
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if readErr == nil {
				if got+n > size {
					readErr = fmt.Errorf("echo longer than the %d bytes sent", size)
				} else if !bytes.Equal(buf[:n], data[got:got+n]) {
					for i := 0; i < n; i++ {
						if buf[i] != data[got+i] {
							readErr = fmt.Errorf("echo differs at offset %d", got+i)
							break
						}
					}
				}
			}
			got += n
			lastProgress = time.Now()
			backoff = 50 * time.Microsecond
		}
		if err == io.EOF {
			if got >= size {
				break
			}
			select {
			case <-closed:
			default:
				// EOF while our side is open: the peer really sent FIN.
				readErr = firstErr(readErr, fmt.Errorf("short echo: %d of %d bytes before EOF", got, size))
			}
			if readErr == nil && updateErr != nil {
				readErr = fmt.Errorf("short echo: %d of %d bytes, then the session closed: %w", got, size, updateErr)
			}
			if readErr != nil {
				break
			}
			if time.Since(lastProgress) > stall {
				readErr = fmt.Errorf("short echo: %d of %d bytes, then EOF and nothing for %v", got, size, stall)
				break
			}
			time.Sleep(backoff)
			if backoff < 5*time.Millisecond {
				backoff *= 2
			}
			continue
		}
		if err != nil && n > 0 {
			// Read returns an error together with bytes only when the window
			// update after them could not be sent: the session closed, as the
			// peer does once its own side is done. What the stream already
			// received can still be read, then EOF; whether the FIN came is for
			// tracker.waitOpenedClosed.
			updateErr = err
			continue
		}
		if err != nil {
			readErr = firstErr(readErr, fmt.Errorf("read after %d bytes: %w", got, err))
			break
		}
	}
	if readErr != nil {
		// Do not leave the writer blocked on a window that never opens.
		s.Close()
	}
	if werr := <-writeErr; werr != nil {
		return id, werr
	}
	return id, readErr
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// openVerified runs n verify-open streams concurrently, then checks that the
// peer closed them all, and counts them.
func openVerified(t *tracker, n, size int, stall time.Duration) (ok, failed int) {
	results := make(chan bool, n)
	for i := 0; i < n; i++ {
		go func() {
			id, err := verifyOpen(t.sess, size, stall)
			if err != nil {
				warn("STREAM-ERROR %d %v", id, err)
			}
			results <- err == nil
		}()
	}
	for i := 0; i < n; i++ {
		if <-results {
			ok++
		} else {
			failed++
		}
	}
	if ok > 0 {
		if open := t.waitOpenedClosed(stall); open > 0 {
			if open > ok {
				open = ok
			}
			warn("STREAM-ERROR 0 %d stream(s) whose echo was complete were never closed (FIN) by the peer", open)
			ok -= open
			failed += open
		}
	}
	return ok, failed
}

// ---------------------------------------------------------------- server

func runServer(args []string) {
	fs := flag.NewFlagSet("go-peer server", flag.ExitOnError)
	var t tlsFlags
	t.register(fs)
	var sf sessionFlags
	sf.register(fs)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	open := fs.Int("open", 0, "streams to open to each client (verify-open)")
	size := fs.Int("bytes", 1<<20, "bytes per stream opened with --open")
	watchStdin := fs.Bool("watch-stdin", true, "exit when stdin reaches EOF")
	goAwayAfter := fs.Int64("goaway-after", 0, "send GoAway once a session echoed this many bytes, then close it when its streams are done (0: never)")
	fs.Parse(args)
	if fs.NArg() != 0 {
		fail(1, "usage", fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if _, err := sf.yamuxConfig(); err != nil {
		fail(1, "config", err)
	}

	cfg, err := t.baseConfig()
	if err != nil {
		fail(1, "config", err)
	}
	if len(cfg.Certificates) == 0 {
		fail(1, "config", errors.New("server needs --cert and --key"))
	}
	if t.ca != "" {
		pool, err := loadPool(t.ca)
		if err != nil {
			fail(1, "config", fmt.Errorf("--ca: %w", err))
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(1, "listen", err)
	}
	if *watchStdin {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			os.Exit(0)
		}()
	}
	say("LISTENING %s", ln.Addr())

	for {
		conn, err := ln.Accept()
		if err != nil {
			fail(1, "accept", err)
		}
		go serveConn(conn, cfg, t.alpn, &sf, *open, *size, *goAwayAfter)
	}
}

func serveConn(raw net.Conn, cfg *tls.Config, alpn string, sf *sessionFlags, open, size int, goAwayAfter int64) {
	if tcp, ok := raw.(*net.TCPConn); ok {
		tcp.SetNoDelay(true)
	}
	conn := tls.Server(raw, cfg)
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	err := conn.Handshake()
	if err == nil {
		err = checkALPN(conn, alpn)
	}
	if err != nil {
		warn("HANDSHAKE-ERROR %v", err)
		say("HANDSHAKE-ERROR %v", err)
		conn.Close()
		return
	}
	raw.SetDeadline(time.Time{})

	var sess *yamux.Session
	ycfg, err := sf.yamuxConfig()
	if err == nil {
		sess, err = yamux.Server(conn, ycfg)
	}
	if err != nil {
		warn("ERROR yamux: %v", err)
		conn.Close()
		return
	}

	t := &tracker{sess: sess, opts: sf, goAwayAfter: goAwayAfter}
	var reverse sync.WaitGroup
	if open > 0 {
		reverse.Add(1)
		go func() {
			defer reverse.Done()
			ok, failed := openVerified(t, open, size, sf.stall)
			say("REVERSE ok=%d failed=%d", ok, failed)
		}()
	}

	var reason error
	for {
		s, err := sess.AcceptStream()
		if err != nil {
			reason = err
			break
		}
		hold, next := t.inbound()
		go func() {
			if err := t.echoInbound(s, hold, next); err != nil {
				warn("STREAM-ERROR %d %v", s.StreamID(), err)
			}
		}()
	}
	sess.Close()
	reverse.Wait()
	say("SESSION-END %v", reason)
}

// ---------------------------------------------------------------- client

func runClient(args []string) {
	fs := flag.NewFlagSet("go-peer client", flag.ExitOnError)
	var t tlsFlags
	t.register(fs)
	var sf sessionFlags
	sf.register(fs)
	connect := fs.String("connect", "", "host:port to dial")
	serverName := fs.String("server-name", "localhost", "name to verify the server certificate against (SNI)")
	streams := fs.Int("streams", 1, "verify-open streams to open")
	size := fs.Int("bytes", 1<<20, "bytes per verify-open stream")
	expectReverse := fs.Int("expect-reverse", 0, "streams the server opens that must be echoed before closing")
	timeout := fs.Duration("timeout", 60*time.Second, "fail if the whole run takes longer")
	fs.Parse(args)
	if fs.NArg() != 0 {
		fail(1, "usage", fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	stall := &sf.stall
	ycfg, err := sf.yamuxConfig()
	if err != nil {
		fail(1, "config", err)
	}
	if *connect == "" {
		fail(1, "usage", errors.New("client needs --connect"))
	}

	cfg, err := t.baseConfig()
	if err != nil {
		fail(1, "config", err)
	}
	if t.ca == "" {
		fail(1, "config", errors.New("client needs --ca"))
	}
	pool, err := loadPool(t.ca)
	if err != nil {
		fail(1, "config", fmt.Errorf("--ca: %w", err))
	}
	cfg.RootCAs = pool
	cfg.ServerName = *serverName
	// With TLS 1.3 a server that requires a client certificate turns down a client
	// without one after the client's handshake is over, with an alert and a close. A
	// write can meet the closed connection (EPIPE, ECONNRESET) before the alert is read,
	// so note that the server asked for a certificate we do not have: a session that
	// then ends before anything got through was turned down in its handshake.
	certMissing := false
	if len(cfg.Certificates) == 0 {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			certMissing = true
			return &tls.Certificate{}, nil
		}
	}

	deadline := time.Now().Add(*timeout)
	timer := time.NewTimer(*timeout)

	raw, err := net.DialTimeout("tcp", *connect, *timeout)
	if err != nil {
		fail(1, "dial", err)
	}
	raw.(*net.TCPConn).SetNoDelay(true)
	conn := tls.Client(raw, cfg)
	raw.SetDeadline(deadline)
	err = conn.Handshake()
	if err == nil {
		err = checkALPN(conn, t.alpn)
	}
	if err != nil {
		fail(2, "handshake", err)
	}
	raw.SetDeadline(time.Time{})

	sess, err := yamux.Client(conn, ycfg)
	if err != nil {
		fail(1, "yamux", err)
	}

	tr := &tracker{sess: sess, opts: &sf}

	// Inbound streams: echo each one; report ok/failed per stream.
	sessErr := make(chan error, 1)
	reverseDone := make(chan bool, 64)
	go func() {
		for {
			s, err := sess.AcceptStream()
			if err != nil {
				sessErr <- err
				return
			}
			hold, next := tr.inbound()
			go func() {
				err := tr.echoInbound(s, hold, next)
				if err != nil {
					warn("STREAM-ERROR %d %v", s.StreamID(), err)
				}
				reverseDone <- err == nil
			}()
		}
	}()

	ownDone := make(chan bool, *streams)
	for i := 0; i < *streams; i++ {
		go func() {
			id, err := verifyOpen(sess, *size, *stall)
			if err != nil {
				warn("STREAM-ERROR %d %v", id, err)
			}
			ownDone <- err == nil
		}()
	}

	ok, failed, reverse, own, inbound := 0, 0, 0, 0, 0
	// sessionFailed turns a session that died under us into the exit path.
	sessionFailed := func(err error) {
		if isTLSAlert(err) {
			fail(2, "handshake", err)
		}
		if certMissing && ok == 0 && reverse == 0 {
			fail(2, "handshake", fmt.Errorf("the server asked for a client certificate and none was given; then the connection ended: %w", err))
		}
		fail(1, "session", fmt.Errorf("%v (ok=%d failed=%d reverse=%d)", err, ok, failed, reverse))
	}
	for own < *streams || inbound < *expectReverse {
		select {
		case good := <-ownDone:
			own++
			if good {
				ok++
			} else {
				failed++
			}
		case good := <-reverseDone:
			inbound++
			if good {
				reverse++
			} else {
				failed++
			}
		case err := <-sessErr:
			sessionFailed(err)
		case <-timer.C:
			fail(1, "timeout", fmt.Errorf("after %v: own streams done %d of %d (ok=%d), inbound streams echoed %d of %d, failed=%d",
				*timeout, own, *streams, ok, inbound, *expectReverse, failed))
		}
	}
	if ok > 0 {
		wait := *stall
		if left := time.Until(deadline); left < wait {
			wait = left
		}
		if open := tr.waitOpenedClosed(wait); open > 0 {
			if open > ok {
				open = ok
			}
			warn("STREAM-ERROR 0 %d stream(s) whose echo was complete were never closed (FIN) by the peer", open)
			ok -= open
			failed += open
		}
	}
	if failed > 0 && sess.IsClosed() {
		// Streams failed because the session died: report why.
		select {
		case err := <-sessErr:
			sessionFailed(err)
		case <-time.After(time.Second):
		}
	}
	// hashicorp yamux's Close drops frames still queued (the last echo bytes, a FIN).
	// A ping queues behind them and its answer comes after the peer read them all.
	if !sess.IsClosed() {
		sess.Ping()
	}
	sess.Close()
	say("RESULT ok=%d failed=%d reverse=%d", ok, failed, reverse)
	if failed > 0 || ok != *streams || reverse < *expectReverse {
		os.Exit(1)
	}
}
