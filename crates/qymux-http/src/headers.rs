//! Hop-by-hop headers (RFC 9110, section 7.6.1): they describe one connection, so a proxy
//! consumes them instead of forwarding them.

use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// Always hop-by-hop, whether `Connection` names them or not.
fn fixed() -> [HeaderName; 9] {
    [
        CONNECTION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ]
}

/// The comma-separated tokens of every `Connection` header, lowercased.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// The protocol an HTTP/1.1 message asks to switch to (`Connection: upgrade` together with
/// an `Upgrade` header), if it does.
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = connection_tokens(headers).any(|t| t == "upgrade");
    if asked {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes the hop-by-hop headers: the fixed set and every header `Connection` names.
/// `TE: trailers` survives (it says the client accepts trailers, which end-to-end bodies
/// may carry), as does an upgrade when `upgrade` is given (`Connection: upgrade` and
/// `Upgrade: <upgrade>` are set again).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in named.iter().chain(fixed().iter()) {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_fixed_and_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("proxy-authorization", "Basic abc"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("content-type", "text/plain"),
            ("content-length", "3"),
        ]);
        remove_hop_by_hop(&mut h, None);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "content-type"]);
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = map(&[("te", "gzip, trailers;q=1")]);
        remove_hop_by_hop(&mut h, None);
        assert_eq!(h.get(TE).unwrap(), "trailers");
    }

    #[test]
    fn upgrades_are_recognised_and_kept() {
        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_protocol(&h).is_none(), "Upgrade without Connection");

        let mut h = map(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "echo"),
            ("x-end-to-end", "yes"),
        ]);
        let proto = upgrade_protocol(&h);
        remove_hop_by_hop(&mut h, proto);
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "echo");
        assert_eq!(h.get("x-end-to-end").unwrap(), "yes");
    }
}
