//! Byte counters shared between the code that moves bytes and the status writer that reports them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Progress of one transfer: bytes done out of bytes total. Cheap to clone; updated lock-free from the
/// hot path, read by the status writer every few seconds.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    /// A counter expecting `total` bytes.
    pub fn new(total: u64) -> Self {
        let p = Progress::default();
        p.set_total(total);
        p
    }
    /// Adds `n` transferred bytes.
    pub fn add(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the transferred bytes (e.g. when resuming, or from a tool's percentage).
    pub fn set_done(&self, n: u64) {
        self.inner.done.store(n, Ordering::Relaxed);
    }
    /// Sets the expected total.
    pub fn set_total(&self, n: u64) {
        self.inner.total.store(n, Ordering::Relaxed);
    }
    /// Bytes transferred so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }
    /// Bytes expected.
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }
    /// Fraction done in 0..=1 (0 when the total is unknown).
    pub fn fraction(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            (self.done() as f64 / total as f64).min(1.0)
        }
    }
}

/// Formats bytes the way the guide's messages do: `4.5GB`, `10GB`, `512MB` (decimal units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || (value.fract() < 0.05) {
        format!("{:.0}{}", value, UNITS[unit])
    } else {
        format!("{:.1}{}", value, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_guide() {
        assert_eq!(human_bytes(4_500_000_000), "4.5GB");
        assert_eq!(human_bytes(10_000_000_000), "10GB");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(512_000_000), "512MB");
    }

    #[test]
    fn counts() {
        let p = Progress::new(200);
        let q = p.clone();
        q.add(50);
        assert_eq!(p.done(), 50);
        assert!((p.fraction() - 0.25).abs() < 1e-9);
    }
}
