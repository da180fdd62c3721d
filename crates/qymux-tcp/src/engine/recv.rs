//! A stream's receive buffer: what the peer sent and the application has not read yet.
//!
//! One contiguous buffer per stream. Large DATA bodies are read by the driver straight
//! from TLS into it: the engine lends the buffer out ([`RecvBuf::lend`]) with room for the
//! next part of the body, the driver reads into that room without holding the engine,
//! and hands it back ([`RecvBuf::restore`]). The bytes are copied once, from rustls's
//! plaintext to here. Small bodies (and parts of large ones that came in the same read
//! as a header) are copied in ([`RecvBuf::push_slice`]), so a peer sending one-byte
//! frames makes the buffer grow by one byte per frame, with no allocation per frame.
//!
//! The space the application has read is reused in place, so a stream carrying a bulk
//! transfer keeps one allocation instead of making one per frame (which, measured, cost
//! a third of the rate in page faults).
//!
//! Memory: the capacity is at most twice what the buffer held at its fullest plus what
//! was asked to be lent (at most one read's worth, and never more than the body has
//! left), or [`TAIL_MIN`]; an emptied buffer keeps its allocation until the connection
//! goes quiet ([`RecvBuf::trim`]). What it holds is paid for by the window the peer was
//! granted.

/// The smallest allocation of the buffer.
const TAIL_MIN: usize = 4 * 1024;

/// Received bytes in order: `data[head..tail]`. The whole of `data` is initialized (it
/// is zeroed once when allocated), so the driver can read TLS straight into its room
/// without zeroing it first on every read.
#[derive(Debug, Default)]
pub(crate) struct RecvBuf {
    data: Vec<u8>,
    head: usize,
    tail: usize,
    /// Bytes held while the buffer is lent to the driver.
    lent: Option<usize>,
}

/// A stream's receive buffer lent to the driver, with room after what it holds.
#[derive(Debug)]
pub struct Lent {
    data: Vec<u8>,
    head: usize,
    tail: usize,
    room: usize,
    added: usize,
}

impl Lent {
    /// The room to read into.
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.data[self.tail..self.tail + self.room]
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
    /// Bytes held (including those in a lent buffer).
    pub(crate) fn len(&self) -> usize {
        self.lent.unwrap_or(self.tail - self.head)
    }

    /// Bytes the application can read now (none while the buffer is lent).
    pub(crate) fn readable(&self) -> usize {
        match self.lent {
            Some(_) => 0,
            None => self.tail - self.head,
        }
    }

    /// Bytes allocated for what is held (a lent buffer counts as what it holds).
    pub(crate) fn capacity(&self) -> usize {
        match self.lent {
            Some(held) => held,
            None => self.data.len(),
        }
    }

    /// Makes room for `more` bytes after `tail`: moves what is held to the front when
    /// that makes enough room, else grows by at least doubling (so appending one byte at
    /// a time stays linear).
    fn make_room(&mut self, more: usize) {
        if self.data.len() - self.tail >= more {
            return;
        }
        let held = self.tail - self.head;
        if self.data.len() - held >= more && self.head >= held {
            self.data.copy_within(self.head..self.tail, 0);
        } else {
            let size = (held + more).max(2 * held).max(TAIL_MIN);
            let mut grown = vec![0u8; size];
            grown[..held].copy_from_slice(&self.data[self.head..self.tail]);
            self.data = grown;
        }
        self.head = 0;
        self.tail = held;
    }

    /// Appends a copy of `bytes`.
    pub(crate) fn push_slice(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        debug_assert!(self.lent.is_none(), "bytes pushed into a lent buffer");
        self.make_room(bytes.len());
        self.data[self.tail..self.tail + bytes.len()].copy_from_slice(bytes);
        self.tail += bytes.len();
    }

    /// Lends the buffer out with room for `more` bytes after what it holds; the
    /// application reads nothing from it until [`restore`](Self::restore).
    pub(crate) fn lend(&mut self, more: usize) -> Lent {
        debug_assert!(self.lent.is_none(), "a buffer lent twice");
        self.make_room(more);
        self.lent = Some(self.tail - self.head);
        Lent {
            data: std::mem::take(&mut self.data),
            head: self.head,
            tail: self.tail,
            room: more,
            added: 0,
        }
    }

    /// Takes back a lent buffer, with what was read into it.
    pub(crate) fn restore(&mut self, lent: Lent) {
        debug_assert!(self.lent.is_some(), "a buffer restored that was not lent");
        self.data = lent.data;
        self.head = lent.head;
        self.tail = lent.tail + lent.added;
        self.lent = None;
    }

    /// Moves up to `dst.len()` bytes into `dst`, oldest first; returns how many.
    pub(crate) fn read(&mut self, dst: &mut [u8]) -> usize {
        let k = self.readable().min(dst.len());
        dst[..k].copy_from_slice(&self.data[self.head..self.head + k]);
        self.head += k;
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
        k
    }

    /// Gives back the allocation of an emptied buffer. Not done on every read that
    /// empties it: while data flows that would free and fault in the same pages again
    /// and again; the driver calls this once the connection is quiet.
    pub(crate) fn trim(&mut self) {
        if self.tail == self.head && self.lent.is_none() {
            *self = RecvBuf::default();
        }
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

    /// What the driver does with a large body: borrow the buffer, read into its room.
    fn push_lent(buf: &mut RecvBuf, bytes: &[u8]) {
        let held = buf.len();
        let mut lent = buf.lend(bytes.len());
        assert_eq!(lent.room().len(), bytes.len());
        assert_eq!(buf.len(), held, "a lent buffer's bytes still count");
        assert_eq!(
            buf.readable(),
            0,
            "nothing is readable while the buffer is lent"
        );
        lent.room().copy_from_slice(bytes);
        lent.filled(bytes.len());
        buf.restore(lent);
    }

    #[test]
    fn lent_and_copied_bytes_come_out_in_order() {
        let mut buf = RecvBuf::default();
        let mut want = Vec::new();
        for i in 0..50u8 {
            let piece: Vec<u8> = (0..(i as usize * 37 % 300)).map(|k| k as u8 ^ i).collect();
            if i % 3 == 0 {
                push_lent(&mut buf, &piece);
            } else {
                buf.push_slice(&piece);
            }
            want.extend_from_slice(&piece);
            assert_eq!(buf.len(), want.len());
        }
        assert_eq!(drain(&mut buf, 7), want);
        assert_eq!(buf.len(), 0);
        buf.trim();
        assert_eq!(buf.capacity(), 0, "a trimmed empty buffer holds nothing");
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
    fn a_bulk_transfer_reuses_one_allocation() {
        let mut buf = RecvBuf::default();
        let piece = vec![7u8; 64 * 1024];
        let mut dst = vec![0u8; 48 * 1024];
        let mut first = None;
        for round in 0..1000 {
            push_lent(&mut buf, &piece);
            // The reader keeps up, though not in step with the writer.
            while buf.readable() > 16 * 1024 {
                buf.read(&mut dst);
            }
            assert!(buf.capacity() <= 2 * (buf.len() + piece.len()) + TAIL_MIN);
            if round == 10 {
                first = Some(buf.capacity());
            }
        }
        assert_eq!(
            Some(buf.capacity()),
            first,
            "the buffer settled on one size and kept it"
        );
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
                push_lent(&mut buf, &piece);
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
