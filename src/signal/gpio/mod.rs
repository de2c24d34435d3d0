//! GPIO output: one line that shows the gate's out-of-distribution state.
//!
//! Part of the last stage of the data path (frame → tensor → activations → score → gate →
//! **signal**). The frame loop passes each debounced state to [`GpioSignal::set_ood`], which
//! never blocks. A worker thread owns the pin and drives it:
//!
//! - [`GpioMode::Level`]: the line is active while out-of-distribution.
//! - [`GpioMode::Pulse`]: the line is active for `pulse_ms` after each in-to-out transition.
//!   An event during a pulse extends that pulse to `pulse_ms` after the event.
//!
//! With `active_low`, active is low and idle is high. The idle level is driven when the
//! line is opened and again at shutdown.
//!
//! Main types: [`GpioConfig`] (the `[gpio]` table), [`GpioSpec`] (which line, from `--gpio`),
//! [`GpioMode`], [`GpioSignal`] (the running signal) and [`GpioError`]. Pins sit behind
//! `embedded_hal::digital::OutputPin`: rppal's `OutputPin` on a Raspberry Pi (cargo feature
//! `gpio-rppal`), [`CdevPin`] on the GPIO character device (cargo feature `gpio-cdev`), and
//! [`FakePin`] in tests.
//!
//! Spec forms for `--gpio` and `line`:
//!
//! | spec                           | line                                                 |
//! |--------------------------------|------------------------------------------------------|
//! | `none`                         | no GPIO output                                       |
//! | `rppal:17`                     | BCM GPIO 17 through rppal (Raspberry Pi 4 and 5)     |
//! | `cdev:GPIO17`                  | the line the device tree names `GPIO17`, on any chip |
//! | `cdev:gpiochip0:17`            | offset 17 on `/dev/gpiochip0`                        |
//! | `cdev:/dev/gpiochip0:17`       | the same, as a path                                  |
//!
//! ```no_run
//! use gradgate::signal::gpio::{GpioConfig, GpioMode, GpioSignal};
//!
//! let config = GpioConfig {
//!     spec: "cdev:GPIO17".parse()?,
//!     mode: GpioMode::Pulse { pulse_ms: 200 },
//!     active_low: false,
//! };
//! if let Some(signal) = GpioSignal::open(&config, None)? {
//!     signal.set_ood(true); // one 200 ms pulse
//!     signal.shutdown(); // idle level, worker joined
//! }
//! # Ok::<(), gradgate::signal::gpio::GpioError>(())
//! ```
//!
//! # Important notes
//! - Driving a line does not prove that the relay closed or the lamp lit: nothing reads the
//!   wire back.
//! - Chip numbers are not stable: on a Raspberry Pi 5 the header chip moved from gpiochip4
//!   to gpiochip0 between kernel releases, and other boards number their chips in probe order.
//!   Select lines by name (`cdev:GPIO17`) where the board's device tree names them.
//! - Opening `/dev/gpiochipN`, `/dev/gpiomem` or `/dev/gpiomem0` needs permission: on
//!   Raspberry Pi OS, membership in the `gpio` group. In a container, pass the devices in.
//! - Pin writes that fail at run time are logged (rate-limited), counted in
//!   [`GpioSignal::errors`] and retried every second; they never end the run.
//! - After the process ends, an rppal pin stays an output at the idle level. A line released
//!   by the character device keeps or loses its level depending on the kernel driver.
//! - The character-device backend uses uAPI v2, which needs Linux 5.10 or later.

#![deny(missing_docs)]

#[cfg(feature = "gpio-cdev")]
mod cdev;
mod error;
mod fake;
#[cfg(feature = "gpio-rppal")]
mod rppal;
mod spec;
mod worker;

#[cfg(feature = "gpio-cdev")]
pub use cdev::{CdevPin, CdevPinError};
pub use error::GpioError;
pub use fake::{FakePin, FakePinError, FakePinLog};
pub use spec::{CdevLine, GpioConfig, GpioMode, GpioSpec, DEFAULT_PULSE_MS, MAX_HEADER_BCM};
pub use worker::GpioSignal;

impl GpioSignal {
    /// Opens the configured line and starts the signal; `Ok(None)` for [`GpioSpec::None`].
    ///
    /// The line is requested at its idle level, which is driven again before this returns.
    /// `board` is the board profile's name, quoted in errors so that the operator knows
    /// which profile chose the line.
    ///
    /// # Errors
    /// A [`GpioError`] that names the device, the board profile and the fix. Causes: the chip
    /// or line does not exist, permission is denied, or the line is in use. rppal may not
    /// recognise the board, or the backend's cargo feature may be disabled in this build.
    pub fn open(config: &GpioConfig, board: Option<&str>) -> Result<Option<GpioSignal>, GpioError> {
        let signal = match &config.spec {
            GpioSpec::None => {
                log::info!("gpio: disabled (spec none)");
                return Ok(None);
            }
            GpioSpec::Rppal { bcm } => open_rppal(*bcm, config, board)?,
            GpioSpec::Cdev(line) => open_cdev(line, config, board)?,
        };
        Ok(Some(signal))
    }
}

#[cfg(feature = "gpio-rppal")]
fn open_rppal(bcm: u8, config: &GpioConfig, board: Option<&str>) -> Result<GpioSignal, GpioError> {
    let (pin, label) = rppal::open(bcm, config.active_low, board)?;
    GpioSignal::with_pin(pin, config.mode, config.active_low, label)
}

#[cfg(not(feature = "gpio-rppal"))]
fn open_rppal(_: u8, _: &GpioConfig, _: Option<&str>) -> Result<GpioSignal, GpioError> {
    Err(GpioError::BackendDisabled {
        backend: "rppal",
        feature: "gpio-rppal",
    })
}

#[cfg(feature = "gpio-cdev")]
fn open_cdev(
    line: &CdevLine,
    config: &GpioConfig,
    board: Option<&str>,
) -> Result<GpioSignal, GpioError> {
    let (pin, label) = cdev::open(line, config.active_low, board)?;
    GpioSignal::with_pin(pin, config.mode, config.active_low, label)
}

#[cfg(not(feature = "gpio-cdev"))]
fn open_cdev(_: &CdevLine, _: &GpioConfig, _: Option<&str>) -> Result<GpioSignal, GpioError> {
    Err(GpioError::BackendDisabled {
        backend: "cdev",
        feature: "gpio-cdev",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spec: &str) -> GpioConfig {
        GpioConfig {
            spec: spec.parse().unwrap(),
            mode: GpioMode::Level,
            active_low: false,
        }
    }

    #[test]
    fn open_none_returns_no_signal() {
        let opened = GpioSignal::open(&config("none"), Some("pi5")).unwrap();
        assert!(opened.is_none());
    }

    #[cfg(not(feature = "gpio-rppal"))]
    #[test]
    fn open_rppal_without_feature_names_feature() {
        let err = GpioSignal::open(&config("rppal:17"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GPIO backend rppal is not compiled into this build: rebuild with cargo feature \
             gpio-rppal (cargo build --features gpio-rppal) or run with --gpio none"
        );
    }

    #[cfg(not(feature = "gpio-cdev"))]
    #[test]
    fn open_cdev_without_feature_names_feature() {
        let err = GpioSignal::open(&config("cdev:GPIO17"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GPIO backend cdev is not compiled into this build: rebuild with cargo feature \
             gpio-cdev (cargo build --features gpio-cdev) or run with --gpio none"
        );
    }
}
