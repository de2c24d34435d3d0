//! The error type of the GPIO signal.

use std::path::PathBuf;

use embedded_hal::digital::ErrorKind;

/// The accepted spec forms, listed in every spec error.
const SPEC_FORMS: &str = "none, rppal:BCM with BCM 0 to 27, cdev:LINE_NAME, cdev:gpiochipN:OFFSET \
     or cdev:/dev/gpiochipN:OFFSET";

/// Errors from parsing the GPIO configuration and from opening a GPIO line.
///
/// Every message names the value that failed and what to do, and already contains its cause:
/// `source()` returns `None`, so printing the chain does not repeat it. Run-time write errors
/// are not returned at all: the worker logs and counts them (see [`super::GpioSignal::errors`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpioError {
    /// The `--gpio` value or the `line` key is not one of the accepted forms.
    #[error("invalid GPIO spec \"{spec}\": {reason} (expected {forms})", forms = SPEC_FORMS)]
    InvalidSpec {
        /// The text as given.
        spec: String,
        /// The problem found.
        reason: String,
    },

    /// The GPIO mode is neither `level` nor `pulse`, or the pulse length is invalid.
    #[error(
        "invalid GPIO mode \"{mode}\": {reason} (expected level, pulse, or pulse:MS with MS \
         from 1 to {max})",
        max = u32::MAX
    )]
    InvalidMode {
        /// The text as given.
        mode: String,
        /// The problem found.
        reason: String,
    },

    /// The configuration file sets a pulse length for level mode, where it has no effect.
    #[error(
        "GPIO pulse_ms = {pulse_ms} is set but mode is \"level\": set mode = \"pulse\" or remove \
         pulse_ms"
    )]
    PulseLengthInLevelMode {
        /// The pulse length found, in milliseconds.
        pulse_ms: u32,
    },

    /// The spec names a backend whose cargo feature was disabled at build time.
    #[error(
        "GPIO backend {backend} is not compiled into this build: rebuild with cargo feature \
         {feature} (cargo build --features {feature}) or run with --gpio none"
    )]
    BackendDisabled {
        /// The backend name as in the spec (`rppal` or `cdev`).
        backend: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },

    /// The GPIO character device does not exist.
    #[error(
        "GPIO chip {chip} not found{board}: list the chips with gpiodetect or ls /dev/gpiochip*, \
         select the line by name (cdev:LINE_NAME) because chip numbers differ between boards and \
         kernels, pass the device into a container with --device {chip}, or run with --gpio none",
        chip = .chip.display(),
        board = board_note(.board)
    )]
    ChipNotFound {
        /// The device path.
        chip: PathBuf,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// The process may not open the GPIO character device.
    #[error(
        "permission denied opening GPIO chip {chip}{board}: add the user to the gpio group \
         (sudo usermod -aG gpio $USER, then log in again), check the owner and mode of {chip} \
         (ls -l {chip}), or run with --gpio none",
        chip = .chip.display(),
        board = board_note(.board)
    )]
    ChipPermissionDenied {
        /// The device path.
        chip: PathBuf,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// Opening or querying the GPIO character device failed for another reason.
    #[error(
        "failed to open GPIO chip {chip}{board}: {cause}; check the spec or run with --gpio none",
        chip = .chip.display(),
        board = board_note(.board)
    )]
    ChipOpen {
        /// The device path.
        chip: PathBuf,
        /// The board profile in use, if any.
        board: Option<String>,
        /// The error from the operating system or from gpiocdev, as text.
        cause: String,
    },

    /// The line offset is not on the chip.
    #[error(
        "line offset {offset} is out of range for GPIO chip {chip} ({label}, {num_lines} lines, \
         offsets 0 to {last}){board}: list the lines with gpioinfo {chip}",
        chip = .chip.display(),
        last = .num_lines.saturating_sub(1),
        board = board_note(.board)
    )]
    OffsetOutOfRange {
        /// The device path.
        chip: PathBuf,
        /// The chip's label, as the kernel reports it.
        label: String,
        /// The requested offset.
        offset: u32,
        /// The number of lines on the chip.
        num_lines: u32,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// Another program or driver has requested the line.
    #[error(
        "GPIO line {offset} on {chip} is already in use by \"{consumer}\"{board}: stop that \
         program or driver (gpioinfo {chip} shows the consumer) or choose another line",
        chip = .chip.display(),
        board = board_note(.board)
    )]
    LineBusy {
        /// The device path.
        chip: PathBuf,
        /// The line offset.
        offset: u32,
        /// The consumer the kernel reports for the line, possibly empty.
        consumer: String,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// The kernel rejected the line request.
    #[error(
        "failed to request GPIO line {offset} on {chip} as an output{board}: {cause}",
        chip = .chip.display(),
        board = board_note(.board)
    )]
    LineRequest {
        /// The device path.
        chip: PathBuf,
        /// The line offset.
        offset: u32,
        /// The board profile in use, if any.
        board: Option<String>,
        /// gpiocdev's error, as text.
        cause: String,
    },

    /// No GPIO chip has a line with the requested name.
    #[error(
        "no GPIO chip has a line named \"{name}\"{board} (searched {searched}): list the line \
         names with gpioinfo, use cdev:gpiochipN:OFFSET, or run with --gpio none",
        searched = searched_note(.searched, .unreadable),
        board = board_note(.board)
    )]
    LineNameNotFound {
        /// The requested line name.
        name: String,
        /// The chips whose lines were searched.
        searched: Vec<PathBuf>,
        /// The chips that could not be opened, each with the reason.
        unreadable: Vec<(PathBuf, String)>,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// More than one line has the requested name, so the name does not select one line.
    #[error(
        "GPIO line name \"{name}\" is not unique{board}: it names {lines}; use \
         cdev:gpiochipN:OFFSET to select one",
        lines = lines_note(.lines),
        board = board_note(.board)
    )]
    LineNameNotUnique {
        /// The requested line name.
        name: String,
        /// Each chip and offset that carries the name.
        lines: Vec<(PathBuf, u32)>,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// rppal could not identify the board as a Raspberry Pi.
    #[error(
        "rppal cannot open GPIO {bcm}{board}: rppal reports UnknownModel because it found no \
         Raspberry Pi model in /proc/cpuinfo or the device tree (/proc/device-tree, \
         /sys/firmware/devicetree/base); this is not a Raspberry Pi, or it is a container \
         started without the device tree and /dev/gpiomem (Pi 4) or /dev/gpiomem0 (Pi 5). \
         Use cdev:GPIO{bcm} through the GPIO character device, or run with --gpio none",
        board = board_note(.board)
    )]
    RppalUnknownModel {
        /// The BCM GPIO number.
        bcm: u8,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// rppal may not open a GPIO device.
    #[error(
        "rppal cannot open GPIO {bcm}{board}: permission denied opening {path}; add the user to \
         the gpio group (sudo usermod -aG gpio $USER, then log in again), check the owner and \
         mode of {path} (ls -l {path}), or run with --gpio none",
        board = board_note(.board)
    )]
    RppalPermissionDenied {
        /// The BCM GPIO number.
        bcm: u8,
        /// The device rppal failed to open, as rppal reports it.
        path: String,
        /// The board profile in use, if any.
        board: Option<String>,
    },

    /// A device rppal needs does not exist.
    #[error(
        "rppal cannot open GPIO {bcm}{board}: a GPIO device is missing ({cause}); rppal needs \
         /dev/gpiomem (Pi 4) or /dev/gpiomem0 (Pi 5) and /dev/gpiochip*, which a container \
         must be given with --device. Use cdev:GPIO{bcm}, or run with --gpio none",
        board = board_note(.board)
    )]
    RppalDeviceNotFound {
        /// The BCM GPIO number.
        bcm: u8,
        /// The board profile in use, if any.
        board: Option<String>,
        /// rppal's error, as text. rppal does not name the missing device.
        cause: String,
    },

    /// rppal failed for another reason, such as the pin being in use.
    #[error(
        "rppal cannot open GPIO {bcm}{board}: {cause}; use cdev:GPIO{bcm}, or run with --gpio \
         none",
        board = board_note(.board)
    )]
    Rppal {
        /// The BCM GPIO number.
        bcm: u8,
        /// The board profile in use, if any.
        board: Option<String>,
        /// rppal's error, as text.
        cause: String,
    },

    /// Driving the idle level when the line was opened failed.
    #[error("failed to drive the idle level on {label}: {cause} (embedded-hal kind {kind:?})")]
    InitialWrite {
        /// The line, as named in logs.
        label: String,
        /// The pin's error kind.
        kind: ErrorKind,
        /// The pin's error, in its `Debug` form (embedded-hal errors need not implement
        /// `Display`).
        cause: String,
    },

    /// The worker thread could not be started.
    #[error("failed to start the GPIO worker thread for {label}: {cause}")]
    Spawn {
        /// The line, as named in logs.
        label: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
}

/// Formats the board profile for a message: empty without one.
fn board_note(board: &Option<String>) -> String {
    match board {
        Some(name) => format!(" (board profile \"{name}\")"),
        None => String::new(),
    }
}

/// Lists the searched and the unreadable chips for [`GpioError::LineNameNotFound`].
fn searched_note(searched: &[PathBuf], unreadable: &[(PathBuf, String)]) -> String {
    let mut note = if searched.is_empty() {
        String::from("no chip")
    } else {
        join_paths(searched.iter())
    };
    if searched.is_empty() && unreadable.is_empty() {
        note.push_str(": no /dev/gpiochip* device exists on this machine");
    }
    for (chip, reason) in unreadable {
        note.push_str(&format!("; could not open {}: {reason}", chip.display()));
    }
    note
}

/// Lists chip and offset pairs for [`GpioError::LineNameNotUnique`].
fn lines_note(lines: &[(PathBuf, u32)]) -> String {
    let parts: Vec<String> = lines
        .iter()
        .map(|(chip, offset)| format!("{} offset {offset}", chip.display()))
        .collect();
    parts.join(" and ")
}

fn join_paths<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> String {
    let parts: Vec<String> = paths.map(|path| path.display().to_string()).collect();
    parts.join(", ")
}
