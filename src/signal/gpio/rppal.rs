//! The Raspberry Pi backend (rppal 0.22, Pi 4 and Pi 5).
//!
//! rppal's maintainer retired the crate on 1 July 2025 (github.com/golemparts/rppal), and
//! version 0.22 recognises models up to the Pi 5 and Compute Module 5. The character-device
//! backend (`cdev:GPIO17`) drives the same header pins and is the fallback.

use std::io;

use ::rppal::gpio::{Error as RppalError, Gpio, OutputPin};

use super::GpioError;

/// Takes BCM pin `bcm` as an output already at the idle level (high when `active_low`), and
/// returns it with its label for logs.
///
/// The pin is set not to reset on drop, so after the signal has driven the idle level at
/// shutdown the pin stays an output at that level when the process ends. rppal's default
/// would return it to its previous mode, usually a floating input.
pub(super) fn open(
    bcm: u8,
    active_low: bool,
    board: Option<&str>,
) -> Result<(OutputPin, String), GpioError> {
    let gpio = Gpio::new().map_err(|err| open_error(bcm, err, board))?;
    let pin = gpio.get(bcm).map_err(|err| open_error(bcm, err, board))?;
    let mut output = if active_low {
        pin.into_output_high()
    } else {
        pin.into_output_low()
    };
    output.set_reset_on_drop(false);
    Ok((output, format!("rppal BCM {bcm}")))
}

/// Maps rppal's error to the variant that names the cause and the fix.
fn open_error(bcm: u8, err: RppalError, board: Option<&str>) -> GpioError {
    let board = board.map(str::to_owned);
    match err {
        RppalError::UnknownModel => GpioError::RppalUnknownModel { bcm, board },
        RppalError::PermissionDenied(path) => GpioError::RppalPermissionDenied { bcm, path, board },
        RppalError::Io(err) if err.kind() == io::ErrorKind::NotFound => {
            GpioError::RppalDeviceNotFound {
                bcm,
                board,
                cause: err.to_string(),
            }
        }
        other => GpioError::Rppal {
            bcm,
            board,
            cause: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::gpio::{GpioConfig, GpioMode, GpioSignal, GpioSpec};

    /// True where rppal can identify a Raspberry Pi, so the off-board test does not apply.
    fn is_raspberry_pi() -> bool {
        ::rppal::system::DeviceInfo::new().is_ok()
    }

    #[test]
    fn off_board_error_names_unknown_model() {
        if is_raspberry_pi() {
            eprintln!("skipped: this machine is a Raspberry Pi");
            return;
        }
        let config = GpioConfig {
            spec: GpioSpec::Rppal { bcm: 17 },
            mode: GpioMode::Level,
            active_low: false,
        };
        let err = GpioSignal::open(&config, Some("pi5")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rppal cannot open GPIO 17 (board profile \"pi5\"): rppal reports UnknownModel \
             because it found no Raspberry Pi model in /proc/cpuinfo or the device tree \
             (/proc/device-tree, /sys/firmware/devicetree/base); this is not a Raspberry Pi, or \
             it is a container started without the device tree and /dev/gpiomem (Pi 4) or \
             /dev/gpiomem0 (Pi 5). Use cdev:GPIO17 through the GPIO character device, or run \
             with --gpio none"
        );
    }

    #[test]
    fn permission_error_names_gpio_group() {
        let err = open_error(
            17,
            RppalError::PermissionDenied("/dev/gpiomem".to_owned()),
            None,
        );
        assert_eq!(
            err.to_string(),
            "rppal cannot open GPIO 17: permission denied opening /dev/gpiomem; add the user to \
             the gpio group (sudo usermod -aG gpio $USER, then log in again), check the owner \
             and mode of /dev/gpiomem (ls -l /dev/gpiomem), or run with --gpio none"
        );
    }

    #[test]
    fn pin_in_use_keeps_rppal_message() {
        let err = open_error(17, RppalError::PinUsed(17), None);
        assert_eq!(
            err.to_string(),
            "rppal cannot open GPIO 17: Pin 17 is already in use; use cdev:GPIO17, or run with \
             --gpio none"
        );
    }

    #[test]
    fn missing_device_names_gpiomem() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let err = open_error(17, RppalError::Io(missing), None);
        assert_eq!(
            err.to_string(),
            "rppal cannot open GPIO 17: a GPIO device is missing (entity not found); rppal needs \
             /dev/gpiomem (Pi 4) or /dev/gpiomem0 (Pi 5) and /dev/gpiochip*, which a container \
             must be given with --device. Use cdev:GPIO17, or run with --gpio none"
        );
    }
}
