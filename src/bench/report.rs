//! What one benchmark run measured ([`Report`]): percentiles from round-trip samples, or a
//! rate from a one-way stream, and how it is printed (a table row, JSON).
//!
//! Invariants: a report is computed from what was measured and nothing else; percentiles
//! are read from the sorted samples (none in throughput mode), and the rates are per second
//! of the measured span.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Opts;

/// What one run measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Transport name.
    pub transport: String,
    /// Wait mode name.
    pub wait: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Measured round trips or messages.
    pub iters: u64,
    /// Round-trip latency percentiles in ns (`None` in throughput mode).
    pub p50_ns: Option<u64>,
    /// 99th percentile.
    pub p99_ns: Option<u64>,
    /// 99.9th percentile.
    pub p999_ns: Option<u64>,
    /// Slowest round trip.
    pub max_ns: Option<u64>,
    /// Round trips per second (ping-pong) or one-way messages per second (throughput).
    pub msgs_per_s: f64,
    /// Payload bytes per second in one direction.
    pub bytes_per_s: f64,
}

impl Report {
    pub(super) fn from_samples(o: &Opts, mut samples: Vec<u64>, total: Duration) -> Report {
        samples.sort_unstable();
        let pct = |q: f64| -> Option<u64> {
            if samples.is_empty() {
                return None;
            }
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            Some(samples[i])
        };
        let n = samples.len() as f64;
        let rate = n / total.as_secs_f64();
        Report {
            transport: o.transport.name().into(),
            wait: o.wait_name().into(),
            size: o.size,
            iters: samples.len() as u64,
            p50_ns: pct(0.50),
            p99_ns: pct(0.99),
            p999_ns: pct(0.999),
            max_ns: samples.last().copied(),
            msgs_per_s: rate,
            bytes_per_s: rate * o.size as f64,
        }
    }

    pub(super) fn from_stream(o: &Opts, n: u64, total: Duration) -> Report {
        let rate = n as f64 / total.as_secs_f64();
        Report {
            transport: o.transport.name().into(),
            wait: o.wait_name().into(),
            size: o.size,
            iters: n,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            max_ns: None,
            msgs_per_s: rate,
            bytes_per_s: rate * o.size as f64,
        }
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        format!(
            "{{\"transport\":\"{}\",\"wait\":\"{}\",\"size\":{},\"iters\":{},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{},\"msgs_per_s\":{:.1},\"bytes_per_s\":{:.1}}}",
            self.transport,
            self.wait,
            self.size,
            self.iters,
            opt(self.p50_ns),
            opt(self.p99_ns),
            opt(self.p999_ns),
            opt(self.max_ns),
            self.msgs_per_s,
            self.bytes_per_s
        )
    }

    /// A readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let us = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.3}", v as f64 / 1e3));
        let _ = writeln!(
            s,
            "transport {}  wait {}  size {} B  iters {}",
            self.transport, self.wait, self.size, self.iters
        );
        let _ = writeln!(
            s,
            "  round trip µs   p50 {}   p99 {}   p99.9 {}   max {}",
            us(self.p50_ns),
            us(self.p99_ns),
            us(self.p999_ns),
            us(self.max_ns)
        );
        let _ = writeln!(
            s,
            "  rate            {:.0} msgs/s   {:.3} GiB/s",
            self.msgs_per_s,
            self.bytes_per_s / (1u64 << 30) as f64
        );
        s
    }
}
