//! HTTP CONNECT: one request, and the head of one reply, read with a cap.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use qymux_transport::Proxy;
use qymux_transport::proxy::ProxyError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::io_error;

/// The most bytes of a proxy's reply head read before giving up: a hostile proxy that
/// sends an endless header gets [`ProxyError::ReplyTooLong`] after this many.
pub(crate) const MAX_REPLY: usize = 16 * 1024;

/// The most header fields a reply may have.
const MAX_HEADERS: usize = 64;

/// Sends `CONNECT host:port` on `io` and reads the proxy's answer; on a 2xx, `io` is the
/// tunnel to the target.
pub(super) async fn connect<S>(
    io: &mut S,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = request(proxy, host, port);
    io.write_all(&request).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)?;
    let (head, extra) = read_head(io).await?;
    judge(&head, extra, proxy.credentials().is_some())
}

fn request(proxy: &Proxy, host: &str, port: u16) -> Vec<u8> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(c) = proxy.credentials() {
        let token = BASE64.encode(format!("{}:{}", c.username(), c.expose_password()));
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&token);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Reads until the end of the reply head (an empty line), at most [`MAX_REPLY`] bytes.
/// Returns the head and how many bytes came after it.
pub(crate) async fn read_head<S>(io: &mut S) -> Result<(Vec<u8>, usize), ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(512);
    const CHUNK: usize = 2048;
    let mut chunk = [0u8; CHUNK];
    loop {
        let room = MAX_REPLY - buf.len();
        if room == 0 {
            return Err(ProxyError::ReplyTooLong { limit: MAX_REPLY });
        }
        let n = io
            .read(&mut chunk[..room.min(CHUNK)])
            .await
            .map_err(io_error)?;
        if n == 0 {
            return Err(io_error(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection before it finished its answer",
            )));
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            let end = from + end;
            let extra = buf.len() - end;
            buf.truncate(end);
            return Ok((buf, extra));
        }
    }
}

/// Where the head ends in `bytes` (just after `\r\n\r\n`, or `\n\n`).
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 2),
        b"\n\r" if bytes.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// What the reply head says: a 2xx opens the tunnel, anything else is an error that
/// says what the proxy answered.
pub(crate) fn judge(head: &[u8], extra: usize, have_credentials: bool) -> Result<(), ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ProxyError::Malformed(
                "an incomplete HTTP reply head".into(),
            ));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::Malformed(format!(
                "more than {MAX_HEADERS} header fields"
            )));
        }
        Err(e) => {
            return Err(ProxyError::Malformed(format!("not an HTTP reply ({e})")));
        }
    }
    let status = response.code.unwrap_or(0);
    let reason: String = response
        .reason
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    match status {
        200..=299 if extra > 0 => Err(ProxyError::Malformed(format!(
            "{extra} bytes after the {status} reply, before the server could have spoken"
        ))),
        200..=299 => Ok(()),
        // 407 is the standard answer; tinyproxy answers a CONNECT with wrong credentials 401.
        401 | 407 => Err(ProxyError::AuthenticationRefused(format!(
            "HTTP {status} {reason}{}",
            if have_credentials {
                ""
            } else {
                " (no credentials are configured)"
            }
        ))),
        _ => Err(ProxyError::HttpStatus { status, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_basic_credentials() {
        let proxy = Proxy::parse("http://Aladdin:open%20sesame@p:3128").unwrap();
        let sent = String::from_utf8(request(&proxy, "::1", 443)).unwrap();
        assert_eq!(
            sent,
            "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\
             Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
        );
        let proxy = Proxy::parse("http://p:3128").unwrap();
        let plain = String::from_utf8(request(&proxy, "a.example", 9)).unwrap();
        assert_eq!(
            plain,
            "CONNECT a.example:9 HTTP/1.1\r\nHost: a.example:9\r\n\r\n"
        );
    }

    #[test]
    fn replies_are_judged_by_their_status() {
        assert!(
            judge(
                b"HTTP/1.0 200 Connection established\r\nProxy-agent: x\r\n\r\n",
                0,
                true
            )
            .is_ok()
        );
        assert!(judge(b"HTTP/1.1 200 OK\n\n", 0, true).is_ok());
        assert!(matches!(
            judge(b"HTTP/1.1 200 OK\r\n\r\n", 5, true),
            Err(ProxyError::Malformed(m)) if m.contains("5 bytes")
        ));
        match judge(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            0,
            false,
        ) {
            Err(ProxyError::AuthenticationRefused(m)) => {
                assert_eq!(
                    m,
                    "HTTP 407 Proxy Authentication Required (no credentials are configured)"
                )
            }
            other => panic!("{other:?}"),
        }
        match judge(b"HTTP/1.1 403 Access\x01 violation\r\n\r\n", 0, true) {
            Err(ProxyError::HttpStatus { status, reason }) => {
                assert_eq!((status, reason.as_str()), (403, "Access violation"))
            }
            // httparse refuses control characters in the reason: also a typed error.
            Err(ProxyError::Malformed(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(b"SSH-2.0-OpenSSH\r\n\r\n", 0, true),
            Err(ProxyError::Malformed(_))
        ));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "A: b\r\n".repeat(65));
        assert!(matches!(
            judge(many.as_bytes(), 0, true),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn the_head_is_read_up_to_its_end_and_capped() {
        let mut reply: &[u8] = b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n";
        let (head, extra) = read_head(&mut reply).await.unwrap();
        assert_eq!((head.len(), extra), (25, 0));

        let mut reply: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nTLS";
        assert_eq!(read_head(&mut reply).await.unwrap().1, 3);

        let endless = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_REPLY * 2));
        let mut reply = endless.as_bytes();
        assert!(matches!(
            read_head(&mut reply).await,
            Err(ProxyError::ReplyTooLong { limit: MAX_REPLY })
        ));
        // What was read stops at the cap.
        assert_eq!(reply.len(), endless.len() - MAX_REPLY);

        let mut reply: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(matches!(
            read_head(&mut reply).await,
            Err(ProxyError::Io(_))
        ));
    }
}
