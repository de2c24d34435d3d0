//! Run counters shared between the frame loop and the signal threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Counters the frame loop updates and the MQTT stats topic reports.
///
/// Design: plain atomics with relaxed ordering. Each counter is read on its own, so a stats
/// message may mix values from two neighbouring frames; no reader needs them consistent.
#[derive(Debug)]
pub struct RunStats {
    /// When the run started; the stats topic reports uptime from it.
    pub started: Instant,
    /// Frames scored.
    pub frames: AtomicU64,
    /// Frames skipped because they could not be read, decoded or scored.
    pub skipped: AtomicU64,
    /// Frames whose verdict was out-of-distribution.
    pub ood_frames: AtomicU64,
    /// Sum of per-frame latencies of scored frames, in microseconds.
    pub latency_us_total: AtomicU64,
    /// Events opened by the gate.
    pub events: AtomicU64,
    /// Per-frame MQTT messages dropped under back-pressure.
    pub mqtt_frames_dropped: AtomicU64,
    /// Camera or stream frames replaced by a newer one before inference took them.
    pub stale_frames: AtomicU64,
    /// Events the on-disk queue dropped at its size limit.
    pub events_dropped: AtomicU64,
    /// Events in the on-disk queue not yet acknowledged by the broker.
    pub queue_depth: AtomicU64,
    /// True while the gate is out-of-distribution.
    pub ood: AtomicBool,
}

impl RunStats {
    /// Counters at zero, with the uptime clock started now.
    pub fn new() -> RunStats {
        RunStats {
            started: Instant::now(),
            frames: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            ood_frames: AtomicU64::new(0),
            latency_us_total: AtomicU64::new(0),
            events: AtomicU64::new(0),
            mqtt_frames_dropped: AtomicU64::new(0),
            stale_frames: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            ood: AtomicBool::new(false),
        }
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for RunStats {
    fn default() -> RunStats {
        RunStats::new()
    }
}
