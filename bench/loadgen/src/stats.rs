//! Measurements: a lock-free latency histogram, delivery counters, and the
//! server process's RSS and CPU time read from /proc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latencies in 100 µs buckets up to 30 s (anything slower lands in the last bucket).
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

const BUCKET_US: u64 = 100;
const BUCKETS: usize = 300_000;

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), max_us: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Records one latency in microseconds.
    pub fn record_us(&self, us: u64) {
        let bucket = ((us / BUCKET_US) as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Records a duration.
    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The latency at quantile `q` (0..1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        self.max_ms()
    }

    /// The slowest sample, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Clears all samples.
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }
}

/// Delivery accounting shared by every client.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Events received with the next seq or later (each new event once).
    pub received: AtomicU64,
    /// Events received again (seq not above the last one seen).
    pub duplicates: AtomicU64,
    /// Events that skipped ahead (seq above last + 1).
    pub out_of_order: AtomicU64,
    /// Seqs skipped by those jumps.
    pub skipped: AtomicU64,
    /// Send-to-receipt latency of events that carry a send time.
    pub latency: Histogram,
    /// Reconnect-to-caught-up time (jitter).
    pub replay: Histogram,
    /// Subscribe-to-ack time, one sample per acknowledged subscription.
    pub acks: Histogram,
    /// Bytes of those acks (the Socket.IO packets).
    pub ack_bytes: AtomicU64,
    /// Reconnections made.
    pub reconnects: AtomicU64,
    /// Connections that failed.
    pub errors: AtomicU64,
}

impl Delivery {
    /// Resets the per-phase counters.
    pub fn reset(&self) {
        for c in [
            &self.received,
            &self.duplicates,
            &self.out_of_order,
            &self.skipped,
            &self.reconnects,
            &self.errors,
            &self.ack_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.latency.reset();
        self.replay.reset();
        self.acks.reset();
    }
}

/// A process's memory and CPU use.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Resident set size, bytes.
    pub rss: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Reads /proc/<pid> (zeros if it cannot).
pub fn proc_stats(pid: Option<u32>) -> ProcStats {
    let Some(pid) = pid else { return ProcStats::default() };
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024);
    let cpu_secs = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0);
    ProcStats { rss, cpu_secs }
}

/// Microseconds since the epoch (the send time carried in produced chunks).
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}
