//! The per-stream protocol every bench server speaks (the Go one too, in
//! `interop/go-bench`), and the data it moves.
//!
//! The first byte of a stream the client opens says what the server does:
//!
//! - `E`, echo: the server writes back everything, that byte included, until EOF, then
//!   finishes its side. A 64-byte message starting with `E` comes back as it was sent.
//! - `S`, sink: 7 more header bytes hold a length N (little-endian, a multiple of 8); the
//!   server reads N bytes and answers with 16 bytes, N and the [`checksum`] of the data
//!   (both `u64` little-endian), then finishes its side.
//!
//! The checksum depends on every byte and on its position (a lost, repeated or reordered
//! chunk changes it), and costs about the same in Rust and in Go.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of each write of bulk data, on every side.
pub(crate) const WRITE_SIZE: usize = 128 * 1024;
/// Size of a request/response message.
pub(crate) const MSG: usize = 64;

/// Adds to `sum` the checksum of the whole 64-bit words of `buf`, the first of which has
/// index `first_word` in the stream: the sum of `w[i] * (2i + 1)`, wrapping.
pub(crate) fn checksum(mut sum: u64, first_word: u64, buf: &[u8]) -> u64 {
    let mut weight = first_word.wrapping_mul(2).wrapping_add(1);
    for word in buf.chunks_exact(8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        sum = sum.wrapping_add(u64::from_le_bytes(bytes).wrapping_mul(weight));
        weight = weight.wrapping_add(2);
    }
    sum
}

/// [`WRITE_SIZE`] bytes of splitmix64 output: the bulk data, sent over and over.
pub(crate) struct Payload {
    pub(crate) data: Vec<u8>,
    /// `checksum(0, 0, data)`.
    weighted: u64,
    /// The plain wrapping sum of the words of `data`.
    plain: u64,
}

impl Payload {
    pub(crate) fn new() -> Self {
        let mut state = 0x5eed_u64;
        let mut data = Vec::with_capacity(WRITE_SIZE);
        while data.len() < WRITE_SIZE {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let weighted = checksum(0, 0, &data);
        let plain = data.chunks_exact(8).fold(0u64, |acc, w| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(w);
            acc.wrapping_add(u64::from_le_bytes(bytes))
        });
        Self {
            data,
            weighted,
            plain,
        }
    }

    /// The checksum contribution of the whole payload sent at word offset `first`:
    /// `sum w[j] (2 (first + j) + 1) = weighted + 2 first plain`.
    fn at(&self, first: u64) -> u64 {
        self.weighted
            .wrapping_add(first.wrapping_mul(2).wrapping_mul(self.plain))
    }
}

/// Sends `size` bytes (a multiple of 8) of the payload through a sink on `io`, and checks
/// the server's answer. Returns once the answer is in.
pub(crate) async fn sink<S>(io: &mut S, payload: &Payload, size: u64) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if !size.is_multiple_of(8) || size >= 1 << 56 {
        return Err(io::Error::other(
            "sink size must be a multiple of 8 below 2^56",
        ));
    }
    let mut header = (size << 8).to_le_bytes();
    header[0] = b'S';
    io.write_all(&header).await?;
    let mut sent = 0u64;
    let mut want = 0u64;
    while sent < size {
        let n = (size - sent).min(WRITE_SIZE as u64) as usize;
        let chunk = &payload.data[..n];
        want = if n == WRITE_SIZE {
            want.wrapping_add(payload.at(sent / 8))
        } else {
            checksum(want, sent / 8, chunk)
        };
        io.write_all(chunk).await?;
        sent += n as u64;
    }
    io.flush().await?;
    let mut reply = [0u8; 16];
    io.read_exact(&mut reply).await?;
    let (count, sum) = reply.split_at(8);
    let count = u64::from_le_bytes(count.try_into().map_err(io::Error::other)?);
    let sum = u64::from_le_bytes(sum.try_into().map_err(io::Error::other)?);
    if count != size || sum != want {
        return Err(io::Error::other(format!(
            "the sink counted {count} bytes with checksum {sum:#x}; sent {size} with checksum {want:#x}"
        )));
    }
    Ok(())
}

/// A 64-byte echo request: `E`, then bytes that depend on `seq`.
pub(crate) fn message(seq: u64) -> [u8; MSG] {
    let mut msg = [0u8; MSG];
    for (i, chunk) in msg.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&seq.wrapping_mul(31).wrapping_add(i as u64).to_le_bytes());
    }
    msg[0] = b'E';
    msg
}

/// One request/response: writes `msg`, reads its echo and checks it.
pub(crate) async fn round_trip<S>(io: &mut S, msg: &[u8; MSG]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    io.write_all(msg).await?;
    io.flush().await?;
    let mut got = [0u8; MSG];
    io.read_exact(&mut got).await?;
    if &got != msg {
        return Err(io::Error::other("the echo differs from the request"));
    }
    Ok(())
}

/// Finishes our side and reads to the server's EOF (the server finishes after ours).
pub(crate) async fn finish<S>(io: &mut S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    io.shutdown().await?;
    let mut rest = [0u8; 64];
    match io.read(&mut rest).await? {
        0 => Ok(()),
        _ => Err(io::Error::other("unexpected bytes after the last reply")),
    }
}

/// The server side of one stream.
pub(crate) async fn serve<S>(mut io: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut op = [0u8; 8];
    if io.read(&mut op[..1]).await? == 0 {
        return Ok(());
    }
    match op[0] {
        b'E' => {
            io.write_all(&op[..1]).await?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await?;
                io.flush().await?;
            }
        }
        b'S' => {
            io.read_exact(&mut op[1..]).await?;
            op[0] = 0;
            let size = u64::from_le_bytes(op) >> 8;
            // Whole words only: a partial word waits at the front of `buf`.
            let mut buf = vec![0u8; WRITE_SIZE + 8];
            let (mut sum, mut summed, mut read, mut have) = (0u64, 0u64, 0u64, 0usize);
            while read < size {
                let want = (size - read).min(WRITE_SIZE as u64) as usize;
                let n = io.read(&mut buf[have..have + want]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "sink ended early",
                    ));
                }
                read += n as u64;
                let total = have + n;
                let whole = total - total % 8;
                sum = checksum(sum, summed / 8, &buf[..whole]);
                summed += whole as u64;
                buf.copy_within(whole..total, 0);
                have = total - whole;
            }
            let mut reply = [0u8; 16];
            reply[..8].copy_from_slice(&read.to_le_bytes());
            reply[8..].copy_from_slice(&sum.to_le_bytes());
            io.write_all(&reply).await?;
        }
        other => {
            return Err(io::Error::other(format!("unknown stream kind {other:#x}")));
        }
    }
    io.shutdown().await?;
    // Wait for the client's end too, so a transport that resets streams dropped before
    // the peer finished sees a clean close.
    let mut rest = [0u8; 64];
    while io.read(&mut rest).await? != 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sums_match_the_direct_checksum() {
        let payload = Payload::new();
        let mut twice = payload.data.clone();
        twice.extend_from_slice(&payload.data);
        let direct = checksum(0, 0, &twice);
        let words = (WRITE_SIZE / 8) as u64;
        assert_eq!(payload.at(0).wrapping_add(payload.at(words)), direct);
    }

    #[test]
    fn checksum_sees_order() {
        let a = [1u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        let b = [2u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_ne!(checksum(0, 0, &a), checksum(0, 0, &b));
    }

    #[tokio::test]
    async fn sink_and_echo_over_a_pipe() {
        let payload = Payload::new();
        let (mut client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(server));
        sink(&mut client, &payload, (WRITE_SIZE * 2 + 24) as u64)
            .await
            .unwrap();
        finish(&mut client).await.unwrap();
        server.await.unwrap().unwrap();

        let (mut client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(server));
        for seq in 0..10 {
            round_trip(&mut client, &message(seq)).await.unwrap();
        }
        finish(&mut client).await.unwrap();
        server.await.unwrap().unwrap();
    }
}
