//! Joining a request's path to the target's base path without leaving it.
//!
//! A request for `/../admin` to a target `http://h/api` must not become `/api/../admin`,
//! which the target resolves to `/admin`. The request's path is normalised on its own
//! first, as RFC 3986 §5.2.4 (`remove_dot_segments`) does, with the percent-encoded dot
//! (`%2e`, `%2E`; RFC 3986 §6.2.2.2 makes it the same character) decoded first, so
//! `/%2e%2e/admin` and `/.%2E/admin` are dot segments too. A `..` that would climb above
//! the request's root is refused rather than clamped, and so are segments that
//! some servers read as dot segments although RFC 3986 does not: a dot segment with
//! parameters (`..;x`, Tomcat) and encoded or raw separators (`%2f`, `%5c`, `\`), which
//! servers that decode before resolving turn into `/..`. What is sent to the target has
//! no dot segment left, so the target has nothing to resolve.

use std::fmt;

/// Why a request path cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A `..` climbs above the root of the request's path (out of the target's base).
    LeavesBase,
    /// A segment some servers resolve differently than RFC 3986 (`..;x`, `%2f`, `\`).
    Ambiguous(&'static str),
    /// Not an absolute path (`*` and authority forms are not forwarded).
    NotAbsolute,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::LeavesBase => f.write_str("the path leaves the proxied base path"),
            PathError::Ambiguous(what) => write!(f, "the path holds {what}"),
            PathError::NotAbsolute => f.write_str("the path must start with '/'"),
        }
    }
}

/// The path to send to the target for a request whose path is `requested` (without the
/// query), under `base` (the target's path without its trailing slash, or "").
pub(crate) fn join(base: &str, requested: &str) -> Result<String, PathError> {
    let normalised = normalise(requested)?;
    if base.is_empty() {
        Ok(normalised)
    } else {
        Ok(format!("{base}{normalised}"))
    }
}

/// RFC 3986 §5.2.4 on an absolute path, with `%2e` decoded first; a `..` above the root
/// is an error instead of being dropped.
pub(crate) fn normalise(path: &str) -> Result<String, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") {
        return Err(PathError::Ambiguous("an encoded '/' (%2f)"));
    }
    if lower.contains("%5c") || path.contains('\\') {
        return Err(PathError::Ambiguous("a backslash"));
    }
    if lower.contains("%00") {
        return Err(PathError::Ambiguous("an encoded NUL (%00)"));
    }
    let decoded = decode_dots(rest);
    let segments: Vec<&str> = decoded.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let base = segment.split(';').next().unwrap_or_default();
        let is_dot = base == "." || base == "..";
        if is_dot && base.len() != segment.len() {
            return Err(PathError::Ambiguous("a dot segment with parameters"));
        }
        match *segment {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::LeavesBase);
                }
            }
            other => out.push(other),
        }
        if is_dot && i == last {
            // "/a/b/.." is "/a/": the directory stays a directory.
            out.push("");
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// Replaces `%2e` and `%2E` with `.`; everything else stays as it is.
fn decode_dots(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let encoded = &rest[at..];
        if encoded.len() >= 3 && encoded[1..3].eq_ignore_ascii_case("2e") {
            out.push('.');
            rest = &encoded[3..];
        } else {
            out.push('%');
            rest = &encoded[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_3986_examples() {
        // RFC 3986 §5.2.4 and §5.4 (the absolute-path ones).
        assert_eq!(normalise("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(normalise("/a/b/c/../d").unwrap(), "/a/b/d");
        assert_eq!(normalise("/a/b/c/.").unwrap(), "/a/b/c/");
        assert_eq!(normalise("/a/b/c/..").unwrap(), "/a/b/");
        assert_eq!(normalise("/a/b/c/g.").unwrap(), "/a/b/c/g.");
        assert_eq!(normalise("/a/b/c/.g").unwrap(), "/a/b/c/.g");
        assert_eq!(normalise("/a/b/c/g..").unwrap(), "/a/b/c/g..");
        assert_eq!(normalise("/a/b/c/..g").unwrap(), "/a/b/c/..g");
        assert_eq!(normalise("/a/./b/../g/").unwrap(), "/a/g/");
        assert_eq!(normalise("/").unwrap(), "/");
        assert_eq!(normalise("/.").unwrap(), "/");
        assert_eq!(normalise("/a/..").unwrap(), "/");
        assert_eq!(normalise("/a//b").unwrap(), "/a//b");
        assert_eq!(normalise("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for path in [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/./../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/%2e./admin",
            "/a/%2E%2E/%2e%2e/admin",
            "/a/b/../%2e%2e/../admin",
        ] {
            assert_eq!(normalise(path), Err(PathError::LeavesBase), "{path}");
        }
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_eq!(normalise("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(normalise("/a/%2e/b").unwrap(), "/a/b");
        assert_eq!(normalise("/a/file%2ejson").unwrap(), "/a/file.json");
        // Other escapes are left alone.
        assert_eq!(normalise("/a%20b/%41").unwrap(), "/a%20b/%41");
        assert_eq!(normalise("/100%").unwrap(), "/100%");
        assert_eq!(normalise("/%2").unwrap(), "/%2");
    }

    #[test]
    fn ambiguous_segments_are_refused() {
        for path in [
            "/..;/admin",
            "/a/.;x/b",
            "/%2e%2e;jsessionid=1/admin",
            "/..%2fadmin",
            "/a/..%2Fadmin",
            "/..%5cadmin",
            "/..\\admin",
            "/a%00b",
        ] {
            assert!(
                matches!(normalise(path), Err(PathError::Ambiguous(_))),
                "{path}"
            );
        }
        // Parameters on ordinary segments are fine.
        assert_eq!(normalise("/a;v=1/b").unwrap(), "/a;v=1/b");
    }

    #[test]
    fn joins_stay_under_the_base() {
        assert_eq!(join("/api", "/v1/pods").unwrap(), "/api/v1/pods");
        assert_eq!(join("/api", "/").unwrap(), "/api/");
        assert_eq!(join("/api", "/v1/../v2").unwrap(), "/api/v2");
        assert_eq!(join("", "/x/./y").unwrap(), "/x/y");
        assert_eq!(join("/api", "/../admin"), Err(PathError::LeavesBase));
        assert_eq!(join("", "/../admin"), Err(PathError::LeavesBase));
        assert_eq!(join("/api", "*"), Err(PathError::NotAbsolute));
    }
}
