//! GPIO configuration: which line to drive (`--gpio`, `[gpio] line`) and how.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::GpioError;

/// Highest BCM GPIO number on the Raspberry Pi 40-pin header.
pub const MAX_HEADER_BCM: u8 = 27;

/// Pulse length when the mode is `pulse` without a length, in milliseconds. Chosen to exceed
/// a PLC input scan cycle of up to 100 ms and a relay's pull-in time (an estimate, not
/// measured on hardware).
pub const DEFAULT_PULSE_MS: u32 = 200;

/// Which GPIO line drives the signal, and through which backend.
///
/// Parsed from `none`, `rppal:BCM`, `cdev:LINE_NAME`, `cdev:gpiochipN:OFFSET` or
/// `cdev:/dev/gpiochipN:OFFSET`. [`Display`](fmt::Display) prints the same forms back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum GpioSpec {
    /// No GPIO output.
    None,
    /// A Raspberry Pi header pin through rppal.
    Rppal {
        /// BCM GPIO number, 0 to [`MAX_HEADER_BCM`].
        bcm: u8,
    },
    /// A line of the GPIO character device (`/dev/gpiochipN`) through gpiocdev.
    Cdev(CdevLine),
}

/// How a GPIO character-device line is selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CdevLine {
    /// The line whose name, as the board's device tree gives it, equals this string, searched
    /// on every `/dev/gpiochip*`. Prefer this form: chip numbers differ between boards and
    /// kernels (the Raspberry Pi 5 header moved from gpiochip4 to gpiochip0).
    Named(String),
    /// A line offset on one chip.
    ChipOffset {
        /// The character device, always a path: `gpiochip0` in a spec becomes `/dev/gpiochip0`.
        chip: PathBuf,
        /// The line offset on that chip.
        offset: u32,
    },
}

impl FromStr for GpioSpec {
    type Err = GpioError;

    fn from_str(text: &str) -> Result<GpioSpec, GpioError> {
        let invalid = |reason: String| GpioError::InvalidSpec {
            spec: text.to_owned(),
            reason,
        };

        if text.is_empty() {
            return Err(invalid("the spec is empty".to_owned()));
        }
        if text == "none" {
            return Ok(GpioSpec::None);
        }
        let Some((backend, line)) = text.split_once(':') else {
            return Err(invalid(format!("unknown backend \"{text}\"")));
        };
        match backend {
            "rppal" => parse_rppal(line).map_err(invalid),
            "cdev" => parse_cdev(line).map(GpioSpec::Cdev).map_err(invalid),
            "none" => Err(invalid("none takes no line".to_owned())),
            _ => Err(invalid(format!("unknown backend \"{backend}\""))),
        }
    }
}

/// Parses the part after `rppal:`. The error is only the reason, without the spec.
fn parse_rppal(line: &str) -> Result<GpioSpec, String> {
    let Ok(bcm) = line.parse::<u32>() else {
        return Err(format!(
            "BCM number \"{line}\" is not a number from 0 to 27"
        ));
    };
    match u8::try_from(bcm) {
        Ok(bcm) if bcm <= MAX_HEADER_BCM => Ok(GpioSpec::Rppal { bcm }),
        _ => Err(format!(
            "BCM number {bcm} is not on the 40-pin header, which has GPIO 0 to {MAX_HEADER_BCM}"
        )),
    }
}

/// Parses the part after `cdev:`. The error is only the reason, without the spec.
///
/// A `:` in the rest means the chip and offset form, so line names containing `:` cannot be
/// selected by name.
fn parse_cdev(line: &str) -> Result<CdevLine, String> {
    if line.is_empty() {
        return Err("the line name is empty".to_owned());
    }
    let Some((chip, offset)) = line.rsplit_once(':') else {
        return Ok(CdevLine::Named(line.to_owned()));
    };

    let chip = if chip.starts_with('/') {
        PathBuf::from(chip)
    } else if is_chip_name(chip) {
        PathBuf::from("/dev").join(chip)
    } else {
        return Err(format!(
            "chip \"{chip}\" is neither gpiochipN nor a path such as /dev/gpiochipN"
        ));
    };
    let Ok(offset) = offset.parse::<u32>() else {
        return Err(format!(
            "line offset \"{offset}\" is not a non-negative integer"
        ));
    };
    Ok(CdevLine::ChipOffset { chip, offset })
}

/// True for `gpiochip` followed by one or more ASCII digits.
fn is_chip_name(text: &str) -> bool {
    match text.strip_prefix("gpiochip") {
        Some(number) => !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

impl TryFrom<String> for GpioSpec {
    type Error = GpioError;

    fn try_from(text: String) -> Result<GpioSpec, GpioError> {
        text.parse()
    }
}

impl fmt::Display for GpioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpioSpec::None => f.write_str("none"),
            GpioSpec::Rppal { bcm } => write!(f, "rppal:{bcm}"),
            GpioSpec::Cdev(line) => write!(f, "cdev:{line}"),
        }
    }
}

impl fmt::Display for CdevLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdevLine::Named(name) => f.write_str(name),
            CdevLine::ChipOffset { chip, offset } => write!(f, "{}:{offset}", chip.display()),
        }
    }
}

/// What the line shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpioMode {
    /// Active while the gate is out-of-distribution, idle otherwise.
    Level,
    /// Active for `pulse_ms` after each in-to-out transition, then idle. An event during a
    /// pulse extends the pulse to `pulse_ms` after that event.
    Pulse {
        /// Pulse length in milliseconds, at least 1.
        pulse_ms: u32,
    },
}

impl FromStr for GpioMode {
    type Err = GpioError;

    /// Parses `level`, `pulse` (with [`DEFAULT_PULSE_MS`]) or `pulse:MS`.
    fn from_str(text: &str) -> Result<GpioMode, GpioError> {
        let invalid = |reason: String| GpioError::InvalidMode {
            mode: text.to_owned(),
            reason,
        };

        match text {
            "level" => return Ok(GpioMode::Level),
            "pulse" => {
                return Ok(GpioMode::Pulse {
                    pulse_ms: DEFAULT_PULSE_MS,
                })
            }
            _ => {}
        }
        let Some(length) = text.strip_prefix("pulse:") else {
            return Err(invalid("unknown mode".to_owned()));
        };
        match length.parse::<u32>() {
            Ok(0) => Err(invalid("a pulse must last at least 1 ms".to_owned())),
            Ok(pulse_ms) => Ok(GpioMode::Pulse { pulse_ms }),
            Err(_) => Err(invalid(format!(
                "pulse length \"{length}\" is not a whole number of milliseconds"
            ))),
        }
    }
}

impl fmt::Display for GpioMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpioMode::Level => f.write_str("level"),
            GpioMode::Pulse { pulse_ms } => write!(f, "pulse:{pulse_ms}"),
        }
    }
}

/// The `[gpio]` configuration.
///
/// In a TOML configuration file:
///
/// ```toml
/// [gpio]
/// line = "cdev:GPIO17"   # required: a spec as for --gpio
/// mode = "pulse"         # "level" (default) or "pulse"
/// pulse_ms = 200         # pulse mode only; default 200
/// active_low = false     # default false
/// ```
///
/// Unknown keys are rejected, and so is `pulse_ms` with `mode = "level"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "GpioConfigFile")]
pub struct GpioConfig {
    /// The line and backend.
    pub spec: GpioSpec,
    /// Level or pulse.
    pub mode: GpioMode,
    /// Drive the line low when active and high when idle, as many relay boards expect.
    pub active_low: bool,
}

impl Default for GpioConfig {
    /// No GPIO output: level mode, active-high.
    fn default() -> GpioConfig {
        GpioConfig {
            spec: GpioSpec::None,
            mode: GpioMode::Level,
            active_low: false,
        }
    }
}

/// The `[gpio]` table as written in the file, before the keys are checked together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpioConfigFile {
    line: GpioSpec,
    #[serde(default = "default_mode_name")]
    mode: ModeName,
    pulse_ms: Option<u32>,
    #[serde(default)]
    active_low: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    Level,
    Pulse,
}

fn default_mode_name() -> ModeName {
    ModeName::Level
}

impl TryFrom<GpioConfigFile> for GpioConfig {
    type Error = GpioError;

    fn try_from(file: GpioConfigFile) -> Result<GpioConfig, GpioError> {
        let mode = match (file.mode, file.pulse_ms) {
            (ModeName::Level, None) => GpioMode::Level,
            (ModeName::Level, Some(pulse_ms)) => {
                return Err(GpioError::PulseLengthInLevelMode { pulse_ms })
            }
            (ModeName::Pulse, None) => GpioMode::Pulse {
                pulse_ms: DEFAULT_PULSE_MS,
            },
            (ModeName::Pulse, Some(0)) => {
                return Err(GpioError::InvalidMode {
                    mode: "pulse".to_owned(),
                    reason: "pulse_ms = 0, but a pulse must last at least 1 ms".to_owned(),
                })
            }
            (ModeName::Pulse, Some(pulse_ms)) => GpioMode::Pulse { pulse_ms },
        };
        Ok(GpioConfig {
            spec: file.line,
            mode,
            active_low: file.active_low,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> String {
        match text.parse::<GpioSpec>() {
            Ok(spec) => panic!("{text:?} parsed as {spec:?}, expected an error"),
            Err(err) => err.to_string(),
        }
    }

    const FORMS: &str = "(expected none, rppal:BCM with BCM 0 to 27, cdev:LINE_NAME, \
         cdev:gpiochipN:OFFSET or cdev:/dev/gpiochipN:OFFSET)";

    #[test]
    fn spec_accepts_every_documented_form() {
        let cases = [
            ("none", GpioSpec::None),
            ("rppal:0", GpioSpec::Rppal { bcm: 0 }),
            ("rppal:17", GpioSpec::Rppal { bcm: 17 }),
            ("rppal:27", GpioSpec::Rppal { bcm: 27 }),
            (
                "cdev:GPIO17",
                GpioSpec::Cdev(CdevLine::Named("GPIO17".to_owned())),
            ),
            (
                "cdev:PQ.05",
                GpioSpec::Cdev(CdevLine::Named("PQ.05".to_owned())),
            ),
            (
                "cdev:gpiochip0:17",
                GpioSpec::Cdev(CdevLine::ChipOffset {
                    chip: PathBuf::from("/dev/gpiochip0"),
                    offset: 17,
                }),
            ),
            (
                "cdev:/dev/gpiochip4:17",
                GpioSpec::Cdev(CdevLine::ChipOffset {
                    chip: PathBuf::from("/dev/gpiochip4"),
                    offset: 17,
                }),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                text.parse::<GpioSpec>().unwrap(),
                expected,
                "parsing {text:?}"
            );
        }
    }

    #[test]
    fn spec_display_parses_back_to_same_spec() {
        for text in ["none", "rppal:17", "cdev:GPIO17", "cdev:/dev/gpiochip0:17"] {
            let spec: GpioSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn spec_short_chip_name_displays_as_path() {
        let spec: GpioSpec = "cdev:gpiochip0:17".parse().unwrap();
        assert_eq!(spec.to_string(), "cdev:/dev/gpiochip0:17");
    }

    #[test]
    fn spec_rejects_bad_forms() {
        let cases = [
            ("", "invalid GPIO spec \"\": the spec is empty"),
            (
                "gpio17",
                "invalid GPIO spec \"gpio17\": unknown backend \"gpio17\"",
            ),
            (
                "sysfs:17",
                "invalid GPIO spec \"sysfs:17\": unknown backend \"sysfs\"",
            ),
            (
                "None",
                "invalid GPIO spec \"None\": unknown backend \"None\"",
            ),
            (
                "none:17",
                "invalid GPIO spec \"none:17\": none takes no line",
            ),
            (
                "rppal:",
                "invalid GPIO spec \"rppal:\": BCM number \"\" is not a number from 0 to 27",
            ),
            (
                "rppal:GPIO17",
                "invalid GPIO spec \"rppal:GPIO17\": BCM number \"GPIO17\" is not a number \
                 from 0 to 27",
            ),
            (
                "rppal:-1",
                "invalid GPIO spec \"rppal:-1\": BCM number \"-1\" is not a number from 0 to 27",
            ),
            (
                "rppal:300",
                "invalid GPIO spec \"rppal:300\": BCM number 300 is not on the 40-pin header, \
                 which has GPIO 0 to 27",
            ),
            (
                "rppal:28",
                "invalid GPIO spec \"rppal:28\": BCM number 28 is not on the 40-pin header, \
                 which has GPIO 0 to 27",
            ),
            (
                "cdev:",
                "invalid GPIO spec \"cdev:\": the line name is empty",
            ),
            (
                "cdev:chip0:3",
                "invalid GPIO spec \"cdev:chip0:3\": chip \"chip0\" is neither gpiochipN nor a \
                 path such as /dev/gpiochipN",
            ),
            (
                "cdev:gpiochip:3",
                "invalid GPIO spec \"cdev:gpiochip:3\": chip \"gpiochip\" is neither gpiochipN \
                 nor a path such as /dev/gpiochipN",
            ),
            (
                "cdev:gpiochip0:x",
                "invalid GPIO spec \"cdev:gpiochip0:x\": line offset \"x\" is not a \
                 non-negative integer",
            ),
            (
                "cdev:gpiochip0:",
                "invalid GPIO spec \"cdev:gpiochip0:\": line offset \"\" is not a non-negative \
                 integer",
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(
                parse_error(text),
                format!("{reason} {FORMS}"),
                "parsing {text:?}"
            );
        }
    }

    #[test]
    fn mode_accepts_level_pulse_and_pulse_length() {
        assert_eq!("level".parse::<GpioMode>().unwrap(), GpioMode::Level);
        assert_eq!(
            "pulse".parse::<GpioMode>().unwrap(),
            GpioMode::Pulse {
                pulse_ms: DEFAULT_PULSE_MS
            }
        );
        assert_eq!(
            "pulse:500".parse::<GpioMode>().unwrap(),
            GpioMode::Pulse { pulse_ms: 500 }
        );
    }

    #[test]
    fn mode_rejects_bad_forms() {
        let tail = "(expected level, pulse, or pulse:MS with MS from 1 to 4294967295)";
        let cases = [
            ("Level", "invalid GPIO mode \"Level\": unknown mode"),
            ("toggle", "invalid GPIO mode \"toggle\": unknown mode"),
            (
                "pulse:0",
                "invalid GPIO mode \"pulse:0\": a pulse must last at least 1 ms",
            ),
            (
                "pulse:0.5",
                "invalid GPIO mode \"pulse:0.5\": pulse length \"0.5\" is not a whole number of \
                 milliseconds",
            ),
        ];
        for (text, reason) in cases {
            let err = text.parse::<GpioMode>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{reason} {tail}"),
                "parsing {text:?}"
            );
        }
    }

    #[test]
    fn config_file_reads_all_keys() {
        let text = "line = \"cdev:GPIO17\"\nmode = \"pulse\"\npulse_ms = 350\nactive_low = true\n";
        let config: GpioConfig = toml::from_str(text).unwrap();
        let expected = GpioConfig {
            spec: GpioSpec::Cdev(CdevLine::Named("GPIO17".to_owned())),
            mode: GpioMode::Pulse { pulse_ms: 350 },
            active_low: true,
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn config_file_defaults_to_level_active_high() {
        let config: GpioConfig = toml::from_str("line = \"rppal:17\"\n").unwrap();
        let expected = GpioConfig {
            spec: GpioSpec::Rppal { bcm: 17 },
            mode: GpioMode::Level,
            active_low: false,
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn config_pulse_uses_default_length() {
        let config: GpioConfig = toml::from_str("line = \"none\"\nmode = \"pulse\"\n").unwrap();
        assert_eq!(
            config.mode,
            GpioMode::Pulse {
                pulse_ms: DEFAULT_PULSE_MS
            }
        );
    }

    #[test]
    fn config_file_rejects_unknown_key() {
        let err = toml::from_str::<GpioConfig>("line = \"none\"\npin = 17\n").unwrap_err();
        assert!(
            err.message().contains("unknown field `pin`"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn config_rejects_pulse_ms_in_level_mode() {
        let err = toml::from_str::<GpioConfig>("line = \"none\"\npulse_ms = 100\n").unwrap_err();
        assert_eq!(
            err.message(),
            "GPIO pulse_ms = 100 is set but mode is \"level\": set mode = \"pulse\" or remove \
             pulse_ms"
        );
    }

    #[test]
    fn config_file_rejects_zero_pulse_length() {
        let text = "line = \"none\"\nmode = \"pulse\"\npulse_ms = 0\n";
        let err = toml::from_str::<GpioConfig>(text).unwrap_err();
        assert!(
            err.message().contains("a pulse must last at least 1 ms"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn config_rejects_bad_line() {
        let err = toml::from_str::<GpioConfig>("line = \"rppal:40\"\n").unwrap_err();
        assert!(
            err.message().starts_with("invalid GPIO spec \"rppal:40\""),
            "{}",
            err.message()
        );
    }

    #[test]
    fn config_file_rejects_unknown_mode() {
        let err = toml::from_str::<GpioConfig>("line = \"none\"\nmode = \"blink\"\n").unwrap_err();
        assert!(
            err.message().contains("unknown variant `blink`"),
            "{}",
            err.message()
        );
    }
}
