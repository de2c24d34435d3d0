//! The `--config` file of `gradgate run`: gate, MQTT and GPIO settings in TOML.
//!
//! Every key is optional; a command-line option overrides the same key. Unknown keys are
//! rejected with their name and the file, so that a typo does not silently leave a default
//! in force. The MQTT user name and password come from this file or from the environment
//! variables `GRADGATE_MQTT_USERNAME` and `GRADGATE_MQTT_PASSWORD`, which win.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Names this camera in MQTT topics and event ids.
    pub(crate) device_id: Option<String>,
    #[serde(default)]
    pub(crate) gate: GateSection,
    #[serde(default)]
    pub(crate) mqtt: MqttSection,
    #[serde(default)]
    pub(crate) gpio: GpioSection,
}

/// `[gate]`: debouncing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GateSection {
    /// `consecutive` or `ema`.
    pub(crate) enter: Option<String>,
    pub(crate) enter_frames: Option<u32>,
    pub(crate) ema_alpha: Option<f32>,
    pub(crate) leave_frames: Option<u32>,
}

/// `[mqtt]`: broker, topics, TLS, queue.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MqttSection {
    pub(crate) url: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) client_cert: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
    pub(crate) queue_dir: Option<PathBuf>,
    pub(crate) queue_max_bytes: Option<u64>,
    pub(crate) publish_frames: Option<bool>,
    pub(crate) stats_interval_s: Option<f64>,
    pub(crate) max_packet_bytes: Option<usize>,
    pub(crate) keep_alive_s: Option<f64>,
    pub(crate) reconnect_min_s: Option<f64>,
    pub(crate) reconnect_max_s: Option<f64>,
    pub(crate) shutdown_timeout_s: Option<f64>,
}

// Written by hand so that the password never reaches a log line.
impl std::fmt::Debug for MqttSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSection")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// `[gpio]`: the output line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GpioSection {
    /// `none`, `rppal:BCM`, `cdev:NAME` or `cdev:CHIP:OFFSET`.
    pub(crate) line: Option<String>,
    /// `level` or `pulse`.
    pub(crate) mode: Option<String>,
    pub(crate) pulse_ms: Option<u32>,
    pub(crate) active_low: Option<bool>,
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub(crate) fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: ConfigFile = toml::from_str(&text).map_err(|err| {
            // toml's message names the key and shows the line; keep it whole.
            anyhow::anyhow!(
                "config file {}: {}",
                path.display(),
                err.to_string().trim_end()
            )
        })?;
        log::info!("read config file {}", path.display());
        Ok(config)
    }
}

/// Reads a seconds value from the config file into a `Duration`.
pub(crate) fn seconds(key: &str, value: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value).map_err(|_| {
        anyhow::anyhow!("{key} = {value} is not a number of seconds from 0 up; use for example 10")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = toml::from_str::<ConfigFile>("[gate]\nenter_frame = 3\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `enter_frame`"));
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let section = MqttSection {
            password: Some("hunter2".into()),
            ..MqttSection::default()
        };
        assert!(!format!("{section:?}").contains("hunter2"));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../docs/config.example.toml");
        let config: ConfigFile = toml::from_str(text).unwrap();
        assert_eq!(config.gpio.line.as_deref(), Some("cdev:GPIO17"));
    }

    #[test]
    fn negative_seconds_are_rejected() {
        assert!(seconds("mqtt.stats_interval_s", -1.0).is_err());
    }
}
