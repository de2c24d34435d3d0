//! [`GpioSignal`] and the worker thread that owns the pin.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use embedded_hal::digital::{Error as _, OutputPin};

use super::{GpioError, GpioMode};

// Design: the frame loop and the worker share the desired state through atomics, and the
// channel carries only wake-ups. One pending wake-up covers any number of state changes,
// because the worker reads the latest state when it wakes, so a full channel loses nothing
// and `set_ood` never waits.
/// Capacity of the wake-up channel.
const WAKE_CAPACITY: usize = 1;

/// Delay before a failed write is tried again. Short enough that a line recovers within a
/// second of a transient fault, long enough that a dead pin costs one write per second.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Minimum time between two write-failure warnings. The failures in between are counted and
/// reported with the next warning.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One GPIO output line driven from the gate's decisions, on its own thread.
///
/// Created by [`GpioSignal::open`] from the configuration, or by [`GpioSignal::with_pin`]
/// from any `embedded_hal::digital::OutputPin`. The worker thread owns the pin: it applies
/// the state that [`set_ood`](GpioSignal::set_ood) stores, times pulses, retries failed writes
/// every second, and drives the idle level when the signal is shut down or dropped.
#[derive(Debug)]
pub struct GpioSignal {
    shared: Arc<Shared>,
    wake: SyncSender<()>,
    /// `Some` until the worker has been stopped and joined.
    worker: Option<JoinHandle<()>>,
    label: String,
}

/// State shared by the frame loop (writer) and the worker (reader).
#[derive(Debug, Default)]
struct Shared {
    /// The latest state passed to `set_ood`: true = out-of-distribution.
    ood: AtomicBool,
    /// In-to-out transitions so far. Pulse mode starts a pulse when it grows.
    events: AtomicU64,
    /// State changes so far. Incremented after `ood` and `events` (release), so a worker that
    /// reads it (acquire) before them observes at least that change.
    requested: AtomicU64,
    /// The value of `requested` the worker read before its last update finished.
    applied: AtomicU64,
    /// Failed pin writes, including failed retries.
    errors: AtomicU64,
    /// Set once by `shutdown` or `drop`, after which the worker drives the idle level and exits.
    stop: AtomicBool,
    /// Whether a stopped worker has been reported, so that it is logged once.
    gone_reported: AtomicBool,
}

impl GpioSignal {
    /// Starts the signal on `pin`: drives the idle level, then starts the worker thread.
    ///
    /// `active_low` makes the active level low and the idle level high. `label` names the
    /// line in logs and errors (for example `cdev /dev/gpiochip0 line 17 "GPIO17"`).
    ///
    /// # Errors
    /// [`GpioError::InitialWrite`] if the idle level cannot be driven,
    /// [`GpioError::InvalidMode`] for a zero pulse length, and [`GpioError::Spawn`] if the
    /// thread cannot start. In every case the pin is dropped.
    pub fn with_pin<P: OutputPin + Send + 'static>(
        mut pin: P,
        mode: GpioMode,
        active_low: bool,
        label: String,
    ) -> Result<GpioSignal, GpioError> {
        if mode == (GpioMode::Pulse { pulse_ms: 0 }) {
            return Err(GpioError::InvalidMode {
                mode: mode.to_string(),
                reason: "a pulse must last at least 1 ms".to_owned(),
            });
        }

        let idle_high = active_low;
        if let Err(err) = write_level(&mut pin, idle_high) {
            return Err(GpioError::InitialWrite {
                label,
                kind: err.kind(),
                cause: format!("{err:?}"),
            });
        }

        let shared = Arc::new(Shared::default());
        let (wake, wake_receiver) = mpsc::sync_channel(WAKE_CAPACITY);
        let worker = Worker {
            pin,
            mode,
            active_low,
            shared: Arc::clone(&shared),
            label: label.clone(),
            line: Some(false),
            pulse_end: None,
            seen_events: 0,
            retry_at: None,
            warn: WarnLimit::default(),
        };
        let spawned = thread::Builder::new()
            .name("gradgate-gpio".to_owned())
            .spawn(move || worker.run(wake_receiver));
        let handle = match spawned {
            Ok(handle) => handle,
            Err(cause) => return Err(GpioError::Spawn { label, cause }),
        };

        log::info!(
            "gpio: opened {label}: mode {mode}, active-low {active_low}, idle level {}",
            level_name(idle_high)
        );
        Ok(GpioSignal {
            shared,
            wake,
            worker: Some(handle),
            label,
        })
    }

    /// Passes the gate's state to the worker: true = out-of-distribution.
    ///
    /// Never waits for the pin or the worker, and allocates nothing except when it logs, once,
    /// that the worker has stopped. Calls that repeat the current state do nothing. In level mode the line ends at the state of the latest call,
    /// but changes faster than the worker can write may merge. In pulse mode every false-to-true change starts a pulse
    /// or, during a pulse, extends it.
    pub fn set_ood(&self, ood: bool) {
        let was_ood = self.shared.ood.swap(ood, Ordering::AcqRel);
        if was_ood == ood {
            return;
        }
        if ood {
            self.shared.events.fetch_add(1, Ordering::Release);
        }
        self.shared.requested.fetch_add(1, Ordering::Release);

        match self.wake.try_send(()) {
            // A full channel already contains a wake-up, and the worker reads the latest state.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                if !self.shared.gone_reported.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "gpio: worker for {} has stopped, so the line no longer follows the \
                         gate",
                        self.label
                    );
                }
            }
        }
    }

    /// Drives the idle level, stops the worker and waits for it. Dropping the signal does
    /// the same. A pulse in progress is cut short.
    pub fn shutdown(mut self) {
        self.stop_worker();
    }

    /// Returns the number of failed pin writes so far, retries included.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Returns the line's name as used in logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits until the worker has applied every `set_ood` call made so far, or `timeout`
    /// passes, and returns whether it did. In pulse mode "applied" means the pulse has started.
    #[cfg(test)]
    pub(crate) fn wait_until_applied(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let requested = self.shared.requested.load(Ordering::Acquire);
        while self.shared.applied.load(Ordering::Acquire) < requested {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn stop_worker(&mut self) {
        let Some(handle) = self.worker.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        // A full channel already contains a wake-up, after which the worker reads `stop`.
        let _ = self.wake.try_send(());
        if handle.join().is_err() {
            log::error!(
                "gpio: worker for {} panicked, so the line is in an unknown state",
                self.label
            );
        }
    }
}

impl Drop for GpioSignal {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// The worker thread's state; it owns the pin.
struct Worker<P> {
    pin: P,
    mode: GpioMode,
    active_low: bool,
    shared: Arc<Shared>,
    label: String,
    /// The logical state last written successfully (true = active), or `None` after a
    /// failed write, when the line's level is unknown.
    line: Option<bool>,
    /// When the current pulse ends, or `None` outside a pulse.
    pulse_end: Option<Instant>,
    /// The value of `Shared::events` at the last update.
    seen_events: u64,
    /// When to retry a failed write, or `None` while the last write succeeded.
    retry_at: Option<Instant>,
    warn: WarnLimit,
}

impl<P: OutputPin> Worker<P> {
    fn run(mut self, wake: Receiver<()>) {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let received = match self.next_deadline() {
                None => wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    wake.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            };
            // Checked before the update so that a shutdown does not first apply a pending
            // state and make the line blink.
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            match received {
                Ok(()) | Err(RecvTimeoutError::Timeout) => self.update(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.drive_idle_at_shutdown();
    }

    /// Returns the earlier of the pulse end and the retry time.
    fn next_deadline(&self) -> Option<Instant> {
        match (self.pulse_end, self.retry_at) {
            (Some(end), Some(retry)) => Some(end.min(retry)),
            (end, retry) => end.or(retry),
        }
    }

    fn update(&mut self) {
        let requested = self.shared.requested.load(Ordering::Acquire);
        match self.mode {
            GpioMode::Level => {
                let ood = self.shared.ood.load(Ordering::Acquire);
                self.drive(ood);
            }
            GpioMode::Pulse { pulse_ms } => {
                self.update_pulse(Duration::from_millis(u64::from(pulse_ms)));
            }
        }
        self.shared.applied.store(requested, Ordering::Release);
    }

    /// Starts, extends or ends a pulse. Events that arrive during a pulse, or several at
    /// once, extend the pulse to `length` after the worker saw the latest one, so they yield
    /// one longer pulse and not several.
    fn update_pulse(&mut self, length: Duration) {
        let events = self.shared.events.load(Ordering::Acquire);
        if events != self.seen_events {
            self.seen_events = events;
            if self.pulse_end.is_some() {
                log::debug!(
                    "gpio: event during a pulse on {}, pulse extended",
                    self.label
                );
            } else {
                self.drive(true);
            }
            // Measured after the write, so the line stays active for at least `length`.
            self.pulse_end = Some(Instant::now() + length);
            return;
        }

        if let Some(end) = self.pulse_end {
            if Instant::now() < end {
                // Woken early, or retrying a failed start of the pulse.
                self.drive(true);
                return;
            }
            self.pulse_end = None;
        }
        self.drive(false);
    }

    /// Writes the logical state unless it is already on the line. A failure is counted,
    /// logged (rate-limited) and retried after [`RETRY_INTERVAL`].
    fn drive(&mut self, active: bool) {
        if self.line == Some(active) {
            return;
        }
        let high = active != self.active_low;
        match write_level(&mut self.pin, high) {
            Ok(()) => {
                self.line = Some(active);
                self.retry_at = None;
            }
            Err(err) => {
                self.line = None;
                self.retry_at = Some(Instant::now() + RETRY_INTERVAL);
                let total = self.shared.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(not_logged) = self.warn.next_allowed() {
                    log::warn!(
                        "gpio: failed to drive {} {}: {err:?} (embedded-hal kind {:?}); {total} \
                         write errors so far, {not_logged} not logged since the last warning; \
                         retrying every {} s",
                        self.label,
                        level_name(high),
                        err.kind(),
                        RETRY_INTERVAL.as_secs()
                    );
                }
            }
        }
    }

    fn drive_idle_at_shutdown(&mut self) {
        let idle_high = self.active_low;
        if let Err(err) = write_level(&mut self.pin, idle_high) {
            let total = self.shared.errors.fetch_add(1, Ordering::Relaxed) + 1;
            log::error!(
                "gpio: failed to drive {} {} at shutdown, so the line may stay active: {err:?} \
                 ({total} write errors in this run)",
                self.label,
                level_name(idle_high)
            );
            return;
        }
        log::info!(
            "gpio: stopped {} at idle level {}, {} write errors in this run",
            self.label,
            level_name(idle_high),
            self.shared.errors.load(Ordering::Relaxed)
        );
    }
}

/// Drives the pin high (true) or low (false).
fn write_level<P: OutputPin>(pin: &mut P, high: bool) -> Result<(), P::Error> {
    if high {
        pin.set_high()
    } else {
        pin.set_low()
    }
}

fn level_name(high: bool) -> &'static str {
    if high {
        "high"
    } else {
        "low"
    }
}

/// Rate limit for write-failure warnings: one per [`WARN_INTERVAL`].
#[derive(Debug, Default)]
struct WarnLimit {
    last: Option<Instant>,
    /// Failures not logged since the last warning.
    skipped: u64,
}

impl WarnLimit {
    /// Returns `Some(skipped)` when a warning may be logged now, with the number of failures
    /// not logged since the last one, and `None` when this failure should only be counted.
    fn next_allowed(&mut self) -> Option<u64> {
        let now = Instant::now();
        let allowed = match self.last {
            None => true,
            Some(last) => now.duration_since(last) >= WARN_INTERVAL,
        };
        if !allowed {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::gpio::{FakePin, FakePinLog};

    /// Generous bound for the worker to react on a loaded machine. No test asserts on speed.
    const WAIT: Duration = Duration::from_secs(10);

    fn start(mode: GpioMode, active_low: bool) -> (GpioSignal, FakePinLog) {
        let pin = FakePin::new();
        let log = pin.log();
        let signal = GpioSignal::with_pin(pin, mode, active_low, "fake".to_owned()).unwrap();
        (signal, log)
    }

    fn settle(signal: &GpioSignal) {
        assert!(
            signal.wait_until_applied(WAIT),
            "worker did not apply the state in {WAIT:?}"
        );
    }

    fn pulse(pulse_ms: u32) -> GpioMode {
        GpioMode::Pulse { pulse_ms }
    }

    #[test]
    fn idle_low_at_open_and_shutdown() {
        let (signal, log) = start(GpioMode::Level, false);
        assert_eq!(log.levels(), vec![false]);
        signal.shutdown();
        assert_eq!(log.levels(), vec![false, false]);
    }

    #[test]
    fn active_low_idles_high() {
        let (signal, log) = start(GpioMode::Level, true);
        assert_eq!(log.levels(), vec![true]);
        signal.shutdown();
        assert_eq!(log.levels(), vec![true, true]);
    }

    #[test]
    fn drop_drives_idle_level() {
        let (signal, log) = start(GpioMode::Level, false);
        signal.set_ood(true);
        settle(&signal);
        drop(signal);
        assert_eq!(log.levels(), vec![false, true, false]);
    }

    #[test]
    fn level_mode_follows_set_ood() {
        let (signal, log) = start(GpioMode::Level, false);
        signal.set_ood(true);
        settle(&signal);
        assert_eq!(log.levels(), vec![false, true]);

        signal.set_ood(false);
        settle(&signal);
        assert_eq!(log.levels(), vec![false, true, false]);

        signal.shutdown();
        assert_eq!(log.levels(), vec![false, true, false, false]);
    }

    #[test]
    fn level_mode_ignores_repeated_state() {
        let (signal, log) = start(GpioMode::Level, false);
        signal.set_ood(true);
        signal.set_ood(true);
        settle(&signal);
        signal.set_ood(true);
        settle(&signal);
        assert_eq!(log.levels(), vec![false, true]);
    }

    #[test]
    fn rapid_toggles_end_at_final_state() {
        for final_ood in [true, false] {
            let (signal, log) = start(GpioMode::Level, false);
            for i in 0..1000 {
                signal.set_ood(i % 2 == 0);
            }
            signal.set_ood(final_ood);
            settle(&signal);

            let levels = log.levels();
            assert_eq!(
                levels.last(),
                Some(&final_ood),
                "final_ood {final_ood}: {levels:?}"
            );
            // The worker writes only changes, so merged toggles never show as repeats.
            let repeats = levels.windows(2).filter(|pair| pair[0] == pair[1]).count();
            assert_eq!(repeats, 0, "final_ood {final_ood}: {levels:?}");
        }
    }

    #[test]
    fn newest_state_wins_while_pin_stalls() {
        let (signal, log) = start(GpioMode::Level, false);
        log.hold_writes(true);
        signal.set_ood(true);

        // The worker is now blocked in the write of `true` (or about to be) and the wake-up
        // channel fills up. None of these calls may wait for the pin.
        let (done, done_receiver) = mpsc::channel();
        thread::scope(|scope| {
            scope.spawn(|| {
                for ood in [false, true, false, true, false] {
                    signal.set_ood(ood);
                }
                done.send(()).unwrap();
            });
            let returned = done_receiver.recv_timeout(WAIT);
            log.hold_writes(false);
            assert!(returned.is_ok(), "set_ood blocked while the pin stalled");
        });

        settle(&signal);
        assert_eq!(log.levels().last(), Some(&false));
    }

    #[test]
    fn level_mode_active_low_inverts_levels() {
        let (signal, log) = start(GpioMode::Level, true);
        signal.set_ood(true);
        settle(&signal);
        signal.set_ood(false);
        settle(&signal);
        signal.shutdown();
        assert_eq!(log.levels(), vec![true, false, true, true]);
    }

    #[test]
    fn pulse_mode_pulses_once_per_event() {
        let pulse_ms = 50;
        let (signal, log) = start(pulse(pulse_ms), false);
        signal.set_ood(true);
        let writes = log.wait_for_writes(3, WAIT);
        let levels: Vec<bool> = writes.iter().map(|&(_, high)| high).collect();
        assert_eq!(levels, vec![false, true, false]);

        let length = writes[2].0 - writes[1].0;
        assert!(
            length >= Duration::from_millis(pulse_ms.into()),
            "pulse lasted {length:?}"
        );
    }

    #[test]
    fn pulse_mode_ignores_out_to_in() {
        let (signal, log) = start(pulse(20), false);
        signal.set_ood(true);
        log.wait_for_writes(3, WAIT);
        signal.set_ood(false);
        settle(&signal);
        signal.shutdown();
        assert_eq!(log.levels(), vec![false, true, false, false]);
    }

    #[test]
    fn separate_events_give_separate_pulses() {
        let pulse_ms = 30;
        let (signal, log) = start(pulse(pulse_ms), false);
        signal.set_ood(true);
        log.wait_for_writes(3, WAIT);
        signal.set_ood(false);
        signal.set_ood(true);
        let writes = log.wait_for_writes(5, WAIT);

        let levels: Vec<bool> = writes.iter().map(|&(_, high)| high).collect();
        assert_eq!(levels, vec![false, true, false, true, false]);
        let minimum = Duration::from_millis(pulse_ms.into());
        assert!(
            writes[2].0 - writes[1].0 >= minimum,
            "first pulse too short"
        );
        assert!(
            writes[4].0 - writes[3].0 >= minimum,
            "second pulse too short"
        );
    }

    #[test]
    fn event_during_pulse_extends_it() {
        // Long enough that the second event surely lands inside the first pulse.
        let pulse_ms = 1000;
        let (signal, log) = start(pulse(pulse_ms), false);
        signal.set_ood(true);
        log.wait_for_writes(2, WAIT);
        signal.set_ood(false);
        let second_event = Instant::now();
        signal.set_ood(true);
        let writes = log.wait_for_writes(3, WAIT + Duration::from_secs(2));

        let levels: Vec<bool> = writes.iter().map(|&(_, high)| high).collect();
        assert_eq!(levels, vec![false, true, false]);
        let end = writes[2].0;
        assert!(end >= second_event + Duration::from_millis(pulse_ms.into()));
    }

    #[test]
    fn pulse_mode_active_low_pulses_low() {
        let (signal, log) = start(pulse(20), true);
        signal.set_ood(true);
        let writes = log.wait_for_writes(3, WAIT);
        let levels: Vec<bool> = writes.iter().map(|&(_, high)| high).collect();
        assert_eq!(levels, vec![true, false, true]);
    }

    #[test]
    fn shutdown_during_pulse_drives_idle_at_once() {
        let (signal, log) = start(pulse(60_000), false);
        signal.set_ood(true);
        log.wait_for_writes(2, WAIT);
        signal.shutdown();
        assert_eq!(log.levels(), vec![false, true, false]);
    }

    #[test]
    fn zero_pulse_length_is_rejected() {
        let result = GpioSignal::with_pin(FakePin::new(), pulse(0), false, "fake".to_owned());
        let err = result.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid GPIO mode \"pulse:0\": a pulse must last at least 1 ms (expected level, \
             pulse, or pulse:MS with MS from 1 to 4294967295)"
        );
    }

    #[test]
    fn failing_initial_write_is_an_open_error() {
        let pin = FakePin::new();
        pin.log().set_failing(true);
        let err = GpioSignal::with_pin(pin, GpioMode::Level, false, "fake".to_owned()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to drive the idle level on fake: FakePinError (embedded-hal kind Other)"
        );
    }

    #[test]
    fn failing_pin_counts_errors_and_keeps_going() {
        let (signal, log) = start(GpioMode::Level, false);
        log.set_failing(true);
        signal.set_ood(true);
        settle(&signal);
        signal.set_ood(false);
        settle(&signal);
        signal.set_ood(true);
        settle(&signal);

        log.set_failing(false);
        signal.set_ood(false);
        settle(&signal);
        signal.set_ood(true);
        settle(&signal);

        let errors = signal.errors();
        assert!(errors >= 3, "errors {errors}");
        assert_eq!(errors, log.failed_writes());
        assert_eq!(log.levels().last(), Some(&true));
        signal.shutdown();
        assert_eq!(log.levels().last(), Some(&false));
    }

    #[test]
    fn failed_write_is_retried_until_it_succeeds() {
        let (signal, log) = start(GpioMode::Level, false);
        log.set_failing(true);
        signal.set_ood(true);
        settle(&signal);
        assert_eq!(log.levels(), vec![false]);

        // No further set_ood call: the retry timer alone must bring the line up.
        log.set_failing(false);
        let writes = log.wait_for_writes(2, WAIT);
        assert_eq!(writes.len(), 2);
        assert!(writes[1].1);
        assert!(signal.errors() >= 1);
    }

    #[test]
    fn pulse_end_write_failure_is_retried() {
        // Long enough that writes fail before the pulse ends.
        let (signal, log) = start(pulse(300), false);
        signal.set_ood(true);
        log.wait_for_writes(2, WAIT);
        log.set_failing(true);

        // Wait for the failed end of the pulse, then let the retry through.
        let deadline = Instant::now() + WAIT;
        while log.failed_writes() == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(log.failed_writes(), 1);
        log.set_failing(false);

        let writes = log.wait_for_writes(3, WAIT);
        let levels: Vec<bool> = writes.iter().map(|&(_, high)| high).collect();
        assert_eq!(levels, vec![false, true, false]);
        assert_eq!(signal.errors(), 1);
    }

    #[test]
    fn warn_limit_counts_skipped_failures() {
        let mut limit = WarnLimit::default();
        assert_eq!(limit.next_allowed(), Some(0));
        assert_eq!(limit.next_allowed(), None);
        assert_eq!(limit.next_allowed(), None);
        limit.last = Some(Instant::now() - WARN_INTERVAL);
        assert_eq!(limit.next_allowed(), Some(2));
    }
}
