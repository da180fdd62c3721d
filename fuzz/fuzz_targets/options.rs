//! `qymux_transport::Options::validate` and `Mode` parsing. Options that validate must be
//! usable: every bound can be added to the current time and doubled without overflow (the
//! backends compute deadlines that way), keep-alive is shorter than the idle timeout, and
//! the limits are in range. Options that fail must say why, naming the field.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qymux_transport::{Mode, Options};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let n = self.0.len().min(8);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }

    fn duration(&mut self) -> Duration {
        let (secs, nanos) = (self.u64(), self.u64());
        // Small, large and absurd values alike.
        match nanos % 4 {
            0 => Duration::from_millis(secs % 100_000),
            1 => Duration::from_secs(secs % (1 << 40)),
            2 => Duration::new(secs, (nanos >> 2) as u32 % 1_000_000_000),
            _ => Duration::from_nanos(secs),
        }
    }

    fn usize(&mut self) -> usize {
        let v = self.u64();
        if v & 1 == 0 {
            (v >> 1) as usize % 4096
        } else {
            (v >> 1) as usize
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes(data);
    let mut o = Options::default();
    o.connect_timeout(bytes.duration())
        .handshake_timeout(bytes.duration())
        .idle_timeout(bytes.duration())
        .close_timeout(bytes.duration());
    let keep_alive = bytes.duration();
    o.keep_alive_interval((bytes.u64() & 1 == 0).then_some(keep_alive))
        .max_streams(bytes.usize())
        .max_pending_handshakes(bytes.usize())
        .first_flight_timeout(bytes.duration())
        .max_pending_per_source(bytes.usize());
    let sessions = bytes.usize();
    o.max_sessions((bytes.u64() & 1 == 0).then_some(sessions));

    match o.validate() {
        Ok(()) => {
            let now = Instant::now();
            for (name, bound) in [
                ("connect_timeout", o.connect_timeout_value()),
                ("handshake_timeout", o.handshake_timeout_value()),
                ("idle_timeout", o.idle_timeout_value()),
                ("close_timeout", o.close_timeout_value()),
                ("first_flight_timeout", o.first_flight_timeout_value()),
            ] {
                assert!(!bound.is_zero(), "{name} zero");
                let doubled = bound.checked_mul(2);
                assert!(
                    doubled.and_then(|d| now.checked_add(d)).is_some(),
                    "{name} = {bound:?} validates but overflows a deadline"
                );
            }
            if let Some(k) = o.keep_alive_interval_value() {
                assert!(!k.is_zero() && k < o.idle_timeout_value());
            }
            assert!((1..=1 << 20).contains(&o.max_streams_value()));
            assert!(o.max_pending_handshakes_value() >= 1);
            assert!(o.max_pending_per_source_value() >= 1);
            assert_ne!(o.max_sessions_value(), Some(0));
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("invalid configuration"), "{text}");
        }
    }

    // Modes: what parses prints back as the same mode.
    let text = String::from_utf8_lossy(bytes.0);
    if let Ok(mode) = text.parse::<Mode>() {
        assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
    }
});
