//! `Forwarded` (RFC 7239) and `X-Forwarded-For/-Proto/-Host`: telling the target who
//! the request came from, so that a service that trusts local callers does not trust
//! everyone who reaches the session's other end.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the proxy knows about the hop it received a request on.
#[derive(Debug, Clone)]
pub(crate) struct Hop<'a> {
    /// The session peer's address: who sent the request through the tunnel.
    pub(crate) peer: SocketAddr,
    /// The scheme the client used (`http` unless it sent an absolute `https` URI).
    pub(crate) proto: &'a str,
    /// The `Host` the client asked for, if any.
    pub(crate) host: Option<&'a HeaderValue>,
}

/// Rewrites the forwarding headers of a request about to go to the target.
///
/// The request's own `Forwarded` and `X-Forwarded-*` headers came from the session peer
/// and are not trusted as they are: unless `keep_incoming` is set they are dropped, and
/// with it, `Forwarded` and `X-Forwarded-For` are kept with this hop appended last (RFC
/// 7239 §4), so the last element is always the one this proxy vouches for.
/// `X-Forwarded-Proto` and `X-Forwarded-Host` hold one value and are always this hop's.
/// With `add` off, the incoming ones are still dropped (or kept) but nothing is added.
pub(crate) fn rewrite(headers: &mut HeaderMap, hop: &Hop<'_>, add: bool, keep_incoming: bool) {
    let incoming_forwarded = take_joined(headers, &FORWARDED);
    let incoming_xff = take_joined(headers, &X_FORWARDED_FOR);
    headers.remove(X_FORWARDED_PROTO);
    headers.remove(X_FORWARDED_HOST);
    let keep = |incoming: Option<String>| incoming.filter(|_| keep_incoming);
    let (incoming_forwarded, incoming_xff) = (keep(incoming_forwarded), keep(incoming_xff));
    if !add {
        put(headers, &FORWARDED, incoming_forwarded);
        put(headers, &X_FORWARDED_FOR, incoming_xff);
        return;
    }

    let ours = forwarded_element(hop);
    put(headers, &FORWARDED, Some(append(incoming_forwarded, &ours)));
    put(
        headers,
        &X_FORWARDED_FOR,
        Some(append(incoming_xff, &hop.peer.ip().to_string())),
    );
    put(headers, &X_FORWARDED_PROTO, Some(hop.proto.to_owned()));
    if let Some(host) = hop.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// `for="<peer>";proto=<proto>;host="<host>"`, quoted as RFC 7239 §4 and §6 ask (an IPv6
/// address in brackets, a port only inside quotes).
pub(crate) fn forwarded_element(hop: &Hop<'_>) -> String {
    let node = match hop.peer.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", hop.peer.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", hop.peer.port()),
    };
    let mut element = format!("for=\"{node}\";proto={}", hop.proto);
    if let Some(host) = hop.host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        element.push_str(&quoted(host));
    }
    element
}

/// An RFC 7230 quoted-string: `"` and `\` escaped with a backslash.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Removes every `name` header and returns their values joined with `, `, if any.
fn take_joined(headers: &mut HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    headers.remove(name);
    (!values.is_empty()).then(|| values.join(", "))
}

fn append(incoming: Option<String>, ours: &str) -> String {
    match incoming {
        Some(list) => format!("{list}, {ours}"),
        None => ours.to_owned(),
    }
}

fn put(headers: &mut HeaderMap, name: &HeaderName, value: Option<String>) {
    if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(peer: &str, host: Option<&HeaderValue>) -> Hop<'static> {
        let host = host.map(|h| &*Box::leak(Box::new(h.clone())));
        Hop {
            peer: peer.parse().unwrap(),
            proto: "http",
            host,
        }
    }

    #[test]
    fn elements_are_quoted() {
        let host = HeaderValue::from_static("svc.test:8080");
        assert_eq!(
            forwarded_element(&hop("203.0.113.7:4711", Some(&host))),
            r#"for="203.0.113.7:4711";proto=http;host="svc.test:8080""#
        );
        assert_eq!(
            forwarded_element(&hop("[2001:db8::1]:443", None)),
            r#"for="[2001:db8::1]:443";proto=http"#
        );
        let evil = HeaderValue::from_static(r#"a";for="127.0.0.1"#);
        assert_eq!(
            forwarded_element(&hop("10.0.0.1:1", Some(&evil))),
            r#"for="10.0.0.1:1";proto=http;host="a\";for=\"127.0.0.1""#
        );
    }

    fn forged() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_static("for=127.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("127.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.append(X_FORWARDED_HOST, HeaderValue::from_static("admin.internal"));
        h
    }

    #[test]
    fn incoming_headers_are_dropped_by_default() {
        let mut h = forged();
        rewrite(&mut h, &hop("198.51.100.2:5000", None), true, false);
        assert_eq!(
            h.get(FORWARDED).unwrap(),
            r#"for="198.51.100.2:5000";proto=http"#
        );
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "198.51.100.2");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        assert!(h.get(X_FORWARDED_HOST).is_none());
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn incoming_lists_can_be_kept_with_this_hop_last() {
        let mut h = forged();
        let host = HeaderValue::from_static("svc");
        rewrite(&mut h, &hop("198.51.100.2:5000", Some(&host)), true, true);
        assert_eq!(
            h.get(FORWARDED).unwrap(),
            r#"for=127.0.0.1, for="198.51.100.2:5000";proto=http;host="svc""#
        );
        assert_eq!(
            h.get(X_FORWARDED_FOR).unwrap(),
            "127.0.0.1, 10.0.0.9, 198.51.100.2"
        );
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(h.get(X_FORWARDED_HOST).unwrap(), "svc");
    }

    #[test]
    fn switched_off_adds_nothing_and_still_drops() {
        let mut h = forged();
        rewrite(&mut h, &hop("198.51.100.2:5000", None), false, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
