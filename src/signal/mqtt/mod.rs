//! MQTT signal: availability, gate state, events, optional per-frame messages and periodic
//! stats, published with rumqttc.
//!
//! Part of the last stage of the data path (frame → tensor → activations → score → gate →
//! **signal**). The gate's transitions arrive here as [`Mqtt::publish_state`] and
//! [`Mqtt::publish_event`] calls. Events are written to an on-disk queue
//! ([`queue::DiskQueue`]) before anything goes on the network, so none is lost while the
//! broker is unreachable or the process restarts. While the disk cannot be written, events
//! are kept in memory instead and survive broker outages, but not a restart.
//!
//! Main types: [`MqttConfig`] (with [`MqttUrl`]) configures, [`Mqtt`] is the running signal,
//! [`Queued`] is where [`Mqtt::publish_event`] kept an event, [`MqttStatus`] reports
//! whether it is connected and the last failure, and [`ShutdownReport`] counts what
//! [`Mqtt::shutdown`] delivered. Errors are [`MqttError`].
//!
//! ```no_run
//! use gradgate::signal::mqtt::{Mqtt, MqttConfig};
//! use gradgate::signal::stats::RunStats;
//! use std::sync::Arc;
//!
//! let config = MqttConfig {
//!     url: "mqtt://broker.lan".parse()?,
//!     device_id: "door-camera".into(),
//!     queue_dir: "/var/lib/gradgate/queue".into(),
//!     ..MqttConfig::default()
//! };
//! let stats = Arc::new(RunStats::new());
//! let mqtt = Mqtt::start(config, Arc::clone(&stats))?;
//!
//! // On a gate transition: the event JSON first (durable on return unless the disk is
//! // full, see `Queued`), then the state.
//! let _queued = mqtt.publish_event(br#"{"event":"start","score":3.2}"#)?;
//! mqtt.publish_state(true);
//!
//! // Per frame, when frames are enabled; never blocks.
//! let _sent = mqtt.try_publish_frame(br#"{"seq":1,"score":3.2}"#);
//!
//! let report = mqtt.shutdown();
//! println!("{} delivered, {} left in the queue", report.delivered, report.left_in_queue);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Topics and payloads
//! Every topic is `<prefix>/<device_id>/<leaf>` ([`topic`]); the prefix defaults to
//! `gradgate`. All payloads are UTF-8; JSON payloads are single objects.
//!
//! | Leaf | Payload | QoS | Retained | When |
//! |------|---------|-----|----------|------|
//! | `availability` | `online` / `offline` | 1 | yes | `online` after every CONNACK; `offline` at [`Mqtt::shutdown`]; `offline` is also the last will, which the broker publishes when the connection ends without DISCONNECT |
//! | `state` | `in` (in-distribution) / `out` (out-of-distribution, an event is open) | 1 | yes | after every CONNACK, and when [`Mqtt::publish_state`] changes it |
//! | `events` | the caller's bytes, verbatim (one JSON object per transition) | 1 | no | each [`Mqtt::publish_event`], in call order |
//! | `frames` | the caller's bytes, verbatim | 0 | no | each [`Mqtt::try_publish_frame`] while connected, if [`MqttConfig::publish_frames`] is on (off by default) |
//! | `stats` | JSON, below | 0 | no | every [`MqttConfig::stats_interval`] (default 10 s; zero disables) while connected |
//!
//! The stats object has these keys, from [`RunStats`]:
//!
//! | Key | Type | Meaning |
//! |-----|------|---------|
//! | `device` | string | the device id |
//! | `uptime_s` | integer | whole seconds since [`RunStats::started`] |
//! | `frames` | integer | frames scored since start |
//! | `fps` | number | frames scored per second over the last interval, 2 decimals |
//! | `mean_latency_ms` | number or `null` | mean per-frame latency over the last interval, 3 decimals; `null` when no frame was scored in it |
//! | `skipped` | integer | frames skipped since start (unreadable, undecodable, unscorable) |
//! | `ood_frames` | integer | frames with an out-of-distribution verdict since start |
//! | `events` | integer | events the gate opened since start |
//! | `frames_dropped` | integer | per-frame MQTT messages dropped since start |
//! | `stale_frames` | integer | camera or stream frames dropped since start because a newer one replaced them before inference |
//! | `events_dropped` | integer | events dropped since start: from the on-disk queue at its size limit, from the in-memory fallback at its limits, or too large to send |
//! | `queue_depth` | integer | events not yet acknowledged by the broker, in the on-disk queue or the in-memory fallback |
//! | `state` | string | `in` or `out`, the state last given to [`Mqtt::publish_state`] |
//! | `connected` | boolean | always `true`: stats are only sent while connected |
//!
//! # Delivery guarantees
//! - Events: at least once, in order. [`Mqtt::publish_event`] appends the payload to the
//!   on-disk queue (`sync_data` before it returns); a worker thread publishes queued events
//!   in order with QoS 1, at most [`EVENT_WINDOW`] unacknowledged at a time, and removes
//!   each from the queue on its PUBACK. After a reconnect or a restart of the process the
//!   unacknowledged events are published again from the queue, oldest first.
//! - A subscriber can see an event twice when the connection drops after the broker took
//!   it but before its PUBACK arrived; QoS 1 cannot rule that out. Put an id in the payload
//!   if subscribers must deduplicate.
//! - At [`MqttConfig::queue_max_bytes`] (payloads plus 21 bytes each) the queue drops the
//!   OLDEST undelivered events to make room for the new one; drops are logged at warn and
//!   counted in `RunStats::events_dropped`. An event larger than the whole limit, or whose
//!   packet exceeds [`MqttConfig::max_packet_bytes`], is rejected by `publish_event`.
//! - When the queue file cannot be written (disk full, I/O error), `publish_event` keeps
//!   the event in memory and returns [`Queued::Memory`]; the first failure of a burst is
//!   logged at error with the OS error. Memory events are sent in order with the disk
//!   ones, QoS 1, and retried across reconnects, so they survive broker outages but not a
//!   restart while the disk is full: [`ShutdownReport::lost_in_memory`] counts the ones
//!   still unacknowledged at shutdown, logged at error. Each event tries the disk first,
//!   so an event on disk can follow one in memory. It never overtakes it in this process,
//!   but if the process ends first, the next run sends the disk event without the memory
//!   one. The fallback keeps at most [`MEMORY_MAX_EVENTS`] events and `queue_max_bytes` of
//!   payload, and drops its oldest events beyond that (warn, `RunStats::events_dropped`).
//! - An acknowledgement that cannot be written to the queue file is logged at error once
//!   per burst of failures. The event leaves the queue anyway, and its ack record is
//!   written with the next successful write. A restart before that sends it again.
//! - The worker publishes queued events before a changed state in the same pass, so a
//!   subscriber gets the `start` event before `state` `out` when the caller publishes the
//!   event first.
//! - State and availability are retained and republished after every CONNACK, so a broker
//!   restarted without persistence gets them back. `state` carries the latest state: when
//!   two transitions arrive before the worker's next pass, only the second is published.
//!   The events topic carries every transition.
//! - Frames and stats are QoS 0 and dropped while disconnected.
//!
//! # Connection
//! - Reconnects by itself with capped exponential backoff ([`MqttConfig::reconnect_min`],
//!   doubled per failure up to [`MqttConfig::reconnect_max`]). Each failed attempt is logged
//!   at warn with its reason. Refused credentials, TLS failures and other refusals are
//!   logged at error when they first appear, naming the broker and the setting to check. A success is
//!   logged at info with the attempt count. [`Mqtt::status`] shows the last failure.
//! - Client id `gradgate-<device_id>`, clean session, keep-alive [`MqttConfig::keep_alive`].
//!   A second client with the same id makes the broker close the first connection, so two
//!   such clients take turns forever. After three connections in a row that the broker
//!   closes within 10 s of the CONNACK (or twice [`MqttConfig::reconnect_min`], if
//!   longer), a warning names the client id and asks for a distinct device id. It repeats
//!   at most every 5 minutes.
//! - A connection the broker closes before its CONNACK gets a hint that the URL's scheme
//!   may not match the listener (`mqtt://` on a TLS port, `mqtts://` on a plain one).
//! - TLS uses rustls with the ring provider and trusts only [`MqttConfig::ca_file`]; there is
//!   no system certificate store. A client certificate is optional.
//!
//! # Important notes
//! - The frame loop never waits on the network: [`Mqtt::try_publish_frame`] and
//!   [`Mqtt::publish_state`] return at once, and [`Mqtt::publish_event`] waits only for
//!   the local disk: its own `sync_data`, sometimes a compaction of the queue file, and
//!   the worker's `sync_data` for an acknowledged event when both need the queue at once.
//! - One `Mqtt` per queue folder and device id: the queue file is locked, and a second
//!   [`Mqtt::start`] on it fails until the first is shut down.
//! - Call [`Mqtt::shutdown`] before exiting. It publishes `offline`; dropping an `Mqtt`
//!   instead stops its threads without waiting and leaves `offline` to the broker's last
//!   will, which arrives only when the broker notices the closed connection. Events still
//!   unacknowledged at its deadline are logged at warn with the queue file that keeps them
//!   for the next start.
//! - A PUBACK means the broker took the event, not that any subscriber received it.
//! - [`Mqtt::try_publish_frame`] copies the payload and the topic into a new message
//!   (rumqttc takes owned buffers), so it allocates per frame; frames are off by default.
//! - Credentials never appear in logs, errors or `Debug` output; URLs with `user:pass@`
//!   are rejected so that they cannot show in `ps`.

mod config;
mod event_queue;
mod link;
pub mod queue;
#[cfg(test)]
mod test_disk;
mod tls;
mod worker;

pub use config::{
    MqttConfig, MqttUrl, DEFAULT_PORT, DEFAULT_TLS_PORT, MIN_MAX_PACKET_BYTES, MIN_QUEUE_MAX_BYTES,
};
pub use event_queue::MEMORY_MAX_EVENTS;
pub use worker::EVENT_WINDOW;

use crate::signal::stats::RunStats;
use event_queue::EventQueue;
use log::{error, info, warn};
use queue::{DiskQueue, QueueError};
use rumqttc::{Client, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{lock, Failure, Link, Message, Shared, Worker};

/// Payload of `availability` while connected.
pub const ONLINE: &str = "online";
/// Payload of `availability` after shutdown, and of the last will.
pub const OFFLINE: &str = "offline";
/// Payload of `state` while the gate is in-distribution.
pub const STATE_IN: &str = "in";
/// Payload of `state` while the gate is out-of-distribution (an event is open).
pub const STATE_OUT: &str = "out";

/// Capacity of rumqttc's request channel; `try_publish` fails when it is full.
///
/// Trade-off: room for a burst of frames while the event loop writes a large packet,
/// without holding many stale frames.
const REQUEST_CHANNEL_CAPACITY: usize = 64;
/// Unacknowledged QoS 1 publishes rumqttc allows; above [`EVENT_WINDOW`] so that
/// availability and state updates are never held back behind events.
const RUMQTTC_INFLIGHT: u16 = 64;
/// Minimum time between two warnings about dropped per-frame messages.
const FRAME_DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Returns the topic `<prefix>/<device>/<leaf>`.
pub fn topic(prefix: &str, device: &str, leaf: &str) -> String {
    format!("{prefix}/{device}/{leaf}")
}

/// The five topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>/<device>/availability`
    pub availability: String,
    /// `<prefix>/<device>/state`
    pub state: String,
    /// `<prefix>/<device>/events`
    pub events: String,
    /// `<prefix>/<device>/frames`
    pub frames: String,
    /// `<prefix>/<device>/stats`
    pub stats: String,
}

impl Topics {
    /// Builds the topics; `prefix` and `device` are not validated here
    /// ([`MqttConfig::validate`] does that).
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics {
            availability: topic(prefix, device, "availability"),
            state: topic(prefix, device, "state"),
            events: topic(prefix, device, "events"),
            frames: topic(prefix, device, "frames"),
            stats: topic(prefix, device, "stats"),
        }
    }
}

/// Size in bytes of an MQTT 3.1.1 PUBLISH packet with this topic and payload length, as
/// rumqttc checks it against [`MqttConfig::max_packet_bytes`].
pub fn publish_packet_bytes(topic_bytes: usize, payload_bytes: usize, qos1: bool) -> usize {
    // Remaining length: topic length prefix, topic, packet id (QoS 1 only), payload.
    let remaining = 2 + topic_bytes + if qos1 { 2 } else { 0 } + payload_bytes;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Errors of the MQTT signal. Connection failures are not errors here: the signal retries
/// them and reports them through [`Mqtt::status`] and the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The broker URL cannot be parsed.
    #[error("invalid MQTT broker URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with anything before `@` replaced by `***`.
        url: String,
        /// The problem and the accepted form.
        reason: String,
    },
    /// The broker URL contains `user[:password]@`.
    #[error(
        "MQTT broker URL `{url}` contains credentials, which would show in `ps` and in logs: \
         remove `user:password@` and set mqtt.username and mqtt.password in the config file, \
         or GRADGATE_MQTT_USERNAME and GRADGATE_MQTT_PASSWORD"
    )]
    CredentialsInUrl {
        /// The URL with the credentials replaced by `***`.
        url: String,
    },
    /// The device id or the prefix cannot be used as MQTT topic levels.
    #[error("invalid MQTT {what} {value:?}: {reason}")]
    InvalidTopicLevel {
        /// `device id` or `topic prefix`.
        what: &'static str,
        /// The value given.
        value: String,
        /// The invalid character or level.
        reason: String,
    },
    /// A field of [`MqttConfig`] is out of range or conflicts with another.
    #[error("invalid mqtt.{field}: {reason}")]
    InvalidConfig {
        /// Field name, as in the config file.
        field: &'static str,
        /// The problem and the value to set.
        reason: String,
    },
    /// `mqtts://` without a CA file.
    #[error(
        "{url} uses TLS but mqtt.ca_file is not set: set it to the PEM file of the CA that \
         signed the broker's certificate (gradgate does not read the system's certificate \
         store)"
    )]
    MissingCaFile {
        /// The broker URL.
        url: String,
    },
    /// A CA, certificate or key file cannot be read. The message contains the OS error, so
    /// `source()` returns `None`; the `io::Error` itself is in `error`.
    #[error(
        "cannot read {setting} {}: {}; check the path and the file's permissions",
        path.display(),
        queue::os_message(.error)
    )]
    ReadTlsFile {
        /// The setting that names the file, such as `mqtt.ca_file (--mqtt-ca-file)`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A CA, certificate or key file has no usable content.
    #[error("invalid {setting} {}: {reason}", path.display())]
    InvalidTlsFile {
        /// The setting that names the file, such as `mqtt.ca_file (--mqtt-ca-file)`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The problem with its content.
        reason: String,
    },
    /// rustls rejected the ring provider's defaults; not expected with rustls 0.23.
    #[error("cannot set up TLS with rustls and ring: {0}")]
    TlsSetup(#[source] rustls::Error),
    /// The on-disk event queue failed (open, lock, write, size).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// An event payload would not fit in one MQTT packet.
    #[error(
        "event payload of {payload_bytes} bytes makes an MQTT packet of {packet_bytes} bytes, \
         over mqtt.max_packet_bytes = {max_packet_bytes}: raise the limit or send a smaller \
         payload"
    )]
    PayloadTooLarge {
        /// Payload length.
        payload_bytes: usize,
        /// Whole PUBLISH packet, header and topic included.
        packet_bytes: usize,
        /// The configured limit.
        max_packet_bytes: usize,
    },
    /// A thread could not be started.
    #[error("cannot start the MQTT {thread} thread: {error}")]
    Spawn {
        /// `link` or `worker`.
        thread: &'static str,
        /// The OS error.
        #[source]
        error: io::Error,
    },
}

/// Cause of the last failed connection attempt or of the end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// TCP connection refused, host unknown, or another network error.
    Unreachable,
    /// No CONNACK within the connection timeout (5 s).
    TimedOut,
    /// The broker refused the user name or password (CONNACK 4 or 5).
    Credentials,
    /// The TLS handshake failed: wrong CA, certificate not for this host, client
    /// certificate required or rejected.
    Tls,
    /// The broker refused for another reason: client id, protocol version, unavailable.
    Refused,
    /// An established connection broke.
    Lost,
    /// Anything else rumqttc reported.
    Other,
}

impl FailureKind {
    /// True for failures that retrying cannot fix without a change of configuration.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            FailureKind::Credentials | FailureKind::Tls | FailureKind::Refused
        )
    }
}

/// Snapshot of the signal's connection and queue; from [`Mqtt::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttStatus {
    /// True between a CONNACK and the next connection error.
    pub connected: bool,
    /// Message of the last connection failure, naming the broker and what to check;
    /// cleared by the next successful connection.
    pub last_error: Option<String>,
    /// Kind of the last connection failure, cleared like `last_error`.
    pub failure: Option<FailureKind>,
    /// Failed connection attempts since the last successful one.
    pub failed_attempts: u32,
    /// Events in the on-disk queue not yet acknowledged by the broker.
    pub queue_depth: u64,
}

/// Outcome of [`Mqtt::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events the broker acknowledged since [`Mqtt::start`].
    pub delivered: u64,
    /// Events still in the on-disk queue; the next start on the same folder sends them.
    pub left_in_queue: u64,
    /// Events kept in memory because the on-disk queue could not be written, and not
    /// acknowledged by the broker: lost.
    pub lost_in_memory: u64,
    /// The broker acknowledged the retained `offline`.
    pub offline_published: bool,
    /// The link thread ended before the report. False when it was still inside a connection
    /// attempt or still connected at the deadline; it then ends in the background.
    pub link_stopped: bool,
    /// [`MqttConfig::shutdown_timeout`] passed before the sequence finished.
    pub timed_out: bool,
}

/// Storage of an event that [`Mqtt::publish_event`] accepted, until the broker acknowledges
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Queued {
    /// In the on-disk queue, synced: the event survives broker outages and restarts.
    Disk,
    /// In memory, because the on-disk queue could not be written (disk full, I/O error):
    /// the event survives broker outages, but is lost if the process ends before the
    /// broker acknowledges it.
    Memory,
}

/// The running MQTT signal; see the module documentation.
///
/// Two threads run behind it: the link thread drives rumqttc's connection and reconnects,
/// and the worker publishes queued events, state and stats. Methods take `&self`; share the
/// `Mqtt` between threads by reference or in an `Arc`.
pub struct Mqtt {
    shared: Arc<Shared>,
    /// Sends frames directly, bypassing the worker; only QoS 0.
    client: Client,
    to_worker: Sender<Message>,
    publish_frames: bool,
    shutdown_timeout: Duration,
    worker: Option<JoinHandle<ShutdownReport>>,
    link: Option<JoinHandle<()>>,
    frame_drops: DropLog,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("url", &self.shared.url)
            .field("device_id", &self.shared.device_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Mqtt {
    /// Validates `config`, loads the TLS files, opens the on-disk queue (an error if another
    /// process has it locked or the folder is unwritable) and starts the link and worker
    /// threads. Does not wait for the broker: queued events go out once it connects.
    pub fn start(config: MqttConfig, stats: Arc<RunStats>) -> Result<Mqtt, MqttError> {
        config.validate()?;
        let tls = match &config.ca_file {
            Some(ca_file) if config.url.tls => {
                let client = config
                    .client_cert
                    .as_deref()
                    .zip(config.client_key.as_deref());
                Some(tls::client_config(ca_file, client)?)
            }
            _ => None,
        };

        let disk_queue =
            DiskQueue::open(&config.queue_dir, &config.device_id, config.queue_max_bytes)?;
        if disk_queue.dropped_on_open() > 0 {
            stats
                .events_dropped
                .fetch_add(disk_queue.dropped_on_open(), Ordering::Relaxed);
            warn!(
                "dropped the {} oldest queued event(s) of {} to fit mqtt.queue_max_bytes = {}",
                disk_queue.dropped_on_open(),
                disk_queue.path().display(),
                config.queue_max_bytes
            );
        }
        let queue = EventQueue::new(disk_queue, config.queue_max_bytes);
        stats
            .queue_depth
            .store(queue.len() as u64, Ordering::Relaxed);

        info!(
            "MQTT signal starting: broker {} (TLS {}), device id `{}`, prefix `{}`, queue {} \
             with {} pending event(s), limit {} bytes",
            config.url,
            if config.url.tls { "on" } else { "off" },
            config.device_id,
            config.prefix,
            queue.path().display(),
            queue.len(),
            config.queue_max_bytes
        );

        let topics = Topics::new(&config.prefix, &config.device_id);
        let client_id = format!("gradgate-{}", config.device_id);
        let options = mqtt_options(&config, &client_id, &topics, tls);
        let (client, mut connection) = Client::new(options, REQUEST_CHANNEL_CAPACITY);
        connection
            .eventloop
            .network_options
            .set_connection_timeout(link::CONNECT_TIMEOUT_S);

        let shared = Arc::new(Shared {
            url: config.url.clone(),
            client_id,
            device_id: config.device_id.clone(),
            topics,
            max_packet_bytes: config.max_packet_bytes,
            stats,
            queue: Mutex::new(queue),
            link: Mutex::new(Link::default()),
            ready: AtomicBool::new(false),
            ood: AtomicBool::new(false),
            stop_link: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            failure: Mutex::new(Failure::default()),
        });

        let (to_worker, inbox) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel();
        let backoff = link::Backoff {
            min: config.reconnect_min,
            max: config.reconnect_max,
        };
        let worker = Worker::new(
            Arc::clone(&shared),
            client.clone(),
            inbox,
            stop_tx,
            config.stats_interval,
        );
        let worker = std::thread::Builder::new()
            .name("mqtt-worker".into())
            .spawn(move || worker.run())
            .map_err(|error| MqttError::Spawn {
                thread: "worker",
                error,
            })?;
        let link_shared = Arc::clone(&shared);
        let link_to_worker = to_worker.clone();
        let link = std::thread::Builder::new()
            .name("mqtt-link".into())
            .spawn(move || link::run(connection, link_shared, link_to_worker, stop_rx, backoff));
        let link = match link {
            Ok(link) => link,
            Err(error) => {
                // The worker ends at once: its inbox closes when `to_worker` drops here.
                drop(to_worker);
                let _ = worker.join();
                return Err(MqttError::Spawn {
                    thread: "link",
                    error,
                });
            }
        };

        Ok(Mqtt {
            shared,
            client,
            to_worker,
            publish_frames: config.publish_frames,
            shutdown_timeout: config.shutdown_timeout,
            worker: Some(worker),
            link: Some(link),
            frame_drops: DropLog::new(),
        })
    }

    /// Appends one event payload to the on-disk queue (durable when this returns) and
    /// wakes the worker, which publishes it on `<prefix>/<device>/events` with QoS 1, not
    /// retained, after every event queued before it.
    ///
    /// Blocks only on the local disk. When the queue is at its limit the oldest undelivered
    /// events are dropped to make room (logged at warn, counted in
    /// `RunStats::events_dropped`).
    ///
    /// Returns [`Queued::Disk`] normally. When the write fails (disk full, I/O error) the
    /// event is kept in memory instead and sent in the same order, and this returns
    /// [`Queued::Memory`]: the event survives broker outages, but not the end of the
    /// process. The first failure of a burst is logged at error with the OS error. The
    /// memory fallback keeps at most [`MEMORY_MAX_EVENTS`] events and
    /// [`MqttConfig::queue_max_bytes`] of payload, and drops its oldest events beyond that
    /// (logged at warn, counted in `RunStats::events_dropped`).
    ///
    /// Returns [`MqttError::PayloadTooLarge`] when the packet would exceed
    /// [`MqttConfig::max_packet_bytes`], and [`MqttError::Queue`] when the payload exceeds
    /// the whole queue limit. Nothing is queued after an error.
    pub fn publish_event(&self, payload: &[u8]) -> Result<Queued, MqttError> {
        let max_packet_bytes = self.shared.max_packet_bytes;
        let packet_bytes =
            publish_packet_bytes(self.shared.topics.events.len(), payload.len(), true);
        if packet_bytes > max_packet_bytes {
            return Err(MqttError::PayloadTooLarge {
                payload_bytes: payload.len(),
                packet_bytes,
                max_packet_bytes,
            });
        }

        let (pushed, path) = {
            let mut queue = lock(&self.shared.queue);
            let pushed = queue.push(payload)?;
            self.shared.update_depth(&queue);
            (pushed, queue.path().to_path_buf())
        };
        if pushed.dropped > 0 {
            self.shared
                .stats
                .events_dropped
                .fetch_add(pushed.dropped, Ordering::Relaxed);
            // The memory fallback logs each of its drops itself.
            if pushed.place == Queued::Disk {
                warn!(
                    "event queue {} is full: dropped the {} oldest undelivered event(s) to \
                     queue event {}",
                    path.display(),
                    pushed.dropped,
                    pushed.seq
                );
            }
        }
        self.wake();
        Ok(pushed.place)
    }

    /// Sets the gate state (`true`: out-of-distribution, published as `out`). The worker
    /// publishes it retained on `<prefix>/<device>/state` with QoS 1 when it differs from
    /// what it last published on this connection. Never blocks.
    pub fn publish_state(&self, ood: bool) {
        self.shared.ood.store(ood, Ordering::Release);
        self.wake();
    }

    /// Publishes one per-frame payload on `<prefix>/<device>/frames` with QoS 0, without
    /// waiting. Returns true when handed to rumqttc, or when frames are off (a no-op).
    /// Returns false when dropped: not connected, rumqttc's request channel full, or the
    /// packet over [`MqttConfig::max_packet_bytes`]. Drops are counted in
    /// `RunStats::mqtt_frames_dropped` and logged at warn at most once per 10 s.
    pub fn try_publish_frame(&self, payload: &[u8]) -> bool {
        if !self.publish_frames {
            return true;
        }
        let reason = if !self.shared.ready.load(Ordering::Acquire) {
            DropReason::NotConnected
        } else if publish_packet_bytes(self.shared.topics.frames.len(), payload.len(), false)
            > self.shared.max_packet_bytes
        {
            DropReason::TooLarge
        } else {
            match self.client.try_publish(
                self.shared.topics.frames.as_str(),
                QoS::AtMostOnce,
                false,
                payload,
            ) {
                Ok(()) => return true,
                Err(_) => DropReason::ChannelFull,
            }
        };
        RunStats::bump(&self.shared.stats.mqtt_frames_dropped);
        self.frame_drops
            .record(reason, self.shared.max_packet_bytes);
        false
    }

    /// Connection state, last failure and queue depth.
    pub fn status(&self) -> MqttStatus {
        let connected = lock(&self.shared.link).up;
        let failure = lock(&self.shared.failure);
        MqttStatus {
            connected,
            last_error: failure.message.clone(),
            failure: failure.kind,
            failed_attempts: failure.attempts,
            queue_depth: self.shared.stats.queue_depth.load(Ordering::Relaxed),
        }
    }

    /// Stops the signal within [`MqttConfig::shutdown_timeout`]: if connected, delivers
    /// what is still queued, publishes `offline` retained and disconnects; then joins the
    /// threads. Unacknowledged events stay on disk for the next start. Logs a summary at
    /// info.
    pub fn shutdown(mut self) -> ShutdownReport {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.stop(deadline)
    }

    fn stop(&mut self, deadline: Instant) -> ShutdownReport {
        let _ = self.to_worker.send(Message::Shutdown { deadline });
        let report = match self.worker.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            Some(Err(_)) | None => {
                error!("the MQTT worker thread panicked; unacknowledged events stay in the queue");
                let queue = lock(&self.shared.queue);
                ShutdownReport {
                    delivered: 0,
                    left_in_queue: queue.disk_len() as u64,
                    lost_in_memory: queue.memory_len() as u64,
                    offline_published: false,
                    link_stopped: false,
                    timed_out: true,
                }
            }
        };
        // The worker has logged why the link thread may still run; it ends by itself.
        if let Some(link) = self.link.take() {
            if report.link_stopped {
                let _ = link.join();
            }
        }
        report
    }

    fn wake(&self) {
        if !self.shared.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.to_worker.send(Message::Wake);
        }
    }
}

impl Drop for Mqtt {
    /// Without [`Mqtt::shutdown`]: signals the threads to stop now and does not wait for them.
    fn drop(&mut self) {
        if self.worker.is_some() {
            let _ = self.to_worker.send(Message::Shutdown {
                deadline: Instant::now(),
            });
        }
    }
}

fn mqtt_options(
    config: &MqttConfig,
    client_id: &str,
    topics: &Topics,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, config.url.host_for_connect(), config.url.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(RUMQTTC_INFLIGHT)
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
        .set_last_will(LastWill::new(
            &topics.availability,
            OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(username) = &config.username {
        options.set_credentials(username, config.password.as_deref().unwrap_or(""));
    }
    if let Some(tls) = tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    }
    options
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum DropReason {
    NotConnected = 0,
    ChannelFull = 1,
    TooLarge = 2,
}

/// Rate limit for the warning about dropped per-frame messages: lock-free, because the
/// frame loop calls it.
struct DropLog {
    started: Instant,
    /// Drops since the last warning.
    count: AtomicU64,
    /// Milliseconds after `started` of the last warning; `u64::MAX` before the first.
    last_warn_ms: AtomicU64,
    last_reason: AtomicU8,
}

impl DropLog {
    fn new() -> DropLog {
        DropLog {
            started: Instant::now(),
            count: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(u64::MAX),
            last_reason: AtomicU8::new(DropReason::NotConnected as u8),
        }
    }

    fn record(&self, reason: DropReason, max_packet_bytes: usize) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_reason.store(reason as u8, Ordering::Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let interval_ms = FRAME_DROP_WARN_INTERVAL.as_millis() as u64;
        if last != u64::MAX && now_ms.saturating_sub(last) < interval_ms {
            return;
        }
        // One thread wins the right to warn for this interval.
        if self
            .last_warn_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let count = self.count.swap(0, Ordering::Relaxed);
        let reason = match self.last_reason.load(Ordering::Relaxed) {
            0 => "broker not connected".to_string(),
            1 => "rumqttc's request channel is full".to_string(),
            _ => format!("payload over mqtt.max_packet_bytes = {max_packet_bytes}"),
        };
        warn!(
            "dropped {count} per-frame MQTT message(s) since the last warning (latest reason: \
             {reason}); further drops are reported at most every {} s",
            FRAME_DROP_WARN_INTERVAL.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_prefix_device_leaf() {
        let topics = Topics::new("home/cams", "door");
        assert_eq!(topics.availability, "home/cams/door/availability");
        assert_eq!(topics.state, "home/cams/door/state");
        assert_eq!(topics.events, "home/cams/door/events");
        assert_eq!(topics.frames, "home/cams/door/frames");
        assert_eq!(topics.stats, "home/cams/door/stats");
    }

    #[test]
    fn publish_packet_size_matches_mqtt_encoding() {
        // Topic "a/b" (3 bytes), QoS 0, 10-byte payload: 1 + 1 + (2 + 3 + 10).
        assert_eq!(publish_packet_bytes(3, 10, false), 17);
        // QoS 1 adds the packet id.
        assert_eq!(publish_packet_bytes(3, 10, true), 19);
        // 128 bytes of remaining length need a 2-byte length field.
        assert_eq!(publish_packet_bytes(3, 123, false), 1 + 2 + 128);
        assert_eq!(publish_packet_bytes(3, 122, false), 1 + 1 + 127);
    }

    #[test]
    fn publish_packet_size_agrees_with_rumqttc() {
        for (payload, qos) in [
            (0, QoS::AtMostOnce),
            (300, QoS::AtLeastOnce),
            (20_000, QoS::AtLeastOnce),
        ] {
            let mut publish = rumqttc::Publish::new("gradgate/cam/events", qos, vec![7u8; payload]);
            if qos == QoS::AtLeastOnce {
                publish.pkid = 1;
            }
            let expected = rumqttc::Packet::Publish(publish).size();
            let qos1 = qos == QoS::AtLeastOnce;
            assert_eq!(
                publish_packet_bytes(19, payload, qos1),
                expected,
                "payload {payload}"
            );
        }
    }

    #[test]
    fn failure_kinds_that_need_an_operator() {
        assert!(FailureKind::Credentials.needs_operator());
        assert!(FailureKind::Tls.needs_operator());
        assert!(!FailureKind::Unreachable.needs_operator());
        assert!(!FailureKind::Lost.needs_operator());
    }
}
