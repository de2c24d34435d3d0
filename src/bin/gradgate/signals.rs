//! Wires the debounced gate to MQTT and GPIO for `gradgate run`.
//!
//! Options come from the command line, then the `--config` file, then defaults. The GPIO line
//! can also come from a board profile and arrives resolved in `RunSettings`. The frame loop
//! calls [`Signals::frame`] once per scored frame and [`Signals::finish`] once at the end;
//! neither waits on the network or on a pin.

use crate::config::{self, ConfigFile};
use crate::settings::RunSettings;
use anyhow::{bail, Context, Result};
use clap::Args;
use gradgate::gate::{
    DebounceConfig, DebouncedGate, EnterRule, FrameRef, GateState, Transition, Verdict,
};
use gradgate::signal::event::{event_json, EventIds, EventKind};
use gradgate::signal::gpio::{GpioConfig, GpioMode, GpioSignal, GpioSpec, DEFAULT_PULSE_MS};
use gradgate::signal::mqtt::{Mqtt, MqttConfig, MqttUrl};
use gradgate::signal::stats::RunStats;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Environment variables that carry the MQTT credentials. They win over the config file so
/// that a systemd environment file can hold them apart from the world-readable config.
const ENV_USERNAME: &str = "GRADGATE_MQTT_USERNAME";
const ENV_PASSWORD: &str = "GRADGATE_MQTT_PASSWORD";

#[derive(Args, Debug)]
#[command(next_help_heading = "Gate and signals")]
pub(crate) struct SignalArgs {
    /// TOML file with board, threads, backend, device_id, [gate], [mqtt], [gpio] and
    /// [camera] settings; options given here override it
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Names this camera in MQTT topics and event ids [default: the host name]
    #[arg(long, value_name = "ID")]
    device_id: Option<String>,
    /// Enter the out-of-distribution state after N consecutive out-of-distribution frames
    /// [default: 3]
    #[arg(long, value_name = "N", conflicts_with = "enter_ema")]
    enter_frames: Option<u32>,
    /// Enter instead when the exponential moving average of the score, with this weight for
    /// the newest frame (0 < ALPHA ≤ 1), falls below the threshold
    #[arg(long, value_name = "ALPHA")]
    enter_ema: Option<f32>,
    /// Leave it after M consecutive in-distribution frames [default: 5]
    #[arg(long, value_name = "M")]
    leave_frames: Option<u32>,
    /// MQTT broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS) [default: no MQTT]
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// First level of every topic [default: gradgate]
    #[arg(long, value_name = "PREFIX")]
    mqtt_prefix: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (mqtts)
    #[arg(long, value_name = "FILE")]
    mqtt_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one
    #[arg(long, value_name = "FILE", requires = "mqtt_client_key")]
    mqtt_client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate
    #[arg(long, value_name = "FILE", requires = "mqtt_client_cert")]
    mqtt_client_key: Option<PathBuf>,
    /// Folder of the on-disk event queue [default: $STATE_DIRECTORY, else
    /// $XDG_STATE_HOME/gradgate, else ~/.local/state/gradgate]
    #[arg(long, value_name = "DIR")]
    mqtt_queue_dir: Option<PathBuf>,
    /// Size limit of the on-disk event queue; at the limit the oldest events are dropped
    /// [default: 8388608]
    #[arg(long, value_name = "BYTES")]
    mqtt_queue_max_bytes: Option<u64>,
    /// Also publish one message per frame on <prefix>/<device>/frames (QoS 0)
    #[arg(long)]
    mqtt_frames: bool,
    /// Seconds between messages on <prefix>/<device>/stats; 0 turns them off [default: 10]
    #[arg(long, value_name = "SECONDS")]
    mqtt_stats_interval: Option<f64>,
    /// GPIO line: none, rppal:BCM (Raspberry Pi), cdev:NAME or cdev:CHIP:OFFSET (GPIO
    /// character device) [default: the board profile's, else none]
    #[arg(long, value_name = "BACKEND:LINE")]
    pub(crate) gpio: Option<String>,
    /// level: the line is active while out of distribution; pulse: one pulse per event
    /// [default: level]
    #[arg(long, value_name = "MODE")]
    gpio_mode: Option<String>,
    /// Pulse length in pulse mode, in milliseconds [default: 200]
    #[arg(long, value_name = "MS")]
    gpio_pulse_ms: Option<u32>,
    /// Drive the line low when active
    #[arg(long)]
    gpio_active_low: bool,
}

/// The gate, its signals and the counters they report.
pub(crate) struct Signals {
    gate: DebouncedGate,
    ids: EventIds,
    scorer: &'static str,
    mqtt: Option<Mqtt>,
    gpio: Option<GpioSignal>,
    pub(crate) stats: Arc<RunStats>,
    publish_frames: bool,
}

impl Signals {
    /// Builds the gate and starts the signals. `file` is the loaded `--config` file, and
    /// `settings` carries the GPIO line resolved with the board profile. `threshold` is the
    /// per-frame gate's.
    pub(crate) fn start(
        args: &SignalArgs,
        file: &ConfigFile,
        settings: &RunSettings,
        threshold: f32,
        scorer: &'static str,
    ) -> Result<Signals> {
        // The gate.
        let debounce = debounce_config(args, file)?;
        let gate = DebouncedGate::new(debounce, threshold).context(
            "invalid gate settings (--enter-frames, --enter-ema, --leave-frames or [gate])",
        )?;
        let device = match args.device_id.clone().or(file.device_id.clone()) {
            Some(id) => id,
            None => default_device_id(),
        };
        log::info!(
            "gate: {}, leave after {} in-distribution frames, threshold {threshold}, device {device}",
            match debounce.enter {
                EnterRule::Consecutive { frames } => format!("enter after {frames} frames"),
                EnterRule::Ema { alpha } => format!("enter when the EMA (alpha {alpha}) crosses"),
            },
            debounce.leave_frames
        );
        let stats = Arc::new(RunStats::new());

        // GPIO first: a missing line is a set-up error, best reported before any network.
        let gpio_config = gpio_config(args, file, settings)?;
        let gpio = GpioSignal::open(&gpio_config, settings.board_id())?;

        // MQTT.
        let mut publish_frames = false;
        let mqtt = match mqtt_config(args, file, &device)? {
            Some(config) => {
                publish_frames = config.publish_frames;
                Some(Mqtt::start(config, Arc::clone(&stats)).context("cannot start MQTT")?)
            }
            None => None,
        };

        Ok(Signals {
            gate,
            ids: EventIds::new(&device),
            scorer,
            mqtt,
            gpio,
            stats,
            publish_frames,
        })
    }

    /// Returns the debounced state after the last frame.
    pub(crate) fn state(&self) -> GateState {
        self.gate.state()
    }

    /// Returns true when MQTT or GPIO carry the decisions.
    pub(crate) fn is_active(&self) -> bool {
        self.mqtt.is_some() || self.gpio.is_some()
    }

    /// True when per-frame messages go to MQTT, so the caller builds them.
    pub(crate) fn wants_frames(&self) -> bool {
        self.publish_frames && self.mqtt.is_some()
    }

    /// Records the capture's count of frames dropped as stale.
    pub(crate) fn set_stale_frames(&self, count: u64) {
        self.stats.stale_frames.store(count, Ordering::Relaxed);
    }

    /// Counts a skipped frame.
    pub(crate) fn skipped(&self) {
        RunStats::bump(&self.stats.skipped);
    }

    /// Feeds one scored frame to the gate and signals a transition.
    pub(crate) fn frame(&mut self, frame: FrameRef<'_>, verdict: Verdict, latency: Duration) {
        RunStats::bump(&self.stats.frames);
        if verdict.ood {
            RunStats::bump(&self.stats.ood_frames);
        }
        self.stats
            .latency_us_total
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);

        match self.gate.step(frame, verdict) {
            Transition::None => {}
            Transition::Opened => self.signal(EventKind::Start),
            Transition::Closed => self.signal(EventKind::End),
        }
    }

    /// Publishes a per-frame message; dropped (and counted by MQTT) under back-pressure.
    pub(crate) fn frame_message(&self, payload: &[u8]) {
        if let Some(mqtt) = &self.mqtt {
            mqtt.try_publish_frame(payload);
        }
    }

    /// Closes an open event, drives the GPIO line idle, and delivers or persists the queue.
    pub(crate) fn finish(mut self) {
        if self.gate.finish() == Transition::Closed {
            self.signal(EventKind::End);
        }
        if let Some(gpio) = self.gpio.take() {
            gpio.shutdown();
        }
        if let Some(mqtt) = self.mqtt.take() {
            let report = mqtt.shutdown();
            log::info!("mqtt stopped: {report:?}");
        }
    }

    fn signal(&mut self, kind: EventKind) {
        let event = self.gate.event().expect("a transition always has an event");
        let ood = kind == EventKind::Start;
        self.stats.ood.store(ood, Ordering::Relaxed);
        if ood {
            RunStats::bump(&self.stats.events);
        }
        log::info!(
            "event {} {}: frame {} ({}), {} frames, min score {}",
            self.ids.id(event.seq),
            if ood { "opened" } else { "closed" },
            event.opened_by_index,
            event.opened_by_source,
            event.frames,
            event.min_score
        );

        if let Some(gpio) = &self.gpio {
            gpio.set_ood(ood);
        }
        if let Some(mqtt) = &self.mqtt {
            // The event goes first, so that a subscriber that reacts to the state change
            // can already find the event that caused it.
            let payload = event_json(&self.ids, event, kind, self.scorer);
            if let Err(err) = mqtt.publish_event(&payload) {
                log::error!("event {} not published: {err}", self.ids.id(event.seq));
            }
            mqtt.publish_state(ood);
        }
    }
}

fn debounce_config(args: &SignalArgs, file: &ConfigFile) -> Result<DebounceConfig> {
    let defaults = DebounceConfig::default();
    let default_frames = match defaults.enter {
        EnterRule::Consecutive { frames } => frames,
        EnterRule::Ema { .. } => unreachable!("the default enters on consecutive frames"),
    };
    // A key for the other rule would be silently ignored, so it is an error.
    match file.gate.enter.as_deref() {
        Some("ema") if file.gate.enter_frames.is_some() => bail!(
            "config gate.enter_frames is set, but gate.enter = \"ema\" does not use it; remove one"
        ),
        None | Some("consecutive") if file.gate.ema_alpha.is_some() && args.enter_ema.is_none() => {
            bail!("config gate.ema_alpha is set, but gate.enter is not \"ema\"; add enter = \"ema\" or remove it")
        }
        _ => {}
    }
    let enter = if let Some(alpha) = args.enter_ema {
        EnterRule::Ema { alpha }
    } else if let Some(frames) = args.enter_frames {
        EnterRule::Consecutive { frames }
    } else {
        match file.gate.enter.as_deref() {
            None | Some("consecutive") => EnterRule::Consecutive {
                frames: file.gate.enter_frames.unwrap_or(default_frames),
            },
            Some("ema") => EnterRule::Ema {
                alpha: file.gate.ema_alpha.with_context(|| {
                    "config gate.enter = \"ema\" needs gate.ema_alpha, for example 0.3"
                })?,
            },
            Some(other) => {
                bail!(
                    "config gate.enter = \"{other}\" is not a rule; use \"consecutive\" or \"ema\""
                )
            }
        }
    };
    Ok(DebounceConfig {
        enter,
        leave_frames: args
            .leave_frames
            .or(file.gate.leave_frames)
            .unwrap_or(defaults.leave_frames),
    })
}

fn gpio_config(args: &SignalArgs, file: &ConfigFile, settings: &RunSettings) -> Result<GpioConfig> {
    let spec: GpioSpec = match &settings.gpio_line {
        Some(line) => {
            log::info!("gpio line {} from {}", line.value, line.origin);
            line.value
                .parse()
                .with_context(|| format!("invalid GPIO line from {}", line.origin))?
        }
        None => GpioSpec::None,
    };
    let pulse_ms = args
        .gpio_pulse_ms
        .or(file.gpio.pulse_ms)
        .unwrap_or(DEFAULT_PULSE_MS);
    let mode = match args.gpio_mode.as_deref().or(file.gpio.mode.as_deref()) {
        None | Some("level") if args.gpio_pulse_ms.is_some() || file.gpio.pulse_ms.is_some() => {
            bail!(
                "a pulse length (--gpio-pulse-ms or gpio.pulse_ms) needs --gpio-mode pulse; \
                 in level mode the line stays active for the whole event"
            )
        }
        None | Some("level") => GpioMode::Level,
        Some("pulse") => GpioMode::Pulse { pulse_ms },
        Some(other) => bail!("GPIO mode '{other}' is not a mode; use 'level' or 'pulse'"),
    };
    Ok(GpioConfig {
        spec,
        mode,
        active_low: args.gpio_active_low || file.gpio.active_low.unwrap_or(false),
    })
}

fn mqtt_config(args: &SignalArgs, file: &ConfigFile, device: &str) -> Result<Option<MqttConfig>> {
    let section = &file.mqtt;
    let Some(url) = args.mqtt.as_deref().or(section.url.as_deref()) else {
        let given = args.mqtt_prefix.is_some()
            || args.mqtt_ca_file.is_some()
            || args.mqtt_client_cert.is_some()
            || args.mqtt_queue_dir.is_some()
            || args.mqtt_queue_max_bytes.is_some()
            || args.mqtt_frames
            || args.mqtt_stats_interval.is_some();
        if given {
            log::warn!("MQTT options are ignored without --mqtt URL or mqtt.url");
        }
        return Ok(None);
    };
    let url: MqttUrl = url.parse()?;
    let mut config = MqttConfig::new(url, device.to_string());
    if let Some(prefix) = args.mqtt_prefix.clone().or(section.prefix.clone()) {
        config.prefix = prefix;
    }
    // An empty variable counts as unset, so that `GRADGATE_MQTT_PASSWORD=` in an
    // environment file does not override the config file with an empty password.
    let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    config.username = env(ENV_USERNAME).or(section.username.clone());
    config.password = env(ENV_PASSWORD).or(section.password.clone());
    config.ca_file = args.mqtt_ca_file.clone().or(section.ca_file.clone());
    config.client_cert = args
        .mqtt_client_cert
        .clone()
        .or(section.client_cert.clone());
    config.client_key = args.mqtt_client_key.clone().or(section.client_key.clone());
    config.queue_dir = match args.mqtt_queue_dir.clone().or(section.queue_dir.clone()) {
        Some(dir) => dir,
        None => default_queue_dir()?,
    };
    if let Some(bytes) = args.mqtt_queue_max_bytes.or(section.queue_max_bytes) {
        config.queue_max_bytes = bytes;
    }
    config.publish_frames = args.mqtt_frames || section.publish_frames.unwrap_or(false);
    if let Some(s) = args.mqtt_stats_interval.or(section.stats_interval_s) {
        // Below 0.1 s the stats messages would compete with inference for the CPU.
        let key = "--mqtt-stats-interval (mqtt.stats_interval_s)";
        config.stats_interval = if s == 0.0 {
            Duration::ZERO
        } else {
            config::seconds(key, s, 0.1, 86_400.0)
                .context("use 0 to turn stats off, else 0.1 s or more")?
        };
    }
    if let Some(bytes) = section.max_packet_bytes {
        config.max_packet_bytes = bytes;
    }
    if let Some(s) = section.keep_alive_s {
        config.keep_alive = config::seconds("mqtt.keep_alive_s", s, 0.0, 65_535.0)?;
    }
    if let Some(s) = section.reconnect_min_s {
        config.reconnect_min = config::seconds("mqtt.reconnect_min_s", s, 0.0, 3_600.0)?;
    }
    if let Some(s) = section.reconnect_max_s {
        config.reconnect_max = config::seconds("mqtt.reconnect_max_s", s, 0.0, 3_600.0)?;
    }
    if let Some(s) = section.shutdown_timeout_s {
        config.shutdown_timeout = config::seconds("mqtt.shutdown_timeout_s", s, 0.0, 3_600.0)?;
    }
    Ok(Some(config))
}

/// Reads the host name from the kernel, else returns `gradgate`.
fn default_device_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gradgate".to_string())
}

/// Chooses the event queue folder without `--mqtt-queue-dir`: systemd's `StateDirectory=`
/// first, then the XDG state folder.
fn default_queue_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several folders separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return Ok(PathBuf::from(first));
        }
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("gradgate"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/state/gradgate"));
    }
    bail!("no folder for the MQTT event queue: set --mqtt-queue-dir or mqtt.queue_dir")
}
