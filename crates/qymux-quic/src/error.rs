//! quinn's errors in Qymux terms.

use std::io;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use qymux_tls::Side;
use qymux_transport::{CloseReason, Error, HandshakeError, TimeoutKind};
use rustls::AlertDescription;

/// The application error code Qymux sends in RESET_STREAM and STOP_SENDING when a stream
/// is aborted (any code means "reset" to a Qymux peer).
pub(crate) const STREAM_ABORTED: u32 = 0;

/// The application error code of a graceful session close.
pub(crate) const SESSION_CLOSED: u32 = 0;

/// Why an established connection ended.
pub(crate) fn close_reason(err: &ConnectionError, idle_timeout: Duration) -> CloseReason {
    use ConnectionError as E;
    match err {
        E::ApplicationClosed(close) => {
            CloseReason::Peer(describe(close.error_code.into_inner(), &close.reason))
        }
        E::LocallyClosed => CloseReason::Local,
        E::ConnectionClosed(close) if close.error_code == TransportErrorCode::NO_ERROR => {
            CloseReason::Peer(describe(0, &close.reason))
        }
        E::ConnectionClosed(close) => CloseReason::Failed(Error::Protocol(format!(
            "the peer's QUIC stack aborted the connection: {close}"
        ))),
        E::TransportError(e) => CloseReason::Failed(Error::Protocol(format!("QUIC: {e}"))),
        E::TimedOut => CloseReason::Failed(Error::Timeout {
            what: TimeoutKind::Idle,
            after: idle_timeout,
        }),
        E::Reset => CloseReason::Failed(Error::io(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the peer reset the connection (QUIC stateless reset; it may have restarted)",
        ))),
        E::VersionMismatch => CloseReason::Failed(Error::Protocol(
            "the peer supports no common QUIC version".into(),
        )),
        E::CidsExhausted => CloseReason::Failed(Error::Protocol(
            "QUIC connection ids exhausted on this endpoint".into(),
        )),
    }
}

/// The reason a peer gave for closing, if it gave one (code 0 with no text is plain).
fn describe(code: u64, reason: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reason);
    match (code, text.is_empty()) {
        (0, true) => None,
        (0, false) => Some(text.into_owned()),
        (code, true) => Some(format!("code {code}")),
        (code, false) => Some(format!("{text} (code {code})")),
    }
}

/// Why a connection failed before it became a session: a typed [`HandshakeError`] where
/// TLS refused it, else what ended it.
pub(crate) fn handshake_failure(
    err: &ConnectionError,
    side: Side,
    handshake_timeout: Duration,
) -> Error {
    use ConnectionError as E;
    match err {
        // Our own TLS stack refused the handshake and told the peer with this alert.
        E::TransportError(e) => match alert_of(e.code) {
            Some(alert) => Error::Handshake(local_refusal(alert, &e.reason, side)),
            None if e.reason.starts_with("TLS error") => {
                Error::Handshake(HandshakeError::Tls(e.reason.clone()))
            }
            None => Error::Protocol(format!("QUIC: {e}")),
        },
        // The peer's TLS stack refused it.
        E::ConnectionClosed(close) => match alert_of(close.error_code) {
            Some(alert) => Error::Handshake(peer_refusal(alert, &close.reason, side)),
            None => close_reason(err, Duration::ZERO).to_error(),
        },
        E::TimedOut => Error::Timeout {
            what: TimeoutKind::Handshake,
            after: handshake_timeout,
        },
        other => close_reason(other, Duration::ZERO).to_error(),
    }
}

/// The TLS alert carried by a QUIC CRYPTO_ERROR code (0x100 + alert).
fn alert_of(code: TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then(|| AlertDescription::from((code - 0x100) as u8))
}

fn is_certificate_alert(alert: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::DecryptError
            | A::BadCertificateStatusResponse
    )
}

/// This side's rustls refused the handshake; `reason` is the rustls error as text.
fn local_refusal(alert: AlertDescription, reason: &str, side: Side) -> HandshakeError {
    match alert {
        AlertDescription::NoApplicationProtocol => HandshakeError::AlpnMismatch,
        AlertDescription::CertificateRequired => HandshakeError::ClientCertificateRequired,
        alert if is_certificate_alert(alert) => match side {
            Side::Client => match parse_pin_mismatch(reason) {
                Some((expected, actual)) => HandshakeError::PinMismatch { expected, actual },
                None => HandshakeError::UntrustedCertificate(reason.to_owned()),
            },
            Side::Server => HandshakeError::ClientCertificateRefused(reason.to_owned()),
        },
        _ => HandshakeError::Tls(reason.to_owned()),
    }
}

/// The peer's rustls refused the handshake with `alert`. Classified as the TCP backend
/// classifies a received alert, with the peer's reason appended where it sent one.
fn peer_refusal(alert: AlertDescription, reason: &[u8], side: Side) -> HandshakeError {
    let received = rustls::Error::AlertReceived(alert);
    let typed = match side {
        Side::Server if is_certificate_alert(alert) => {
            // The client distrusts this server's certificate.
            HandshakeError::UntrustedCertificate(format!("the client refused it: {received}"))
        }
        _ => qymux_tls::handshake_error(&io::Error::other(received), side),
    };
    let peer_says = String::from_utf8_lossy(reason);
    if peer_says.is_empty() {
        return typed;
    }
    match typed {
        HandshakeError::ClientCertificateRefused(msg) => {
            HandshakeError::ClientCertificateRefused(format!("{msg} (peer: {peer_says})"))
        }
        HandshakeError::UntrustedCertificate(msg) => {
            HandshakeError::UntrustedCertificate(format!("{msg} (peer: {peer_says})"))
        }
        HandshakeError::Tls(msg) => HandshakeError::Tls(format!("{msg} (peer: {peer_says})")),
        other => other,
    }
}

/// quinn keeps only the text of a rustls error. The pinning verifier of `qymux-tls`
/// reports `PinMismatch { expected: "..", actual: ".." }` inside it (the `Debug` form
/// rustls prints for `CertificateError::Other`); recover both fingerprints.
fn parse_pin_mismatch(reason: &str) -> Option<(String, String)> {
    let rest = &reason[reason.find("PinMismatch {")?..];
    let field = |name: &str| -> Option<String> {
        let start = rest.find(&format!("{name}: \""))? + name.len() + 3;
        let len = rest[start..].find('"')?;
        Some(rest[start..start + len].to_owned())
    };
    Some((field("expected")?, field("actual")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_codes_carry_alerts() {
        assert_eq!(
            alert_of(TransportErrorCode::crypto(120)),
            Some(AlertDescription::NoApplicationProtocol)
        );
        assert_eq!(alert_of(TransportErrorCode::PROTOCOL_VIOLATION), None);
    }

    #[test]
    fn pin_mismatch_is_recovered_from_the_rustls_text() {
        let text = r#"invalid peer certificate: Other(OtherError(PinMismatch { expected: "aa01", actual: "bb02" }))"#;
        assert_eq!(
            parse_pin_mismatch(text),
            Some(("aa01".to_owned(), "bb02".to_owned()))
        );
        assert_eq!(
            parse_pin_mismatch("invalid peer certificate: UnknownIssuer"),
            None
        );
    }

    #[test]
    fn peer_close_reasons() {
        assert_eq!(describe(0, b""), None);
        assert_eq!(describe(0, b"closed").as_deref(), Some("closed"));
        assert_eq!(describe(7, b"").as_deref(), Some("code 7"));
    }
}
