//! What the qymux-bench binaries share: the summary of a set of samples (one quantile
//! function for the bench and connect_bench), and the JSON connect_bench writes and the
//! bench reads back (one typed struct for both).
#![deny(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `q` quantile (0 to 1) of `samples` by nearest rank; NaN when there are none.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let v = sorted(samples);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The median of `samples` (the mean of the two middle ones for an even count); NaN
/// when there are none.
pub fn median(samples: &[f64]) -> f64 {
    let v = sorted(samples);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// What connect_bench writes (`--json PATH`) and the bench reads back and embeds in its
/// report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Measured dials per case.
    pub rounds: usize,
    /// Dials per case before those, not counted.
    pub warmup_rounds: usize,
    /// What one sample times.
    pub timed: String,
    /// CPUs of the machine.
    pub cpus: usize,
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The QUIC round-trip time a probe dial measured, ms.
    pub quic_rtt_ms: f64,
    /// The cases by key (`a_auto_quic`, `b_auto_blackholed_first`, ...).
    pub cases: BTreeMap<String, ConnectCase>,
    /// The two targets, judged.
    pub targets: ConnectTargets,
}

impl ConnectReport {
    /// The median (ms) of the case whose key starts with `letter` and `_` (`'a'` to `'e'`).
    pub fn median_of(&self, letter: char) -> Option<f64> {
        let prefix = format!("{letter}_");
        self.cases
            .iter()
            .find(|(key, _)| key.starts_with(&prefix))
            .map(|(_, case)| case.median_ms)
    }
}

/// One case of connect_bench.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectCase {
    /// What the case dials.
    pub label: String,
    /// The transport the dials ended on: `quic`, `tcp`, or a count of each.
    pub protocol: String,
    /// Median time to a usable session, ms.
    pub median_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// Fastest, ms.
    pub min_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Median time until `dial()` returned, ms.
    pub dial_median_ms: f64,
    /// Every measured time to a usable session, ms.
    pub samples_ms: Vec<f64>,
}

/// connect_bench's targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectTargets {
    /// Median of b minus median of d, ms.
    pub b_minus_d_ms: f64,
    /// The bound on it, ms.
    pub b_minus_d_target_ms: f64,
    /// Whether it is met.
    pub b_minus_d_met: bool,
    /// Median of c over median of d.
    pub c_over_d: f64,
    /// The bound on it.
    pub c_over_d_target: f64,
    /// Whether it is met.
    pub c_over_d_met: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.9), 5.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
