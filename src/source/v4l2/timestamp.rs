//! Converts V4L2 buffer timestamps (CLOCK_MONOTONIC) to wall-clock time.
//!
//! A driver that stamps buffers with CLOCK_MONOTONIC sets `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`
//! in the buffer flags, as uvcvideo does (with start-of-exposure timestamps). The exact
//! conversion adds the wall-clock time at monotonic zero, which
//! `clock_gettime(CLOCK_MONOTONIC)` next to `SystemTime::now()` would measure. std does not
//! expose the raw monotonic clock and gradgate does not depend on the libc crate, so the
//! offset is estimated instead. A frame is dequeued after its timestamp was taken, so
//! `wall time at dequeue − timestamp` is never below the true offset, and the smallest value
//! seen so far is the estimate. Frame times keep the driver's spacing and run late by the
//! shortest timestamp-to-dequeue delay seen: a few milliseconds for end-of-frame timestamps,
//! plus the exposure and transfer time for start-of-exposure ones.
//!
//! TODO: measure the offset with `libc::clock_gettime(CLOCK_MONOTONIC)` at stream start once
//! gradgate depends on libc, and keep the step detection below.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A change of the wall clock against the monotonic clock between two frames above this is
/// taken as a step (an NTP step, a manual `date -s`), after which the offset is estimated
/// anew. Both clocks share NTP's frequency slewing, so between steps they drift apart by far
/// less than this; ntpd steps only for offsets above 128 ms.
const CLOCK_STEP_THRESHOLD: Duration = Duration::from_millis(100);

/// Maps monotonic buffer timestamps to wall-clock time with an estimated offset.
#[derive(Debug, Default)]
pub(super) struct WallClockMapper {
    /// Estimated wall-clock time at monotonic zero, as a duration since the Unix epoch. Never
    /// below the true value, and only lowered until the wall clock steps.
    epoch_offset: Option<Duration>,
    /// Wall and monotonic time at the previous frame, to detect steps of the wall clock.
    previous: Option<(SystemTime, Instant)>,
}

impl WallClockMapper {
    /// Returns the wall-clock time of a frame dequeued at `wall_now` (`mono_now` on the
    /// monotonic clock) whose buffer timestamp is `timestamp`.
    ///
    /// `timestamp` is `None` when the driver's timestamp is not CLOCK_MONOTONIC or is
    /// missing. The frame then gets `wall_now`, as it does when the clock reads before 1970.
    pub fn frame_time(
        &mut self,
        timestamp: Option<Duration>,
        wall_now: SystemTime,
        mono_now: Instant,
    ) -> SystemTime {
        if let Some((wall_before, mono_before)) = self.previous {
            let step_ns = clock_step_ns(wall_before, mono_before, wall_now, mono_now);
            if step_ns.unsigned_abs() > CLOCK_STEP_THRESHOLD.as_nanos()
                && self.epoch_offset.is_some()
            {
                log::info!(
                    "system clock stepped by {:+.3} s against the monotonic clock; \
                     estimating the camera timestamp offset again",
                    step_ns as f64 / 1e9
                );
                self.epoch_offset = None;
            }
        }
        self.previous = Some((wall_now, mono_now));

        let Some(timestamp) = timestamp else {
            return wall_now;
        };
        let Some(candidate) = wall_now
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|since_epoch| since_epoch.checked_sub(timestamp))
        else {
            return wall_now;
        };
        let offset = match self.epoch_offset {
            Some(offset) => offset.min(candidate),
            None => candidate,
        };
        self.epoch_offset = Some(offset);
        UNIX_EPOCH + offset + timestamp
    }
}

/// Returns how far the wall clock moved beyond the monotonic clock between two readings, in
/// nanoseconds: positive when it stepped forward.
fn clock_step_ns(
    wall_before: SystemTime,
    mono_before: Instant,
    wall_now: SystemTime,
    mono_now: Instant,
) -> i128 {
    let wall_ns = match wall_now.duration_since(wall_before) {
        Ok(forward) => forward.as_nanos() as i128,
        Err(backward) => -(backward.duration().as_nanos() as i128),
    };
    let mono_ns = mono_now.saturating_duration_since(mono_before).as_nanos() as i128;
    wall_ns - mono_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wall clock at 2024-01-01T00:00:00Z when the monotonic clock reads zero.
    const EPOCH_OFFSET: Duration = Duration::from_secs(1_704_067_200);

    /// Returns the wall and monotonic readings `mono_ms` after monotonic zero, with the wall
    /// clock `shift_s` seconds ahead of its usual offset.
    fn readings(start: Instant, mono_ms: u64, shift_s: u64) -> (SystemTime, Instant) {
        let mono = Duration::from_millis(mono_ms);
        let wall = UNIX_EPOCH + EPOCH_OFFSET + Duration::from_secs(shift_s) + mono;
        (wall, start + mono)
    }

    fn wall_time(ms: u64) -> SystemTime {
        UNIX_EPOCH + EPOCH_OFFSET + Duration::from_millis(ms)
    }

    fn timestamp(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    #[test]
    fn first_frame_gets_its_dequeue_time() {
        let start = Instant::now();
        let mut mapper = WallClockMapper::default();
        let (wall, mono) = readings(start, 100_030, 0);

        let time = mapper.frame_time(timestamp(100_000), wall, mono);

        assert_eq!(time, wall_time(100_030));
    }

    #[test]
    fn shortest_dequeue_delay_sets_offset() {
        let start = Instant::now();
        let mut mapper = WallClockMapper::default();

        // Delays of 30 ms, 5 ms, then 200 ms (a frame that waited in the queue).
        let (wall, mono) = readings(start, 100_030, 0);
        mapper.frame_time(timestamp(100_000), wall, mono);
        let (wall, mono) = readings(start, 100_105, 0);
        let second = mapper.frame_time(timestamp(100_100), wall, mono);
        let (wall, mono) = readings(start, 100_400, 0);
        let third = mapper.frame_time(timestamp(100_200), wall, mono);

        assert_eq!(second, wall_time(100_105));
        assert_eq!(third, wall_time(100_205));
    }

    #[test]
    fn wall_clock_step_restarts_estimate() {
        let start = Instant::now();
        let mut mapper = WallClockMapper::default();
        let (wall, mono) = readings(start, 100_005, 0);
        mapper.frame_time(timestamp(100_000), wall, mono);

        // NTP sets the wall clock one hour ahead; the next frame waited 50 ms.
        let (wall, mono) = readings(start, 100_150, 3600);
        let time = mapper.frame_time(timestamp(100_100), wall, mono);

        assert_eq!(time, wall_time(3_600_000 + 100_150));
    }

    #[test]
    fn frame_without_monotonic_timestamp_gets_dequeue_time() {
        let start = Instant::now();
        let mut mapper = WallClockMapper::default();
        let (wall, mono) = readings(start, 100_030, 0);
        mapper.frame_time(timestamp(100_000), wall, mono);
        let (wall, mono) = readings(start, 100_500, 0);

        let time = mapper.frame_time(None, wall, mono);

        assert_eq!(time, wall);
    }
}
