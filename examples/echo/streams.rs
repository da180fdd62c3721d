//! What goes over a stream: the echo, and the checked exchange of random bytes.

use anyhow::Context as _;
use qymux::BoxStream;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Random data is generated (and regenerated for checking) in chunks of this size.
const CHUNK: usize = 64 * 1024;

/// Copies everything the peer sends back to it, then finishes our side. Returns the
/// number of bytes echoed.
pub(crate) async fn echo(stream: BoxStream) -> anyhow::Result<u64> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let n = tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await?;
    Ok(n)
}

/// Writes `len` pseudo-random bytes on `stream` and finishes it, while reading the echo
/// and checking it byte for byte. `first_echo` runs when the first echoed byte arrives.
pub(crate) async fn exchange(
    stream: BoxStream,
    len: u64,
    first_echo: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let seed = rand::random::<u64>();
    let (mut reader, mut writer) = tokio::io::split(stream);

    let write = async move {
        let mut data = Data::new(seed, len);
        while let Some(chunk) = data.next_chunk() {
            writer.write_all(chunk).await.context("writing")?;
        }
        writer.shutdown().await.context("finishing the stream")?;
        anyhow::Ok(())
    };

    let read = async move {
        let mut first_echo = Some(first_echo);
        let mut expected = Data::new(seed, len);
        let mut pending: &[u8] = &[];
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            let n = reader.read(&mut buf).await.context("reading the echo")?;
            if n == 0 {
                anyhow::ensure!(offset == len, "echo ended after {offset} of {len} bytes");
                return Ok(());
            }
            if let Some(f) = first_echo.take() {
                f();
            }
            let mut got = &buf[..n];
            while !got.is_empty() {
                if pending.is_empty() {
                    pending = match expected.next_chunk() {
                        Some(chunk) => chunk,
                        None => anyhow::bail!("echo longer than the {len} bytes sent"),
                    };
                }
                let take = got.len().min(pending.len());
                if got[..take] != pending[..take] {
                    let at = got[..take]
                        .iter()
                        .zip(pending)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    anyhow::bail!("echo differs at byte {}", offset + at as u64);
                }
                offset += take as u64;
                got = &got[take..];
                pending = &pending[take..];
            }
        }
    };

    tokio::try_join!(write, read)?;
    Ok(())
}

/// `len` pseudo-random bytes from `seed`, produced in chunks of [`CHUNK`] (the same
/// chunking on both ends, so the writer and the checker see the same bytes).
#[derive(Debug)]
struct Data {
    rng: SmallRng,
    left: u64,
    buf: Vec<u8>,
}

impl Data {
    fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            left: len,
            buf: vec![0; CHUNK],
        }
    }

    fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.left == 0 {
            return None;
        }
        let n = usize::try_from(self.left).map_or(CHUNK, |left| left.min(CHUNK));
        self.left -= n as u64;
        self.rng.fill_bytes(&mut self.buf[..n]);
        Some(&self.buf[..n])
    }
}
