//! A stream's receive buffer: what the peer sent and the application has not read yet.
//!
//! The bytes sit in fixed-size chunks ([`CHUNK`]) that come from, and go back to, one
//! pool per connection ([`Pool`]). Large DATA bodies are read by the driver straight from
//! TLS into a chunk: the engine lends it out ([`RecvBuf::lend`]) with room for the next
//! part of the body, the driver reads into that room without holding the engine, and
//! hands it back ([`RecvBuf::restore`]). The bytes are copied once, from rustls's
//! plaintext to the chunk. Small bodies (and parts of large ones that came in the same
//! read as a header) are copied in ([`RecvBuf::push_slice`]) after what the last chunk
//! holds, so a peer sending one-byte frames fills chunks one byte per frame, with no
//! allocation per frame.
//!
//! Why chunks and a pool, not one buffer per stream: a chunk the reader has emptied goes
//! back to the pool and is the next one lent out, so a bulk transfer cycles through a
//! few chunks that stay in the CPU's cache, and streams share them. One contiguous buffer
//! per stream grew to the stream's window whenever the reader fell behind (up to 16 MiB,
//! zeroed and faulted in page by page) and then wandered through all of it; measured on
//! a bulk transfer, that doubled the page faults and made the copy into the buffer the
//! largest cost after the cipher.
//!
//! Memory: a chunk is filled to its end, except that the driver starts a fresh one when
//! the last has less than [`LEND_MIN`] of room left for a large body; with the chunk
//! partly read at the front and the one being filled, a stream holds
//! `capacity <= len + len / 3 + 2 * CHUNK`. An emptied stream holds no chunk, and a stream
//! that receives a small body while the pool is empty starts with a 4 KiB chunk
//! ([`SMALL_CHUNK`]): one byte on each of many streams costs 4 KiB per stream.
//! The pool keeps at most [`POOL_MAX`] chunks of each size, and none once the connection has gone
//! quiet ([`Pool::trim`]). What the streams hold is paid for by the windows the peer was
//! granted.

use std::collections::VecDeque;

/// The size of the pool's chunks.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A stream that holds nothing and receives a small body gets a chunk this small when the
/// pool has none to spare, so a peer that sends a byte on each of many streams makes each
/// hold 4 KiB, not 64.
const SMALL_CHUNK: usize = 4 * 1024;

/// Free chunks a connection's pool keeps at most (4 MiB).
pub(crate) const POOL_MAX: usize = 64;

/// A lent chunk whose room is at least this big is lent again rather than a fresh one,
/// when the body needs more than its room.
const LEND_MIN: usize = 16 * 1024;

/// Free chunks, the most recently used on top. Every chunk is `CHUNK` bytes, zeroed once
/// when allocated, so the driver reads TLS straight into one without zeroing it again.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Box<[u8]>>,
    /// Free small chunks, kept so that a stream carrying small messages does not
    /// allocate one per message.
    small: Vec<Box<[u8]>>,
}

impl Pool {
    fn get(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice())
    }

    /// A chunk for `len` bytes going to a stream that holds none: a pooled one if there
    /// is one, else a small one when `len` is small.
    fn get_first(&mut self, len: usize) -> Box<[u8]> {
        if len < SMALL_CHUNK && self.free.is_empty() {
            return self
                .small
                .pop()
                .unwrap_or_else(|| vec![0u8; SMALL_CHUNK].into_boxed_slice());
        }
        self.get()
    }

    fn put(&mut self, chunk: Box<[u8]>) {
        if chunk.len() == CHUNK && self.free.len() < POOL_MAX {
            self.free.push(chunk);
        } else if chunk.len() == SMALL_CHUNK && self.small.len() < POOL_MAX {
            self.small.push(chunk);
        }
    }

    /// Frees every chunk the pool keeps.
    pub(crate) fn trim(&mut self) {
        self.free = Vec::new();
        self.small = Vec::new();
    }

    /// Bytes the pool keeps allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.free.len() * CHUNK + self.small.len() * SMALL_CHUNK
    }
}

/// Bytes `data[start..end]` of one chunk.
#[derive(Debug)]
struct Chunk {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn room(&self) -> usize {
        self.data.len() - self.end
    }
}

/// Received bytes in order, in chunks.
#[derive(Debug, Default)]
pub(crate) struct RecvBuf {
    chunks: VecDeque<Chunk>,
    /// Bytes in `chunks`.
    readable: usize,
    /// Bytes held by the chunk lent to the driver, if one is.
    lent: Option<usize>,
    /// The size of the lent chunk (0 when none is lent).
    lent_capacity: usize,
}

/// A chunk lent to the driver, with room after what it holds.
#[derive(Debug)]
pub struct Lent {
    chunk: Chunk,
    room: usize,
    added: usize,
}

impl Lent {
    /// The room to read into.
    pub fn room(&mut self) -> &mut [u8] {
        let end = self.chunk.end;
        &mut self.chunk.data[end..end + self.room]
    }

    /// Records that the first `n` bytes of [`room`](Self::room) were filled.
    pub fn filled(&mut self, n: usize) {
        self.added = n.min(self.room);
    }

    /// Bytes recorded as filled.
    pub fn added(&self) -> usize {
        self.added
    }
}

impl RecvBuf {
    /// Bytes held (including those in a lent chunk).
    pub(crate) fn len(&self) -> usize {
        self.readable + self.lent.unwrap_or(0)
    }

    /// Bytes the application can read now: all but those of a lent chunk (which come
    /// after the others).
    pub(crate) fn readable(&self) -> usize {
        self.readable
    }

    /// Bytes allocated for what is held (a lent chunk counts).
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.data.len()).sum::<usize>() + self.lent_capacity
    }

    /// Appends a copy of `bytes`, after what the last chunk holds.
    pub(crate) fn push_slice(&mut self, mut bytes: &[u8], pool: &mut Pool) {
        debug_assert!(self.lent.is_none(), "bytes pushed past a lent chunk");
        while !bytes.is_empty() {
            if self.chunks.back().is_none_or(|c| c.room() == 0) {
                let data = if self.chunks.is_empty() {
                    pool.get_first(bytes.len())
                } else {
                    pool.get()
                };
                self.chunks.push_back(Chunk {
                    data,
                    start: 0,
                    end: 0,
                });
            }
            let last = self
                .chunks
                .back_mut()
                .expect("a chunk with room: pushed above");
            let k = last.room().min(bytes.len());
            last.data[last.end..last.end + k].copy_from_slice(&bytes[..k]);
            last.end += k;
            self.readable += k;
            bytes = &bytes[k..];
        }
    }

    /// Lends a chunk out with room for up to `more` bytes (at least one) after what the
    /// buffer holds: the last chunk if it has room for all of them or [`LEND_MIN`], else a
    /// fresh one from `pool`. The application reads nothing from that chunk until
    /// [`restore`](Self::restore).
    pub(crate) fn lend(&mut self, more: usize, pool: &mut Pool) -> Lent {
        debug_assert!(self.lent.is_none(), "a buffer lent twice");
        let reuse = self
            .chunks
            .back()
            .is_some_and(|c| c.room() >= more.clamp(1, LEND_MIN));
        let chunk = if reuse {
            let c = self.chunks.pop_back().expect("checked above");
            self.readable -= c.len();
            c
        } else {
            Chunk {
                data: pool.get(),
                start: 0,
                end: 0,
            }
        };
        self.lent = Some(chunk.len());
        self.lent_capacity = chunk.data.len();
        let room = more.min(chunk.room());
        Lent {
            chunk,
            room,
            added: 0,
        }
    }

    /// Takes back a lent chunk, with what was read into it.
    pub(crate) fn restore(&mut self, mut lent: Lent, pool: &mut Pool) {
        debug_assert!(self.lent.is_some(), "a buffer restored that was not lent");
        self.lent = None;
        self.lent_capacity = 0;
        lent.chunk.end += lent.added;
        if lent.chunk.len() == 0 {
            pool.put(lent.chunk.data);
            return;
        }
        self.readable += lent.chunk.len();
        self.chunks.push_back(lent.chunk);
    }

    /// Moves up to `dst.len()` bytes into `dst`, oldest first; returns how many. Emptied
    /// chunks go back to `pool`.
    pub(crate) fn read(&mut self, dst: &mut [u8], pool: &mut Pool) -> usize {
        let mut n = 0;
        while n < dst.len() {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = front.len().min(dst.len() - n);
            dst[n..n + k].copy_from_slice(&front.data[front.start..front.start + k]);
            front.start += k;
            n += k;
            if front.len() == 0 {
                let chunk = self.chunks.pop_front().expect("the front chunk");
                pool.put(chunk.data);
            }
        }
        self.readable -= n;
        n
    }

    /// Drops what is held (a reset stream), giving the chunks back to `pool`. A lent
    /// chunk is given back when it is restored.
    pub(crate) fn clear(&mut self, pool: &mut Pool) {
        for chunk in self.chunks.drain(..) {
            pool.put(chunk.data);
        }
        self.readable = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buf: &mut RecvBuf, pool: &mut Pool, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dst = vec![0u8; step];
        loop {
            let n = buf.read(&mut dst, pool);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&dst[..n]);
        }
    }

    /// What the driver does with a large body: borrow a chunk, read into its room (as
    /// often as the body needs).
    fn push_lent(buf: &mut RecvBuf, pool: &mut Pool, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let held = buf.len();
            let readable = buf.readable();
            let mut lent = buf.lend(bytes.len(), pool);
            let room = lent.room();
            assert!(!room.is_empty() && room.len() <= bytes.len());
            let k = room.len();
            assert_eq!(buf.len(), held, "a lent chunk's bytes still count");
            assert!(
                buf.readable() <= readable,
                "a lent chunk's bytes are not readable"
            );
            lent.room().copy_from_slice(&bytes[..k]);
            lent.filled(k);
            buf.restore(lent, pool);
            bytes = &bytes[k..];
        }
    }

    #[test]
    fn lent_and_copied_bytes_come_out_in_order() {
        let mut buf = RecvBuf::default();
        let mut pool = Pool::default();
        let mut want = Vec::new();
        for i in 0..200u32 {
            let piece: Vec<u8> = (0..(i as usize * 3701 % 150_000))
                .map(|k| k as u8 ^ i as u8)
                .collect();
            if i % 3 == 0 {
                push_lent(&mut buf, &mut pool, &piece);
            } else {
                buf.push_slice(&piece, &mut pool);
            }
            want.extend_from_slice(&piece);
            assert_eq!(buf.len(), want.len());
            assert!(buf.capacity() <= buf.len() + buf.len() / 3 + 2 * CHUNK);
        }
        assert_eq!(drain(&mut buf, &mut pool, 7777), want);
        assert_eq!(buf.len(), 0);
        assert_eq!(buf.capacity(), 0, "an emptied buffer holds no chunk");
        assert!(pool.capacity() <= POOL_MAX * (CHUNK + SMALL_CHUNK));
        pool.trim();
        assert_eq!(pool.capacity(), 0);
    }

    #[test]
    fn one_byte_appends_allocate_in_proportion() {
        let mut buf = RecvBuf::default();
        let mut pool = Pool::default();
        for i in 0..100_000u32 {
            buf.push_slice(&[i as u8], &mut pool);
        }
        assert_eq!(buf.len(), 100_000);
        assert!(buf.capacity() <= 100_000 + CHUNK, "{}", buf.capacity());
        let out = drain(&mut buf, &mut pool, 4096);
        assert!(out.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn a_bulk_transfer_cycles_through_a_few_chunks() {
        let mut buf = RecvBuf::default();
        let mut pool = Pool::default();
        let piece = vec![7u8; 64 * 1024];
        let mut dst = vec![0u8; 48 * 1024];
        for _ in 0..1000 {
            push_lent(&mut buf, &mut pool, &piece);
            // The reader keeps up, though not in step with the writer.
            while buf.readable() > 16 * 1024 {
                buf.read(&mut dst, &mut pool);
            }
            assert!(
                buf.capacity() + pool.capacity() <= 3 * CHUNK,
                "{} held in chunks, {} pooled",
                buf.capacity(),
                pool.capacity()
            );
        }
    }

    #[test]
    fn a_lent_chunk_holds_back_only_its_own_bytes() {
        let mut buf = RecvBuf::default();
        let mut pool = Pool::default();
        buf.push_slice(&[1u8; CHUNK], &mut pool);
        buf.push_slice(&[2u8; 10], &mut pool);
        // The last chunk has room: it is lent, and the first stays readable.
        let mut lent = buf.lend(100, &mut pool);
        assert_eq!(buf.readable(), CHUNK);
        assert_eq!(buf.len(), CHUNK + 10);
        lent.room()[..5].copy_from_slice(&[3u8; 5]);
        lent.filled(5);
        let mut dst = vec![0u8; CHUNK + 100];
        assert_eq!(buf.read(&mut dst, &mut pool), CHUNK);
        buf.restore(lent, &mut pool);
        assert_eq!(buf.read(&mut dst, &mut pool), 15);
        assert_eq!(&dst[..15], &[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn a_byte_on_a_fresh_stream_takes_a_small_chunk() {
        let mut pool = Pool::default();
        let mut bufs: Vec<RecvBuf> = (0..100).map(|_| RecvBuf::default()).collect();
        for buf in &mut bufs {
            buf.push_slice(&[1], &mut pool);
        }
        let held: usize = bufs.iter().map(RecvBuf::capacity).sum();
        assert_eq!(held, 100 * SMALL_CHUNK);
        // More than the small chunk holds continues in pool-sized chunks, in order.
        let mut buf = RecvBuf::default();
        let data: Vec<u8> = (0..3 * SMALL_CHUNK).map(|i| i as u8).collect();
        for b in &data {
            buf.push_slice(std::slice::from_ref(b), &mut pool);
        }
        assert_eq!(buf.capacity(), SMALL_CHUNK + CHUNK);
        assert_eq!(drain(&mut buf, &mut pool, 1000), data);
        // Both kinds go back to the pool.
        assert_eq!(pool.capacity(), CHUNK + SMALL_CHUNK);
    }

    #[test]
    fn clear_gives_the_chunks_back() {
        let mut buf = RecvBuf::default();
        let mut pool = Pool::default();
        buf.push_slice(&vec![9u8; 3 * CHUNK + 1], &mut pool);
        assert_eq!(buf.capacity(), 4 * CHUNK);
        buf.clear(&mut pool);
        assert_eq!((buf.len(), buf.capacity()), (0, 0));
        assert_eq!(pool.capacity(), 4 * CHUNK);
    }

    #[test]
    fn interleaved_reads_and_writes_keep_order() {
        let mut buf = RecvBuf::default();
        let mut pool = Pool::default();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        let mut dst = [0u8; 13];
        for round in 0..20_000u32 {
            let n = (round * 7919 % 97) as usize;
            let piece: Vec<u8> = (0..n)
                .map(|_| {
                    next_in += 1;
                    next_in as u8
                })
                .collect();
            if round % 5 == 0 {
                push_lent(&mut buf, &mut pool, &piece);
            } else {
                buf.push_slice(&piece, &mut pool);
            }
            let got = buf.read(&mut dst, &mut pool);
            for &b in &dst[..got] {
                next_out += 1;
                assert_eq!(b, next_out as u8);
            }
            assert_eq!(buf.len() as u32, next_in - next_out);
        }
    }
}
