//! Happy Eyeballs (RFC 8305): connection attempts to several resolved addresses,
//! staggered, first success wins.
//!
//! A host name often resolves to several addresses, IPv6 and IPv4. Trying them one after
//! another under one deadline means an address that silently drops packets (a broken
//! IPv6 route, a firewall) eats the whole deadline, and the address that works is never
//! tried. [`race`] starts the first attempt at once and each next one when the previous
//! has failed or [`ATTEMPT_DELAY`] has passed without an answer, alternating address
//! families; the first connection made wins and the attempts still running are dropped.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// The wait before the next attempt starts while earlier ones have not answered
/// (RFC 8305 section 5 recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Orders addresses as RFC 8305 section 4 says: families interleaved, starting with the
/// family of the first address, each family's order kept.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_is_v6 = first.is_ipv6();
    let (mut preferred, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    let (mut p, mut o) = (preferred.drain(..), other.drain(..));
    loop {
        match (p.next(), o.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Races `attempt` over `addrs` (in [`interleave`]d order), starting one attempt, then
/// the next whenever the running ones have all failed or `delay` has passed since the
/// last start. Returns the first success with its address; when every attempt failed,
/// the last error (an empty list fails with [`io::ErrorKind::NotFound`]). Attempts still
/// running when one succeeds are dropped, so `attempt` must be cancel-safe (a
/// `TcpStream::connect` is).
///
/// It puts no bound on the whole: give each attempt its own deadline inside `attempt`
/// (its timing out is a failure, which starts the next at once), or wrap the race in the
/// caller's connect timeout. An attempt that must end the whole race (the server
/// answered and refused us: another address of it would say the same) returns that
/// outcome as its success value.
pub async fn race<T, E, F, Fut>(
    addrs: Vec<SocketAddr>,
    delay: Duration,
    mut attempt: F,
) -> Result<(T, SocketAddr), E>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<io::Error> + std::fmt::Display,
{
    let mut pending = interleave(addrs).into_iter();
    let mut running = FuturesUnordered::new();
    let mut last_error = None;
    loop {
        if running.is_empty() {
            match pending.next() {
                Some(addr) => {
                    running.push(tagged(addr, attempt(addr)));
                }
                None => {
                    return Err(last_error.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "no address resolved").into()
                    }));
                }
            }
        }
        let next_start = tokio::time::sleep(delay);
        tokio::pin!(next_start);
        let more = !pending.as_slice().is_empty();
        tokio::select! {
            Some((addr, result)) = running.next() => match result {
                Ok(value) => return Ok((value, addr)),
                Err(e) => {
                    tracing::debug!(%addr, "connection attempt failed: {e}");
                    last_error = Some(e);
                    // A failure starts the next attempt at once (next turn of the loop
                    // if none is running; below otherwise).
                    if !running.is_empty()
                        && let Some(addr) = pending.next()
                    {
                        running.push(tagged(addr, attempt(addr)));
                    }
                }
            },
            () = &mut next_start, if more => {
                if let Some(addr) = pending.next() {
                    tracing::debug!(%addr, ?delay, "no answer yet; starting the next attempt");
                    running.push(tagged(addr, attempt(addr)));
                }
            }
        }
    }
}

/// One attempt's outcome with its address (one future type for every attempt).
async fn tagged<T, E>(
    addr: SocketAddr,
    attempt: impl Future<Output = Result<T, E>>,
) -> (SocketAddr, Result<T, E>) {
    (addr, attempt.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_from_the_first_ones() {
        let got = interleave(addrs(&[
            "[::1]:1",
            "[::2]:1",
            "[::3]:1",
            "10.0.0.1:1",
            "10.0.0.2:1",
        ]));
        assert_eq!(
            got,
            addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"])
        );
        let got = interleave(addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"]));
        assert_eq!(got, addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"]));
        assert!(interleave(Vec::new()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_first_address_does_not_hold_up_the_second() {
        let list = addrs(&["10.0.0.1:1", "10.0.0.2:1"]);
        let start = tokio::time::Instant::now();
        let silent = list[0];
        let (value, addr) = race(list.clone(), ATTEMPT_DELAY, |addr| async move {
            if addr == silent {
                std::future::pending::<()>().await;
            }
            Ok::<_, io::Error>(addr.port())
        })
        .await
        .unwrap();
        assert_eq!(addr, list[1]);
        assert_eq!(value, 1);
        // Paused clock: exactly one attempt delay passed, not a guess at real time.
        assert_eq!(start.elapsed(), ATTEMPT_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_attempt_at_once_and_all_failing_returns_the_last() {
        let list = addrs(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
        let start = tokio::time::Instant::now();
        let err = race(list, ATTEMPT_DELAY, |addr| async move {
            Err::<(), _>(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                addr.to_string(),
            ))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "10.0.0.3:1");
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no waiting between refusals"
        );
    }
}
