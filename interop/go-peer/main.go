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
//	               [--watch-stdin=true]
//	go-peer client --connect H:P --ca CA [--cert C --key K] [--server-name localhost]
//	               --streams N --bytes B [--expect-reverse K] [--timeout 60s]
//
// Both: --alpn qymux (the protocol offered and required; --alpn= offers none
// and checks nothing), --stall-timeout 10s. TLS 1.2 at least. The server
// exits when its stdin reaches EOF (unless --watch-stdin=false); with --ca it
// requires and verifies client certificates.
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
// Output, server (stdout, one line each):
//
//	LISTENING <host:port>           once, when listening
//	HANDSHAKE-ERROR <err>           a TLS handshake (or ALPN check) failed
//	REVERSE ok=<n> failed=<m>       per session, when its --open streams are done
//	SESSION-END <reason>            per session, when it ended (after REVERSE)
//
// Output, client (stdout): RESULT ok=<n> failed=<m> reverse=<k>; exit status
// 0 on success, 1 on failure, 2 on a TLS handshake failure (with
// "ERROR handshake: <err>" on stdout and stderr). Other failures print
// "ERROR <what>: <err>". Stream failures print "STREAM-ERROR <id> <err>" to
// stderr.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
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

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	return cfg
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

// echo copies everything from the stream back to it until EOF, then closes
// it (FIN). It returns nil on success.
func echo(s *yamux.Stream) error {
	_, err := io.Copy(s, s)
	if err != nil {
		s.Close()
		return fmt.Errorf("echo: %w", err)
	}
	return s.Close()
}

// tracker follows the streams of one session, to check at the end that the
// peer closed (FIN) every stream we opened.
type tracker struct {
	sess *yamux.Session
	// activeEcho counts inbound streams being echoed: they are in the
	// session's stream table until our Close after the peer's FIN.
	activeEcho int64
}

// echoInbound echoes an accepted stream, keeping activeEcho up to date.
func (t *tracker) echoInbound(s *yamux.Stream) error {
	atomic.AddInt64(&t.activeEcho, 1)
	defer atomic.AddInt64(&t.activeEcho, -1)
	return echo(s)
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
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	open := fs.Int("open", 0, "streams to open to each client (verify-open)")
	size := fs.Int("bytes", 1<<20, "bytes per stream opened with --open")
	stall := fs.Duration("stall-timeout", 10*time.Second, "fail a stream whose echo stops (or whose FIN does not come) for this long")
	watchStdin := fs.Bool("watch-stdin", true, "exit when stdin reaches EOF")
	fs.Parse(args)
	if fs.NArg() != 0 {
		fail(1, "usage", fmt.Errorf("unexpected arguments %q", fs.Args()))
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
		go serveConn(conn, cfg, t.alpn, *open, *size, *stall)
	}
}

func serveConn(raw net.Conn, cfg *tls.Config, alpn string, open, size int, stall time.Duration) {
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

	sess, err := yamux.Server(conn, yamuxConfig())
	if err != nil {
		warn("ERROR yamux: %v", err)
		conn.Close()
		return
	}

	t := &tracker{sess: sess}
	var reverse sync.WaitGroup
	if open > 0 {
		reverse.Add(1)
		go func() {
			defer reverse.Done()
			ok, failed := openVerified(t, open, size, stall)
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
		go func() {
			if err := t.echoInbound(s); err != nil {
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
	connect := fs.String("connect", "", "host:port to dial")
	serverName := fs.String("server-name", "localhost", "name to verify the server certificate against (SNI)")
	streams := fs.Int("streams", 1, "verify-open streams to open")
	size := fs.Int("bytes", 1<<20, "bytes per verify-open stream")
	expectReverse := fs.Int("expect-reverse", 0, "streams the server opens that must be echoed before closing")
	timeout := fs.Duration("timeout", 60*time.Second, "fail if the whole run takes longer")
	stall := fs.Duration("stall-timeout", 10*time.Second, "fail a stream whose echo stops (or whose FIN does not come) for this long")
	fs.Parse(args)
	if fs.NArg() != 0 {
		fail(1, "usage", fmt.Errorf("unexpected arguments %q", fs.Args()))
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

	sess, err := yamux.Client(conn, yamuxConfig())
	if err != nil {
		fail(1, "yamux", err)
	}

	tr := &tracker{sess: sess}

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
			go func() {
				err := tr.echoInbound(s)
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
