//! The `--config` file of `gradgate run`: board, threads, camera, gate, MQTT and GPIO settings
//! in TOML.
//!
//! Every key is optional; a command-line option overrides the same key. Unknown keys are
//! rejected with their name and the file, so that a typo does not silently leave a default
//! in force. The MQTT user name and password come from this file or from the environment
//! variables `GRADGATE_MQTT_USERNAME` and `GRADGATE_MQTT_PASSWORD`, which win.

use anyhow::{Context, Result};
use gradgate::model::Backend;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Names this camera in MQTT topics and event ids.
    pub(crate) device_id: Option<String>,
    /// Board profile name or file (`--board`); a relative path is relative to this file.
    pub(crate) board: Option<String>,
    /// Inference threads (`--threads`).
    pub(crate) threads: Option<usize>,
    /// Inference backend: `cpu`, `cuda` or `auto` (`--backend`).
    pub(crate) backend: Option<Backend>,
    #[serde(default)]
    pub(crate) camera: CameraSection,
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

/// `[camera]`: the source when the command line gives none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CameraSection {
    /// One SOURCE, as on the command line: `v4l2:///dev/video0`, `-`, a FIFO or a file.
    pub(crate) source: Option<String>,
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
            anyhow::anyhow!("config file {}: {}", path.display(), describe(&text, &err))
        })?;
        log::info!("read config file {}", path.display());
        Ok(config)
    }
}

/// Describes a TOML error with its line and column. toml's own message quotes the line and
/// the value, so it is used only when the line contains no secret.
fn describe(text: &str, err: &toml::de::Error) -> String {
    let Some(span) = err.span() else {
        return err.message().to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line_number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    let column = before.len() - line_start + 1;
    if line.to_ascii_lowercase().contains("password") {
        return format!(
            "line {line_number}, column {column}: invalid password entry (not shown); \
             write it as password = \"…\" in [mqtt], or set GRADGATE_MQTT_PASSWORD"
        );
    }
    err.to_string().trim_end().to_string()
}

/// Reads a seconds value into a `Duration`, checking `min_s ≤ value ≤ max_s`. `key` names
/// both the option and the config key, for the message.
pub(crate) fn seconds(
    key: &str,
    value: f64,
    min_s: f64,
    max_s: f64,
) -> Result<std::time::Duration> {
    if !(min_s..=max_s).contains(&value) {
        anyhow::bail!("{key} = {value} is outside {min_s} to {max_s} seconds");
    }
    Ok(std::time::Duration::from_secs_f64(value))
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

    const SERVICE_CONFIG: &str = include_str!("../../../boards/etc/gradgate.toml");

    /// Parses the service config with every commented-out `key = value` line enabled.
    fn service_config_uncommented() -> ConfigFile {
        let is_key_line = |line: &str| {
            line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
        };
        let text: Vec<&str> = SERVICE_CONFIG
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if is_key_line(rest) => rest,
                _ => line,
            })
            .collect();
        toml::from_str(&text.join("\n")).unwrap()
    }

    #[test]
    fn service_config_parses() {
        let config: ConfigFile = toml::from_str(SERVICE_CONFIG).unwrap();
        assert!(config.board.is_none());
    }

    #[test]
    fn service_config_keys_are_known() {
        let config = service_config_uncommented();
        assert_eq!(config.board.as_deref(), Some("raspberry-pi-5"));
    }

    #[test]
    fn service_config_shows_defaults() {
        use gradgate::signal::gpio::DEFAULT_PULSE_MS;
        use gradgate::signal::mqtt::MqttConfig;

        let config = service_config_uncommented();
        let mqtt = MqttConfig::default();
        assert_eq!(config.threads, Some(crate::settings::DEFAULT_THREADS));
        assert_eq!(config.backend, Some(Backend::default()));
        assert_eq!(config.gate.enter_frames, Some(3));
        assert_eq!(config.gate.leave_frames, Some(5));
        assert_eq!(config.mqtt.prefix.as_deref(), Some(mqtt.prefix.as_str()));
        assert_eq!(config.mqtt.queue_max_bytes, Some(mqtt.queue_max_bytes));
        assert_eq!(config.mqtt.max_packet_bytes, Some(mqtt.max_packet_bytes));
        assert_eq!(
            config.mqtt.stats_interval_s,
            Some(mqtt.stats_interval.as_secs_f64())
        );
        assert_eq!(
            config.mqtt.keep_alive_s,
            Some(mqtt.keep_alive.as_secs_f64())
        );
        assert_eq!(
            config.mqtt.reconnect_min_s,
            Some(mqtt.reconnect_min.as_secs_f64())
        );
        assert_eq!(
            config.mqtt.reconnect_max_s,
            Some(mqtt.reconnect_max.as_secs_f64())
        );
        assert_eq!(
            config.mqtt.shutdown_timeout_s,
            Some(mqtt.shutdown_timeout.as_secs_f64())
        );
        assert_eq!(config.gpio.pulse_ms, Some(DEFAULT_PULSE_MS));
        assert_eq!(config.gpio.line.as_deref(), Some("none"));
    }

    #[test]
    fn negative_seconds_are_rejected() {
        assert!(seconds("mqtt.stats_interval_s", -1.0, 0.0, 10.0).is_err());
    }

    #[test]
    fn huge_seconds_are_rejected() {
        assert!(seconds("mqtt.shutdown_timeout_s", 1e19, 0.0, 3600.0).is_err());
    }

    #[test]
    fn password_syntax_error_hides_the_value() {
        let text = "[mqtt]\npassword = S3cret!\n";
        let err = toml::from_str::<ConfigFile>(text).unwrap_err();
        assert!(!describe(text, &err).contains("S3cret"));
    }

    #[test]
    fn password_type_error_hides_the_value() {
        let text = "[mqtt]\npassword = 987654321\n";
        let err = toml::from_str::<ConfigFile>(text).unwrap_err();
        assert!(!describe(text, &err).contains("987654321"));
    }

    #[test]
    fn other_errors_keep_toml_message() {
        let text = "[gate]\nenter_frames = \"three\"\n";
        let err = toml::from_str::<ConfigFile>(text).unwrap_err();
        assert!(describe(text, &err).contains("enter_frames"));
    }
}
