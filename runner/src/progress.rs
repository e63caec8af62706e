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
    // One decimal at most, and none when it would read ".0".
    let tenths = (value * 10.0).round();
    if unit == 0 || value >= 100.0 || tenths % 10.0 == 0.0 {
        format!("{:.0}{}", value, UNITS[unit])
    } else {
        format!("{:.1}{}", value, UNITS[unit])
    }
}

/// The guide's progress message: `Uploading disk (45% complete, 4.5GB/10GB)`. `label` names the disk
/// when a VM has several (`disk 2/3`); percentages are floored so 100% means done.
pub fn message(verb: &str, label: &str, done: u64, total: u64) -> String {
    let percent = if total == 0 {
        0
    } else {
        (done.min(total) as u128 * 100 / total as u128) as u64
    };
    format!(
        "{verb} {label} ({percent}% complete, {}/{})",
        human_bytes(done),
        human_bytes(total)
    )
}

/// The byte-moving steps every disk goes through, with their share of that disk's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading from the source.
    Export,
    /// qemu-img conversion (its share counts as done when skipped).
    Convert,
    /// Upload to staging.
    Upload,
    /// Download from staging, re-hashing.
    Download,
    /// Writing into the target.
    Import,
}

impl Step {
    const ALL: [Step; 5] = [
        Step::Export,
        Step::Convert,
        Step::Upload,
        Step::Download,
        Step::Import,
    ];

    /// Share of a disk's weight: moving bytes over the network dominates a migration.
    fn share(self) -> f64 {
        match self {
            Step::Export => 0.20,
            Step::Convert => 0.10,
            Step::Upload => 0.25,
            Step::Download => 0.25,
            Step::Import => 0.20,
        }
    }
}

/// Whole-migration progress, weighted by bytes: each disk weighs its virtual size, each step a fixed
/// share of it. Validating and snapshotting take the first [`Overall::START`] percent, creating and
/// validating the target the last few; `status.progress` only ever moves forward.
#[derive(Clone, Debug, Default)]
pub struct Overall {
    /// Per disk: its weight and how much of each step is done (0..=1).
    disks: Vec<(u64, [f64; 5])>,
    /// Highest percentage reported so far.
    high_water: i32,
}

impl Overall {
    /// Percent reached once validation and snapshot are done.
    pub const START: i32 = 2;
    /// Percent reached once every disk is imported.
    pub const IMPORTED: i32 = 95;

    /// Tracks disks of these virtual sizes.
    pub fn new(sizes: impl IntoIterator<Item = u64>) -> Self {
        Overall {
            disks: sizes.into_iter().map(|s| (s.max(1), [0.0; 5])).collect(),
            high_water: 0,
        }
    }

    /// Records that `step` of disk `index` is `fraction` done (1.0 when finished or skipped).
    pub fn set(&mut self, index: usize, step: Step, fraction: f64) {
        if let Some((_, steps)) = self.disks.get_mut(index) {
            let i = Step::ALL.iter().position(|s| *s == step).unwrap_or(0);
            steps[i] = fraction.clamp(0.0, 1.0);
        }
    }

    /// Percent of the migration done, never lower than a value returned before.
    pub fn percent(&mut self) -> i32 {
        let total: f64 = self.disks.iter().map(|(w, _)| *w as f64).sum();
        let done: f64 = self
            .disks
            .iter()
            .map(|(w, steps)| {
                let f: f64 = Step::ALL
                    .iter()
                    .zip(steps)
                    .map(|(s, f)| s.share() * f)
                    .sum();
                *w as f64 * f
            })
            .sum();
        let fraction = if total > 0.0 { done / total } else { 0.0 };
        let span = (Self::IMPORTED - Self::START) as f64;
        // The epsilon absorbs float error in the shares so a finished migration reads exactly IMPORTED.
        let percent = Self::START + (fraction.min(1.0) * span + 1e-6).floor() as i32;
        self.high_water = self.high_water.max(percent);
        self.high_water
    }

    /// Raises the reported percentage to at least `percent` (phase milestones).
    pub fn at_least(&mut self, percent: i32) -> i32 {
        self.high_water = self.high_water.max(percent.min(100));
        self.high_water
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

    #[test]
    fn message_has_the_guides_form() {
        assert_eq!(
            message("Uploading", "disk", 4_500_000_000, 10_000_000_000),
            "Uploading disk (45% complete, 4.5GB/10GB)"
        );
        assert_eq!(
            message("Uploading", "disk 2/3", 9_999, 10_000),
            "Uploading disk 2/3 (99% complete, 10KB/10KB)"
        );
        assert_eq!(
            message("Exporting", "disk", 0, 0),
            "Exporting disk (0% complete, 0B/0B)"
        );
    }

    #[test]
    fn overall_is_weighted_by_bytes_and_monotonic() {
        // A 3 GB disk and a 1 GB disk: finishing the big one is three quarters of the byte work.
        let mut o = Overall::new([3_000, 1_000]);
        assert_eq!(o.percent(), Overall::START);
        for step in Step::ALL {
            o.set(0, step, 1.0);
        }
        let span = (Overall::IMPORTED - Overall::START) as f64;
        assert_eq!(o.percent(), Overall::START + (0.75 * span).floor() as i32);
        // Going back (a retried step) never lowers the reported value.
        o.set(0, Step::Import, 0.0);
        assert_eq!(o.percent(), Overall::START + (0.75 * span).floor() as i32);
        for step in Step::ALL {
            o.set(1, step, 1.0);
        }
        o.set(0, Step::Import, 1.0);
        assert_eq!(o.percent(), Overall::IMPORTED);
        assert_eq!(o.at_least(100), 100);
    }
}
