//! What the `qymux` binary speaks on top of a session: a control stream for claims, and
//! a one-line header on every stream the server opens to an agent.
//!
//! The transport's wire contract is untouched: these are bytes *inside* streams.
//!
//! **Control stream.** The agent opens the first stream of its session and sends, per
//! service, `claim NAME CNONCE`; the server answers `challenge NAME SNONCE`; the agent
//! answers `proof NAME MAC` (`-` when it has no token); the server answers
//! `granted NAME` or `refused NAME REASON`. Later the server may send `changed` (its
//! services were reloaded: claim what is not granted again) and `revoked NAME REASON`,
//! and the agent `release NAME` (its own reload dropped the service). The server sends
//! `ping N` now and then; the agent answers `pong N`.
//! Lines are UTF-8, at most [`MAX_LINE`] bytes, ending in `\n`; nonces and MACs are hex.
//!
//! **Proof.** `MAC = HMAC-SHA256(token, "qymux-claim-v1" 0 NAME 0 SNONCE CNONCE FP)`
//! where the nonces are 32 random bytes each and `FP` is the SHA-256 of the server's
//! certificate as the agent verified it. The token never crosses the wire; a proof is
//! good for one challenge of one server, so a server (or anyone) that sees it cannot
//! replay it: another server has another certificate, and the same server picks a new
//! challenge every time.
//!
//! **Data streams.** The server opens a stream per public connection and writes one
//! byte of length and the service name; then the bytes of the connection follow.

use std::fmt::Write as _;

use crate::crypto::hmac;
use crate::crypto::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

/// The longest control line accepted.
pub(crate) const MAX_LINE: usize = 1024;

/// A nonce's length in bytes.
pub(crate) const NONCE_LEN: usize = 32;

const CONTEXT: &[u8] = b"qymux-claim-v1";

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    Claim {
        service: String,
        nonce: Vec<u8>,
    },
    Challenge {
        service: String,
        nonce: Vec<u8>,
    },
    Proof {
        service: String,
        mac: Option<Vec<u8>>,
    },
    Granted {
        service: String,
    },
    Refused {
        service: String,
        reason: String,
    },
    Revoked {
        service: String,
        reason: String,
    },
    Changed,
    Release {
        service: String,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
}

/// A control line that could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtoError {
    #[error("reading the control stream failed")]
    Io(#[from] std::io::Error),
    #[error("control line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("malformed control line: {0}")]
    Malformed(String),
}

impl Msg {
    /// The line, with its `\n`.
    pub(crate) fn encode(&self) -> String {
        let mut s = match self {
            Msg::Claim { service, nonce } => format!("claim {service} {}", hex(nonce)),
            Msg::Challenge { service, nonce } => format!("challenge {service} {}", hex(nonce)),
            Msg::Proof { service, mac } => match mac {
                Some(mac) => format!("proof {service} {}", hex(mac)),
                None => format!("proof {service} -"),
            },
            Msg::Granted { service } => format!("granted {service}"),
            Msg::Refused { service, reason } => format!("refused {service} {}", one_line(reason)),
            Msg::Revoked { service, reason } => format!("revoked {service} {}", one_line(reason)),
            Msg::Changed => "changed".to_owned(),
            Msg::Ping { id } => format!("ping {id}"),
            Msg::Pong { id } => format!("pong {id}"),
            Msg::Release { service } => format!("release {service}"),
        };
        s.push('\n');
        s
    }

    /// Parses one line (without its `\n`).
    pub(crate) fn decode(line: &str) -> Result<Msg, ProtoError> {
        let bad = || ProtoError::Malformed(line.chars().take(80).collect());
        let mut parts = line.splitn(3, ' ');
        let verb = parts.next().ok_or_else(bad)?;
        let service = parts.next().map(str::to_owned);
        let rest = parts.next();
        let need = |s: Option<String>| s.filter(|s| !s.is_empty()).ok_or_else(bad);
        let nonce = |r: Option<&str>| {
            r.and_then(unhex)
                .filter(|n| n.len() == NONCE_LEN)
                .ok_or_else(bad)
        };
        Ok(match verb {
            "claim" => Msg::Claim {
                service: need(service)?,
                nonce: nonce(rest)?,
            },
            "challenge" => Msg::Challenge {
                service: need(service)?,
                nonce: nonce(rest)?,
            },
            "proof" => Msg::Proof {
                service: need(service)?,
                mac: match rest {
                    Some("-") => None,
                    Some(r) => Some(unhex(r).filter(|m| m.len() == 32).ok_or_else(bad)?),
                    None => return Err(bad()),
                },
            },
            "granted" if rest.is_none() => Msg::Granted {
                service: need(service)?,
            },
            "refused" => Msg::Refused {
                service: need(service)?,
                reason: rest.unwrap_or("").to_owned(),
            },
            "revoked" => Msg::Revoked {
                service: need(service)?,
                reason: rest.unwrap_or("").to_owned(),
            },
            "changed" if service.is_none() => Msg::Changed,
            "release" if rest.is_none() => Msg::Release {
                service: need(service)?,
            },
            "ping" | "pong" if rest.is_none() => {
                let id = service.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                if verb == "ping" {
                    Msg::Ping { id }
                } else {
                    Msg::Pong { id }
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// Reads one control line; `Ok(None)` at a clean end of the stream.
pub(crate) async fn read_msg<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Msg>, ProtoError> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_LINE {
            ProtoError::TooLong
        } else {
            ProtoError::Malformed("line cut short".into())
        });
    }
    buf.pop();
    let line = String::from_utf8(buf).map_err(|_| ProtoError::Malformed("not UTF-8".into()))?;
    Msg::decode(&line).map(Some)
}

/// A fresh random nonce.
pub(crate) fn nonce() -> Vec<u8> {
    let mut n = vec![0; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut n)
        .expect("the system random number generator failed");
    n
}

fn message(service: &str, server_nonce: &[u8], client_nonce: &[u8], server_fp: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + service.len() + 2 + 3 * 32);
    m.extend_from_slice(CONTEXT);
    m.push(0);
    m.extend_from_slice(service.as_bytes());
    m.push(0);
    m.extend_from_slice(server_nonce);
    m.extend_from_slice(client_nonce);
    m.extend_from_slice(server_fp);
    m
}

/// The agent's proof that it holds `token`.
pub(crate) fn prove(
    token: &str,
    service: &str,
    server_nonce: &[u8],
    client_nonce: &[u8],
    server_fp: &[u8],
) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hmac::sign(
        &key,
        &message(service, server_nonce, client_nonce, server_fp),
    )
    .as_ref()
    .to_vec()
}

/// Checks a proof in constant time (`hmac::verify` of ring or aws-lc-rs).
pub(crate) fn verify(
    token: &str,
    service: &str,
    server_nonce: &[u8],
    client_nonce: &[u8],
    server_fp: &[u8],
    mac: &[u8],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hmac::verify(
        &key,
        &message(service, server_nonce, client_nonce, server_fp),
        mac,
    )
    .is_ok()
}

/// The header the server writes on a data stream.
pub(crate) fn header(service: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(service.len() + 1);
    h.push(service.len() as u8);
    h.extend_from_slice(service.as_bytes());
    h
}

/// Reads a data stream's header: the service name.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, ProtoError> {
    let len = r.read_u8().await? as usize;
    let mut name = vec![0; len];
    r.read_exact(&mut name).await?;
    String::from_utf8(name).map_err(|_| ProtoError::Malformed("service name not UTF-8".into()))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msgs = [
            Msg::Claim {
                service: "web".into(),
                nonce: nonce(),
            },
            Msg::Challenge {
                service: "web".into(),
                nonce: nonce(),
            },
            Msg::Proof {
                service: "web".into(),
                mac: Some(vec![7; 32]),
            },
            Msg::Proof {
                service: "web".into(),
                mac: None,
            },
            Msg::Granted {
                service: "web".into(),
            },
            Msg::Refused {
                service: "web".into(),
                reason: "wrong token\nreally".into(),
            },
            Msg::Changed,
            Msg::Ping { id: 7 },
            Msg::Pong { id: u64::MAX },
            Msg::Release {
                service: "web".into(),
            },
        ];
        for m in msgs {
            let line = m.encode();
            let back = Msg::decode(line.trim_end_matches('\n')).unwrap();
            if let Msg::Refused { reason, .. } = &back {
                assert_eq!(reason, "wrong token really");
            } else {
                assert_eq!(back, m);
            }
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            "",
            "claim",
            "claim web",
            "claim web zz",
            "claim web 00",
            "proof web 0102",
            "granted",
            "changed now",
            "hello",
        ] {
            assert!(Msg::decode(line).is_err(), "{line:?}");
        }
    }

    #[tokio::test]
    async fn long_lines_are_refused() {
        let long = vec![b'a'; MAX_LINE + 10];
        let mut r = tokio::io::BufReader::new(&long[..]);
        assert!(matches!(read_msg(&mut r).await, Err(ProtoError::TooLong)));
    }

    #[test]
    fn proofs_bind_token_service_nonces_and_server() {
        let (s, c, fp) = (nonce(), nonce(), [9u8; 32]);
        let mac = prove("a token of sixteen", "web", &s, &c, &fp);
        assert!(verify("a token of sixteen", "web", &s, &c, &fp, &mac));
        assert!(!verify("another token....", "web", &s, &c, &fp, &mac));
        assert!(!verify("a token of sixteen", "db", &s, &c, &fp, &mac));
        assert!(!verify(
            "a token of sixteen",
            "web",
            &nonce(),
            &c,
            &fp,
            &mac
        ));
        assert!(!verify(
            "a token of sixteen",
            "web",
            &s,
            &nonce(),
            &fp,
            &mac
        ));
        assert!(!verify(
            "a token of sixteen",
            "web",
            &s,
            &c,
            &[8u8; 32],
            &mac
        ));
        assert!(!mac.windows(6).any(|w| w == b"a toke"));
    }
}
