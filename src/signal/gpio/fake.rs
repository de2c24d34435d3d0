//! A recording output pin for tests on machines without GPIO.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorKind, ErrorType, OutputPin};

/// An `OutputPin` that records every successful write with its time.
///
/// Pass it to [`GpioSignal::with_pin`](super::GpioSignal::with_pin) and keep its
/// [`FakePinLog`] to read the writes back, make writes fail, or block them.
#[derive(Debug, Default)]
pub struct FakePin {
    log: FakePinLog,
}

/// A cloneable handle to a [`FakePin`]'s records and switches, usable after the pin has moved
/// into a worker thread.
#[derive(Clone, Debug, Default)]
pub struct FakePinLog {
    shared: Arc<FakeShared>,
}

#[derive(Debug, Default)]
struct FakeShared {
    state: Mutex<FakeState>,
    /// Notified after every write attempt and whenever `writes_blocked` changes.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FakeState {
    /// Successful writes in order: when, and whether the line went high.
    writes: Vec<(Instant, bool)>,
    /// Write attempts that returned an error.
    failed: u64,
    /// While true, writes return [`FakePinError`] and are not recorded.
    failing: bool,
    /// While true, writes block until it is cleared.
    writes_blocked: bool,
}

/// The error a [`FakePin`] returns while failing is switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakePinError;

impl FakePin {
    /// Creates a pin with no writes recorded, not failing and not held.
    pub fn new() -> FakePin {
        FakePin::default()
    }

    /// Returns a handle to this pin's records.
    pub fn log(&self) -> FakePinLog {
        self.log.clone()
    }

    fn write(&mut self, high: bool) -> Result<(), FakePinError> {
        let mut state = self.log.lock();
        while state.writes_blocked {
            state = match self.log.shared.changed.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }

        let result = if state.failing {
            state.failed += 1;
            Err(FakePinError)
        } else {
            state.writes.push((Instant::now(), high));
            Ok(())
        };
        self.log.shared.changed.notify_all();
        result
    }
}

impl FakePinLog {
    /// Returns the successful writes so far: when, and whether the line went high.
    pub fn writes(&self) -> Vec<(Instant, bool)> {
        self.lock().writes.clone()
    }

    /// Returns the levels written so far (true = high), without times.
    pub fn levels(&self) -> Vec<bool> {
        self.lock().writes.iter().map(|&(_, high)| high).collect()
    }

    /// Returns the number of write attempts that failed.
    pub fn failed_writes(&self) -> u64 {
        self.lock().failed
    }

    /// Makes later writes fail with [`FakePinError`] (true) or succeed again (false).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Blocks later writes until called with false, to simulate a pin that stalls.
    pub fn hold_writes(&self, held: bool) {
        self.lock().writes_blocked = held;
        self.shared.changed.notify_all();
    }

    /// Waits until at least `count` writes are recorded or `timeout` has passed, and returns
    /// the writes recorded by then (fewer than `count` on timeout).
    pub fn wait_for_writes(&self, count: usize, timeout: Duration) -> Vec<(Instant, bool)> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.writes.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.writes.clone()
    }

    /// Locks the state. A panic in another thread that held the lock leaves the records
    /// readable.
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        match self.shared.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl fmt::Display for FakePinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fake pin write failed (failing switched on)")
    }
}

impl std::error::Error for FakePinError {}

impl embedded_hal::digital::Error for FakePinError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

impl ErrorType for FakePin {
    type Error = FakePinError;
}

impl OutputPin for FakePin {
    fn set_low(&mut self) -> Result<(), FakePinError> {
        self.write(false)
    }

    fn set_high(&mut self) -> Result<(), FakePinError> {
        self.write(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_pin_records_writes_in_order() {
        let mut pin = FakePin::new();
        let log = pin.log();
        pin.set_high().unwrap();
        pin.set_low().unwrap();
        pin.set_low().unwrap();
        assert_eq!(log.levels(), vec![true, false, false]);
    }

    #[test]
    fn failing_write_is_not_recorded() {
        let mut pin = FakePin::new();
        let log = pin.log();
        log.set_failing(true);
        let result = pin.set_high();
        assert_eq!(result, Err(FakePinError));
        assert_eq!(log.failed_writes(), 1);
        assert!(log.levels().is_empty());
    }

    #[test]
    fn fake_pin_error_kind_is_other() {
        assert_eq!(
            embedded_hal::digital::Error::kind(&FakePinError),
            ErrorKind::Other
        );
    }

    #[test]
    fn held_write_completes_after_release() {
        let mut pin = FakePin::new();
        let log = pin.log();
        log.hold_writes(true);
        let writer = std::thread::spawn(move || pin.set_high());

        let before_release = log.wait_for_writes(1, Duration::from_millis(50));
        assert!(before_release.is_empty());

        log.hold_writes(false);
        let after_release = log.wait_for_writes(1, Duration::from_secs(5));
        assert_eq!(after_release.len(), 1);
        assert_eq!(writer.join().unwrap(), Ok(()));
    }
}
