// Command go-bench is the Go baseline of `cargo xtask bench`: Go crypto/tls
// (TLS over TCP, ALPN "qymux") + hashicorp yamux with its default config, the
// stack of the Go Qymux in TCP mode. Both ends are Go, so it measures Go
// alone; crates/qymux-bench drives it and computes the statistics.
//
// Build (GOPATH mode, Debian packages golang-go and
// golang-github-hashicorp-yamux-dev; crates/qymux-testsupport does this):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o go-bench ./interop/go-bench
//
// Modes:
//
//	go-bench server --listen 127.0.0.1:0 --cert C --key K
//	go-bench client --connect H:P --ca CA [--server-name localhost]
//	                --measure bulk|rtt|open-rtt|opens|streams
//	                [--bytes N] [--count N] [--warmup N] [--concurrency N] [--reps N]
//
// The server prints "LISTENING <addr>" and serves until its stdin closes. The
// client dials one session, runs the measure once after its warm-up, prints
// "SAMPLE <nanoseconds>" lines (one per round trip for rtt and open-rtt, one
// per run for the others) and "DONE", and exits 0; on any error or data mismatch it prints
// "ERROR <what>" and exits 1.
//
// The per-stream protocol is the one of crates/qymux-bench (src/proto.rs): the
// first byte of a stream the client opens selects what the server does.
//
//	'E'  echo: the server writes back everything, this byte included, until
//	     EOF, then closes.
//	'S'  sink: 7 more header bytes hold the length N (little-endian); the
//	     server reads N bytes (a multiple of 8), then answers with 16 bytes:
//	     N and the checksum of the data (both uint64 little-endian).
//
// Checksum: over the 64-bit little-endian words w[i] of the data,
// sum of w[i] * (2i + 1), wrapping.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// writeSize is the size of each Write of bulk data, the same as the Rust side.
const writeSize = 128 * 1024

func fail(what string, err error) {
	fmt.Fprintf(os.Stdout, "ERROR %s: %v\n", what, err)
	fmt.Fprintf(os.Stderr, "ERROR %s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-bench server|client [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		runServer(os.Args[2:])
	case "client":
		runClient(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: go-bench server|client [flags]")
		os.Exit(2)
	}
}

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	return cfg
}

// checksum adds the words of buf (whose first word has index first) to sum.
func checksum(sum uint64, first uint64, buf []byte) uint64 {
	w := 2*first + 1
	for i := 0; i+8 <= len(buf); i += 8 {
		sum += binary.LittleEndian.Uint64(buf[i:]) * w
		w += 2
	}
	return sum
}

func runServer(args []string) {
	fs := flag.NewFlagSet("go-bench server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	cert := fs.String("cert", "", "PEM certificate chain")
	key := fs.String("key", "", "PEM private key")
	fs.Parse(args)
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		fail("loading --cert/--key", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"qymux"},
		Certificates: []tls.Certificate{pair},
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("listen", err)
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("LISTENING %s\n", ln.Addr())
	for {
		raw, err := ln.Accept()
		if err != nil {
			fail("accept", err)
		}
		go serveConn(raw, cfg)
	}
}

func serveConn(raw net.Conn, cfg *tls.Config) {
	raw.(*net.TCPConn).SetNoDelay(true)
	conn := tls.Server(raw, cfg)
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return
	}
	sess, err := yamux.Server(conn, yamuxConfig())
	if err != nil {
		raw.Close()
		return
	}
	for {
		s, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go handle(s)
	}
}

func handle(s *yamux.Stream) {
	defer s.Close()
	var op [8]byte
	if _, err := io.ReadFull(s, op[:1]); err != nil {
		return
	}
	switch op[0] {
	case 'E':
		if _, err := s.Write(op[:1]); err != nil {
			return
		}
		io.Copy(s, s)
	case 'S':
		if _, err := io.ReadFull(s, op[1:]); err != nil {
			return
		}
		op[0] = 0
		n := binary.LittleEndian.Uint64(op[:]) >> 8
		// Sum whole words only; a partial word waits at the front of buf for
		// the rest of its bytes.
		buf := make([]byte, writeSize+8)
		var sum, summed, read uint64
		have := 0
		for read < n {
			want := n - read
			if want > writeSize {
				want = writeSize
			}
			m, err := s.Read(buf[have : have+int(want)])
			if m > 0 {
				read += uint64(m)
				total := have + m
				whole := total - total%8
				sum = checksum(sum, summed/8, buf[:whole])
				summed += uint64(whole)
				have = copy(buf, buf[whole:total])
			}
			if err != nil && read < n {
				return
			}
		}
		var reply [16]byte
		binary.LittleEndian.PutUint64(reply[:8], read)
		binary.LittleEndian.PutUint64(reply[8:], sum)
		s.Write(reply[:])
	}
}

type client struct {
	sess *yamux.Session
}

func runClient(args []string) {
	fs := flag.NewFlagSet("go-bench client", flag.ExitOnError)
	connect := fs.String("connect", "", "server address")
	ca := fs.String("ca", "", "PEM file with the CA that verifies the server")
	serverName := fs.String("server-name", "localhost", "name the server certificate must be valid for")
	measure := fs.String("measure", "bulk", "bulk|rtt|open-rtt|opens|streams")
	size := fs.Uint64("bytes", 64<<20, "bulk: bytes per run; streams: bytes per stream")
	count := fs.Int("count", 1000, "rtt/open-rtt: samples; opens: stream opens; streams: streams")
	warmup := fs.Int("warmup", 100, "untimed repetitions first (rtt/open-rtt: round trips; bulk/opens/streams: runs)")
	concurrency := fs.Int("concurrency", 64, "opens: streams in flight")
	reps := fs.Int("reps", 1, "bulk/opens/streams: timed runs, one SAMPLE each")
	fs.Parse(args)

	pem, err := os.ReadFile(*ca)
	if err != nil {
		fail("reading --ca", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("--ca", errors.New("no certificate found"))
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"qymux"},
		RootCAs:    pool,
		ServerName: *serverName,
	}
	raw, err := net.Dial("tcp", *connect)
	if err != nil {
		fail("connect", err)
	}
	raw.(*net.TCPConn).SetNoDelay(true)
	conn := tls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		fail("handshake", err)
	}
	sess, err := yamux.Client(conn, yamuxConfig())
	if err != nil {
		fail("yamux", err)
	}
	c := &client{sess: sess}

	switch *measure {
	case "bulk":
		data := make([]byte, writeSize)
		rand.Read(data)
		for i := 0; i < *warmup; i++ {
			if _, err := c.bulk(data, *size); err != nil {
				fail("bulk warm-up", err)
			}
		}
		for i := 0; i < *reps; i++ {
			d, err := c.bulk(data, *size)
			if err != nil {
				fail("bulk", err)
			}
			fmt.Printf("SAMPLE %d\n", d.Nanoseconds())
		}
	case "rtt":
		s, err := sess.OpenStream()
		if err != nil {
			fail("open", err)
		}
		samples, err := rtt(s, *warmup, *count)
		if err != nil {
			fail("rtt", err)
		}
		s.Close()
		for _, d := range samples {
			fmt.Printf("SAMPLE %d\n", d)
		}
	case "open-rtt":
		for i := 0; i < *warmup; i++ {
			if _, err := c.openRTT(uint64(i)); err != nil {
				fail("open-rtt warm-up", err)
			}
		}
		samples := make([]int64, 0, *count)
		for i := 0; i < *count; i++ {
			d, err := c.openRTT(uint64(i))
			if err != nil {
				fail("open-rtt", err)
			}
			samples = append(samples, d.Nanoseconds())
		}
		for _, d := range samples {
			fmt.Printf("SAMPLE %d\n", d)
		}
	case "opens":
		for i := 0; i < *warmup; i++ {
			if _, err := c.opens(*count, *concurrency); err != nil {
				fail("opens warm-up", err)
			}
		}
		for i := 0; i < *reps; i++ {
			d, err := c.opens(*count, *concurrency)
			if err != nil {
				fail("opens", err)
			}
			fmt.Printf("SAMPLE %d\n", d.Nanoseconds())
		}
	case "streams":
		data := make([]byte, writeSize)
		rand.Read(data)
		for i := 0; i < *warmup; i++ {
			if _, err := c.streams(data, *count, *size); err != nil {
				fail("streams warm-up", err)
			}
		}
		for i := 0; i < *reps; i++ {
			d, err := c.streams(data, *count, *size)
			if err != nil {
				fail("streams", err)
			}
			fmt.Printf("SAMPLE %d\n", d.Nanoseconds())
		}
	default:
		fail("usage", fmt.Errorf("unknown --measure %q", *measure))
	}
	fmt.Println("DONE")
	sess.Close()
}

// sink writes the header and size bytes of data (repeated) to s and checks the
// server's answer; it returns when the answer is in.
func sink(s *yamux.Stream, data []byte, size uint64) error {
	if size%8 != 0 || len(data)%8 != 0 {
		return errors.New("sizes must be multiples of 8")
	}
	var header [8]byte
	binary.LittleEndian.PutUint64(header[:], size<<8)
	header[0] = 'S'
	if _, err := s.Write(header[:]); err != nil {
		return err
	}
	// The checksum of data at word offset first is a + 2*first*b.
	a := checksum(0, 0, data)
	var b uint64
	for i := 0; i+8 <= len(data); i += 8 {
		b += binary.LittleEndian.Uint64(data[i:])
	}
	var want, sent uint64
	for sent < size {
		n := size - sent
		if n > uint64(len(data)) {
			n = uint64(len(data))
		}
		chunk := data[:n]
		if n == uint64(len(data)) {
			want += a + 2*(sent/8)*b
		} else {
			want = checksum(want, sent/8, chunk)
		}
		if _, err := s.Write(chunk); err != nil {
			return err
		}
		sent += n
	}
	var reply [16]byte
	if _, err := io.ReadFull(s, reply[:]); err != nil {
		return fmt.Errorf("reading the sink's answer: %w", err)
	}
	gotN := binary.LittleEndian.Uint64(reply[:8])
	gotSum := binary.LittleEndian.Uint64(reply[8:])
	if gotN != size || gotSum != want {
		return fmt.Errorf("sink answered %d bytes, checksum %x; sent %d, checksum %x", gotN, gotSum, size, want)
	}
	return nil
}

func (c *client) bulk(data []byte, size uint64) (time.Duration, error) {
	s, err := c.sess.OpenStream()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	start := time.Now()
	err = sink(s, data, size)
	return time.Since(start), err
}

// rtt sends 64-byte messages ('E' first, then a counter) and reads each echo.
func rtt(s *yamux.Stream, warmup, count int) ([]int64, error) {
	msg := make([]byte, 64)
	got := make([]byte, 64)
	out := make([]int64, 0, count)
	for i := 0; i < warmup+count; i++ {
		fill(msg, uint64(i))
		start := time.Now()
		if _, err := s.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s, got); err != nil {
			return nil, err
		}
		d := time.Since(start)
		if string(got) != string(msg) {
			return nil, fmt.Errorf("echo %d differs", i)
		}
		if i >= warmup {
			out = append(out, d.Nanoseconds())
		}
	}
	return out, nil
}

// fill makes a 64-byte echo message: 'E', then seq repeated.
func fill(msg []byte, seq uint64) {
	msg[0] = 'E'
	for i := 1; i+8 <= len(msg); i += 8 {
		binary.LittleEndian.PutUint64(msg[i:], seq+uint64(i))
	}
	msg[len(msg)-7] = byte(seq)
}

// openRTT opens a stream, does one 64-byte round trip (timed) and closes it.
func (c *client) openRTT(seq uint64) (time.Duration, error) {
	msg := make([]byte, 64)
	got := make([]byte, 64)
	fill(msg, seq)
	start := time.Now()
	s, err := c.sess.OpenStream()
	if err != nil {
		return 0, err
	}
	if _, err := s.Write(msg); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(s, got); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if string(got) != string(msg) {
		return 0, errors.New("echo differs")
	}
	s.Close()
	io.Copy(io.Discard, s)
	return d, nil
}

// opens runs count open + round trip + close cycles, concurrency at a time.
func (c *client) opens(count, concurrency int) (time.Duration, error) {
	var next int64 = -1
	var wg sync.WaitGroup
	errs := make(chan error, concurrency)
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(count) {
					return
				}
				if _, err := c.openRTT(uint64(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
		return d, nil
	}
}

// streams opens n streams, then sinks size bytes on each, all at once.
func (c *client) streams(data []byte, n int, size uint64) (time.Duration, error) {
	opened := make([]*yamux.Stream, 0, n)
	for i := 0; i < n; i++ {
		s, err := c.sess.OpenStream()
		if err != nil {
			return 0, err
		}
		opened = append(opened, s)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for _, s := range opened {
		wg.Add(1)
		go func(s *yamux.Stream) {
			defer wg.Done()
			if err := sink(s, data, size); err != nil {
				errs <- err
			}
			s.Close()
		}(s)
	}
	wg.Wait()
	d := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
		return d, nil
	}
}
