//! A stream's receive buffer: what the peer sent and the application has not read yet.
//!
//! Two kinds of bodies arrive. Large ones are read by the driver straight from TLS into
//! a buffer of their own ([`RecvBuf::push_chunk`]): the bytes are copied once, from
//! rustls's plaintext to here, and handed over without another copy. Small ones (and the
//! parts of large ones that came in the same read as a header) are copied into a
//! coalescing tail ([`RecvBuf::push_slice`]), so a peer sending one-byte frames makes
//! the buffer grow by one byte per frame, with no allocation per frame.
//!
//! Memory: a chunk is exactly as large as the bytes it carries (a chunk the driver read
//! in several pieces shares one allocation, no larger than the frame body the peer
//! announced); the tail's capacity is at most twice what it holds plus [`TAIL_MIN`].
//! Both are paid for by the window the peer was granted.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// The smallest allocation of the coalescing tail.
const TAIL_MIN: usize = 4 * 1024;

/// Received bytes in order: whole chunks first, then the coalescing tail.
#[derive(Debug, Default)]
pub(crate) struct RecvBuf {
    chunks: VecDeque<Bytes>,
    /// Bytes of `chunks` in all.
    chunked: usize,
    tail: BytesMut,
}

impl RecvBuf {
    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.chunked + self.tail.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated for what is held.
    pub(crate) fn capacity(&self) -> usize {
        self.chunked + self.tail.capacity()
    }

    /// Appends a copy of `bytes` to the tail.
    pub(crate) fn push_slice(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.tail.capacity() - self.tail.len() < bytes.len() {
            // Grow by doubling what is held, so appending one byte at a time stays linear,
            // into a new allocation of exactly that size (`BytesMut::reserve` may keep
            // the space already read and double it again).
            let want = (self.tail.len() + bytes.len())
                .max(2 * self.tail.len())
                .max(TAIL_MIN);
            let mut grown = BytesMut::with_capacity(want);
            grown.extend_from_slice(&self.tail);
            self.tail = grown;
        }
        self.tail.extend_from_slice(bytes);
    }

    /// Appends a chunk read straight from the connection, without copying it.
    pub(crate) fn push_chunk(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // What the tail holds came first; it becomes a chunk of its own, in order,
            // copied to its exact size (the tail holds small bodies only), and the
            // tail's allocation is kept only if it is small.
            let tail = Bytes::copy_from_slice(&self.tail);
            if self.tail.capacity() > TAIL_MIN {
                self.tail = BytesMut::new();
            } else {
                self.tail.clear();
            }
            self.chunked += tail.len();
            self.chunks.push_back(tail);
        }
        self.chunked += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Moves up to `dst.len()` bytes into `dst`, oldest first; returns how many.
    pub(crate) fn read(&mut self, dst: &mut [u8]) -> usize {
        let mut n = 0;
        while n < dst.len() {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = front.len().min(dst.len() - n);
            dst[n..n + k].copy_from_slice(&front[..k]);
            front.advance(k);
            self.chunked -= k;
            n += k;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        if n < dst.len() && !self.tail.is_empty() {
            let k = self.tail.len().min(dst.len() - n);
            dst[n..n + k].copy_from_slice(&self.tail[..k]);
            self.tail.advance(k);
            n += k;
        }
        if self.tail.is_empty() && self.tail.capacity() > TAIL_MIN {
            // Emptied: give back what a burst made it allocate.
            self.tail = BytesMut::new();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buf: &mut RecvBuf, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dst = vec![0u8; step];
        loop {
            let n = buf.read(&mut dst);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&dst[..n]);
        }
    }

    #[test]
    fn chunks_and_slices_come_out_in_order() {
        let mut buf = RecvBuf::default();
        let mut want = Vec::new();
        for i in 0..50u8 {
            let piece: Vec<u8> = (0..(i as usize * 37 % 300)).map(|k| k as u8 ^ i).collect();
            if i % 3 == 0 {
                buf.push_chunk(Bytes::from(piece.clone()));
            } else {
                buf.push_slice(&piece);
            }
            want.extend_from_slice(&piece);
            assert_eq!(buf.len(), want.len());
        }
        assert_eq!(drain(&mut buf, 7), want);
        assert!(buf.is_empty());
        assert!(
            buf.capacity() <= TAIL_MIN,
            "an emptied buffer keeps at most a small tail"
        );
    }

    #[test]
    fn one_byte_appends_allocate_in_proportion() {
        let mut buf = RecvBuf::default();
        for i in 0..100_000u32 {
            buf.push_slice(&[i as u8]);
        }
        assert_eq!(buf.len(), 100_000);
        assert!(
            buf.capacity() <= 2 * 100_000 + TAIL_MIN,
            "{}",
            buf.capacity()
        );
        let out = drain(&mut buf, 4096);
        assert!(out.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn interleaved_reads_and_writes_keep_order() {
        let mut buf = RecvBuf::default();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        let mut dst = [0u8; 13];
        for round in 0..2000u32 {
            let n = (round * 7919 % 97) as usize;
            let piece: Vec<u8> = (0..n)
                .map(|_| {
                    next_in += 1;
                    next_in as u8
                })
                .collect();
            if round % 5 == 0 {
                buf.push_chunk(Bytes::from(piece));
            } else {
                buf.push_slice(&piece);
            }
            let got = buf.read(&mut dst);
            for &b in &dst[..got] {
                next_out += 1;
                assert_eq!(b, next_out as u8);
            }
            assert_eq!(buf.len() as u32, next_in - next_out);
        }
    }
}
