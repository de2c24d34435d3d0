//! The GPIO character-device backend (`/dev/gpiochipN`, through gpiocdev).
//!
//! Works on any Linux board whose kernel has the GPIO character device with uAPI v2
//! (Linux 5.10 or later), the Raspberry Pi included.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorKind, ErrorType, OutputPin};
use gpiocdev::line::Value;
use gpiocdev::{Chip, Request};

use super::{CdevLine, GpioError};

/// Consumer name the kernel shows for the requested line (`gpioinfo`).
const CONSUMER: &str = "gradgate";

/// A gpiocdev [`Request`] for one output line, as an `embedded_hal::digital::OutputPin`.
///
/// `set_high` and `set_low` set the physical level only if the request is active-high, as
/// [`GpioSignal::open`](super::GpioSignal::open) makes it. The request must contain exactly
/// one line, because with more every write fails.
#[derive(Debug)]
pub struct CdevPin {
    request: Request,
}

/// A failed write to a [`CdevPin`].
#[derive(Debug)]
pub struct CdevPinError {
    cause: gpiocdev::Error,
}

impl CdevPin {
    /// Wraps a request for one output line.
    pub fn from_request(request: Request) -> CdevPin {
        CdevPin { request }
    }

    fn write(&mut self, value: Value) -> Result<(), CdevPinError> {
        self.request
            .set_lone_value(value)
            .map_err(|cause| CdevPinError { cause })
    }
}

impl fmt::Display for CdevPinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed to set the GPIO line value: {}", self.cause)
    }
}

impl std::error::Error for CdevPinError {}

impl embedded_hal::digital::Error for CdevPinError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

impl ErrorType for CdevPin {
    type Error = CdevPinError;
}

impl OutputPin for CdevPin {
    fn set_low(&mut self) -> Result<(), CdevPinError> {
        self.write(Value::Inactive)
    }

    fn set_high(&mut self) -> Result<(), CdevPinError> {
        self.write(Value::Active)
    }
}

/// Requests `line` as an active-high output already at the idle level (high when
/// `active_low`), and returns it with its label for logs.
pub(super) fn open(
    line: &CdevLine,
    active_low: bool,
    board: Option<&str>,
) -> Result<(CdevPin, String), GpioError> {
    let (chip_path, offset) = match line {
        CdevLine::Named(name) => find_named_line(name, board)?,
        CdevLine::ChipOffset { chip, offset } => (chip.clone(), *offset),
    };

    // Opened with std first because gpiocdev turns I/O errors into bare errno values, which
    // lose the path and the error kind the messages need.
    if let Err(err) = File::open(&chip_path) {
        return Err(chip_access_error(&chip_path, err, board));
    }
    let chip_error = |err: gpiocdev::Error| GpioError::ChipOpen {
        chip: chip_path.clone(),
        board: board.map(str::to_owned),
        cause: err.to_string(),
    };
    let chip = Chip::from_path(&chip_path).map_err(chip_error)?;
    let chip_info = chip.info().map_err(chip_error)?;
    if offset >= chip_info.num_lines {
        return Err(GpioError::OffsetOutOfRange {
            chip: chip_path,
            label: chip_info.label,
            offset,
            num_lines: chip_info.num_lines,
            board: board.map(str::to_owned),
        });
    }
    let line_info = chip.line_info(offset).map_err(chip_error)?;
    if line_info.used {
        return Err(GpioError::LineBusy {
            chip: chip_path,
            offset,
            consumer: line_info.consumer,
            board: board.map(str::to_owned),
        });
    }

    let idle = if active_low {
        Value::Active
    } else {
        Value::Inactive
    };
    let requested = Request::builder()
        .on_chip(&chip_path)
        .with_line(offset)
        .with_consumer(CONSUMER)
        .as_output(idle)
        .request();
    let request = match requested {
        Ok(request) => request,
        Err(err) => {
            return Err(GpioError::LineRequest {
                chip: chip_path,
                offset,
                board: board.map(str::to_owned),
                cause: err.to_string(),
            })
        }
    };

    let mut label = format!("cdev {} line {offset}", chip_path.display());
    if !line_info.name.is_empty() {
        label.push_str(&format!(" \"{}\"", line_info.name));
    }
    Ok((CdevPin::from_request(request), label))
}

/// Maps an error from opening a chip device to the variant that names the fix.
fn chip_access_error(chip: &Path, err: io::Error, board: Option<&str>) -> GpioError {
    let chip = chip.to_path_buf();
    let board = board.map(str::to_owned);
    match err.kind() {
        io::ErrorKind::NotFound => GpioError::ChipNotFound { chip, board },
        io::ErrorKind::PermissionDenied => GpioError::ChipPermissionDenied { chip, board },
        _ => GpioError::ChipOpen {
            chip,
            board,
            cause: err.to_string(),
        },
    }
}

/// Searches every GPIO chip for a line named `name` and returns its chip and offset.
///
/// The name must be unique among the chips that could be opened. If it is found nowhere and
/// some chip could not be opened for lack of permission, that is the error, because the
/// line may be on that chip.
fn find_named_line(name: &str, board: Option<&str>) -> Result<(PathBuf, u32), GpioError> {
    // `chips` lists the /dev entries that are GPIO character devices, without opening them.
    let chip_paths = match gpiocdev::chip::chips() {
        Ok(paths) => paths,
        Err(err) => {
            return Err(GpioError::ChipOpen {
                chip: PathBuf::from("/dev"),
                board: board.map(str::to_owned),
                cause: format!("failed to list the GPIO chips: {err}"),
            })
        }
    };

    let mut searched = Vec::new();
    let mut unreadable = Vec::new();
    let mut denied = None;
    let mut found = Vec::new();
    for path in chip_paths {
        if let Err(err) = File::open(&path) {
            if err.kind() == io::ErrorKind::PermissionDenied && denied.is_none() {
                denied = Some(path.clone());
            }
            unreadable.push((path, err.to_string()));
            continue;
        }
        match lines_named(&path, name) {
            Ok(offsets) => {
                found.extend(offsets.into_iter().map(|offset| (path.clone(), offset)));
                searched.push(path);
            }
            Err(err) => unreadable.push((path, err.to_string())),
        }
    }

    let board = board.map(str::to_owned);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => match denied {
            Some(chip) => Err(GpioError::ChipPermissionDenied { chip, board }),
            None => Err(GpioError::LineNameNotFound {
                name: name.to_owned(),
                searched,
                unreadable,
                board,
            }),
        },
        _ => Err(GpioError::LineNameNotUnique {
            name: name.to_owned(),
            lines: found,
            board,
        }),
    }
}

/// Returns the offsets of the lines on `chip` named `name`.
fn lines_named(chip: &Path, name: &str) -> Result<Vec<u32>, gpiocdev::Error> {
    let chip = Chip::from_path(chip)?;
    let num_lines = chip.info()?.num_lines;
    let mut offsets = Vec::new();
    for offset in 0..num_lines {
        if chip.line_info(offset)?.name == name {
            offsets.push(offset);
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::gpio::{GpioConfig, GpioMode, GpioSignal, GpioSpec};

    fn open_error(spec: &str, board: Option<&str>) -> String {
        let config = GpioConfig {
            spec: spec.parse::<GpioSpec>().unwrap(),
            mode: GpioMode::Level,
            active_low: false,
        };
        match GpioSignal::open(&config, board) {
            Ok(_) => panic!("{spec} opened, expected an error on a machine without GPIO"),
            Err(err) => err.to_string(),
        }
    }

    fn has_gpio_chips() -> bool {
        matches!(gpiocdev::chip::chips(), Ok(chips) if !chips.is_empty())
    }

    #[test]
    fn missing_chip_error_names_fix() {
        if Path::new("/dev/gpiochip9").exists() {
            eprintln!("skipped: /dev/gpiochip9 exists on this machine");
            return;
        }
        let message = open_error("cdev:gpiochip9:3", Some("jetson-orin-nano"));
        assert_eq!(
            message,
            "GPIO chip /dev/gpiochip9 not found (board profile \"jetson-orin-nano\"): list the \
             chips with gpiodetect or ls /dev/gpiochip*, select the line by name \
             (cdev:LINE_NAME) because chip numbers differ between boards and kernels, pass the \
             device into a container with --device /dev/gpiochip9, or run with --gpio none"
        );
    }

    #[test]
    fn missing_chip_without_board_profile() {
        if Path::new("/dev/gpiochip9").exists() {
            eprintln!("skipped: /dev/gpiochip9 exists on this machine");
            return;
        }
        let message = open_error("cdev:/dev/gpiochip9:3", None);
        assert!(
            message.starts_with("GPIO chip /dev/gpiochip9 not found: "),
            "{message}"
        );
    }

    #[test]
    fn unknown_line_name_lists_searched_chips() {
        if has_gpio_chips() {
            eprintln!("skipped: this machine has GPIO chips, so the message lists them");
            return;
        }
        let message = open_error("cdev:NO_SUCH_LINE", None);
        assert_eq!(
            message,
            "no GPIO chip has a line named \"NO_SUCH_LINE\" (searched no chip: no \
             /dev/gpiochip* device exists on this machine): list the line names with gpioinfo, \
             use cdev:gpiochipN:OFFSET, or run with --gpio none"
        );
    }

    #[test]
    fn line_name_error_lists_unreadable_chips() {
        let err = GpioError::LineNameNotFound {
            name: "GPIO17".to_owned(),
            searched: vec![
                PathBuf::from("/dev/gpiochip0"),
                PathBuf::from("/dev/gpiochip1"),
            ],
            unreadable: vec![(PathBuf::from("/dev/gpiochip2"), "No such device".to_owned())],
            board: Some("pi5".to_owned()),
        };
        assert_eq!(
            err.to_string(),
            "no GPIO chip has a line named \"GPIO17\" (board profile \"pi5\") (searched \
             /dev/gpiochip0, /dev/gpiochip1; could not open /dev/gpiochip2: No such device): \
             list the line names with gpioinfo, use cdev:gpiochipN:OFFSET, or run with --gpio \
             none"
        );
    }

    #[test]
    fn permission_error_names_gpio_group() {
        let err = chip_access_error(
            Path::new("/dev/gpiochip0"),
            io::Error::from(io::ErrorKind::PermissionDenied),
            Some("pi4"),
        );
        assert_eq!(
            err.to_string(),
            "permission denied opening GPIO chip /dev/gpiochip0 (board profile \"pi4\"): add \
             the user to the gpio group (sudo usermod -aG gpio $USER, then log in again), check \
             the owner and mode of /dev/gpiochip0 (ls -l /dev/gpiochip0), or run with --gpio \
             none"
        );
    }

    #[test]
    fn not_a_gpio_chip_is_an_open_error() {
        // /dev/null exists and opens, but is not a GPIO character device.
        let line = CdevLine::ChipOffset {
            chip: PathBuf::from("/dev/null"),
            offset: 0,
        };
        let err = open(&line, false, None).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("failed to open GPIO chip /dev/null: "),
            "{message}"
        );
        assert!(
            message.contains("is not a GPIO character device"),
            "{message}"
        );
    }

    #[test]
    fn line_busy_error_names_consumer() {
        let err = GpioError::LineBusy {
            chip: PathBuf::from("/dev/gpiochip0"),
            offset: 17,
            consumer: "pigpiod".to_owned(),
            board: None,
        };
        assert_eq!(
            err.to_string(),
            "GPIO line 17 on /dev/gpiochip0 is already in use by \"pigpiod\": stop that program \
             or driver (gpioinfo /dev/gpiochip0 shows the consumer) or choose another line"
        );
    }

    #[test]
    fn offset_error_gives_valid_range() {
        let err = GpioError::OffsetOutOfRange {
            chip: PathBuf::from("/dev/gpiochip0"),
            label: "pinctrl-rp1".to_owned(),
            offset: 60,
            num_lines: 54,
            board: None,
        };
        assert_eq!(
            err.to_string(),
            "line offset 60 is out of range for GPIO chip /dev/gpiochip0 (pinctrl-rp1, 54 \
             lines, offsets 0 to 53): list the lines with gpioinfo /dev/gpiochip0"
        );
    }
}
