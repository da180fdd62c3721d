//! `qymux_transport::Proxy` parsing, `NO_PROXY` lists and redaction. Any input: no
//! panic. A proxy that parses prints the same whatever its credentials, and what it prints parses
//! back to the same kind, host and port; a `NO_PROXY` list built from the rest of the
//! input answers `applies_to` for any target without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qymux_transport::Proxy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (url, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let (no_proxy, target) = rest.split_once('\n').unwrap_or((rest, "example.com:443"));
    let Ok(proxy) = Proxy::parse(url) else {
        return;
    };
    let shown = proxy.to_string();
    if proxy.credentials().is_some() {
        // Other credentials print the same: they never reach Display or Debug.
        let other = proxy.clone().with_credentials("x", "y");
        assert_eq!(shown, other.to_string());
        assert_eq!(format!("{proxy:?}"), format!("{other:?}"));
        assert!(shown.contains("***@"), "{shown}");
    }
    let again = Proxy::parse(&shown.replace("***@", "")).expect("what a proxy prints parses");
    assert_eq!(
        (again.kind(), again.host(), again.port()),
        (proxy.kind(), proxy.host(), proxy.port())
    );
    let proxy = proxy.no_proxy(no_proxy);
    let _ = proxy.applies_to(target);
    let _ = proxy.applies_to(no_proxy);
});
