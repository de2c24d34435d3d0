//! The link thread: drives rumqttc's connection, reconnects with backoff, and reports
//! connection events to the worker.
//!
//! Design: this thread only blocks in `Connection::recv` and in the backoff sleep, and never
//! cancels a poll halfway (a `recv_timeout` that expires while rumqttc flushes a large
//! packet could leave half a packet in its write buffer). Everything that must not wait on
//! the network runs on the worker thread instead, which this thread feeds through a channel.

use super::worker::{lock, Message, Shared};
use super::{FailureKind, MqttUrl};
use log::{error, info, warn};
use rumqttc::{
    ConnectReturnCode, Connection, ConnectionError, Event, Outgoing, Packet, StateError,
};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections the broker closes soon after their CONNACK, in a row, before the warning
/// about a duplicate client id.
///
/// Trade-off: one such close is an ordinary network event; three in a row at reconnect
/// speed almost always mean another client with the same id.
const TAKEOVER_CLOSES: u32 = 3;
/// A connection the broker closes within this time of its CONNACK counts towards
/// [`TAKEOVER_CLOSES`]; at least twice the first reconnect delay is used, because two
/// clients with one id take turns at that pace.
const SHORT_CONNECTION: Duration = Duration::from_secs(10);
/// Minimum time between two warnings about a duplicate client id.
const TAKEOVER_WARN_INTERVAL: Duration = Duration::from_secs(300);

/// Capped exponential backoff between connection attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay after `failures` consecutive failed attempts (1 for the first failure):
    /// `min × 2^(failures − 1)`, at most `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.min
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |delay| delay.min(self.max))
    }
}

/// Runs until the worker requests a stop (`Shared::stop_link` plus a message on `stop`)
/// or rumqttc reports that the DISCONNECT went out; then sends `Message::LinkStopped`.
pub(crate) fn run(
    mut connection: Connection,
    shared: Arc<Shared>,
    worker: Sender<Message>,
    stop: Receiver<()>,
    backoff: Backoff,
) {
    let url = shared.url.to_string();
    // Counts connections; the worker ignores events of a generation that is not current.
    let mut generation = 0u64;
    // Failed connection attempts since the last successful one.
    let mut failures = 0u32;
    let mut last_kind: Option<FailureKind> = None;
    let mut takeover = TakeoverWatch::new(backoff.min);

    loop {
        let Ok(event) = connection.recv() else {
            // rumqttc's request channel closed; nothing can be sent any more.
            break;
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                generation += 1;
                {
                    let mut link = lock(&shared.link);
                    link.generation = generation;
                    link.up = true;
                }
                shared.clear_failure();
                info!(
                    "connected to MQTT broker {url} as client id `{}` (attempt {})",
                    shared.client_id,
                    failures + 1
                );
                failures = 0;
                last_kind = None;
                takeover.connected();
                let _ = worker.send(Message::Connected { generation });
                if shared.stop_link.load(Ordering::Acquire) {
                    // Shutdown began while this attempt was under way. Closing without
                    // DISCONNECT makes the broker publish the `offline` last will.
                    break;
                }
            }
            Ok(event) => {
                if forward(&event, generation, &worker) {
                    info!("disconnected from MQTT broker {url}");
                    break;
                }
            }
            Err(connection_error) => {
                let was_up = reset_after_error(&mut connection, &shared, generation, &worker);
                let (kind, reason) = describe(&connection_error, &shared, was_up);
                if shared.stop_link.load(Ordering::Acquire) {
                    break;
                }
                if was_up {
                    failures = 0;
                    let delay = backoff.delay(1);
                    warn!(
                        "connection to MQTT broker {url} lost: {reason}; reconnecting in {}",
                        humantime::format_duration(delay)
                    );
                    if let Some(closes) = takeover.lost(&connection_error) {
                        warn!(
                            "broker {url} closed the connection right after accepting it \
                             {closes} times in a row. A broker does that when another client \
                             connects with the same client id, here `{}`: give each camera \
                             its own --device-id (device_id in the config file). The default \
                             is the host name, so two boards both named `raspberrypi` \
                             collide",
                            shared.client_id
                        );
                    }
                    shared.record_failure(FailureKind::Lost, reason, failures);
                    if wait(&stop, delay) {
                        break;
                    }
                    continue;
                }

                failures = failures.saturating_add(1);
                let delay = backoff.delay(failures);
                let message = format!(
                    "connection attempt {failures} to MQTT broker {url} failed: {reason}; \
                     retrying in {}",
                    humantime::format_duration(delay)
                );
                // Configuration problems are errors the operator must fix; log them at error
                // level when they first appear, and repeats at warn.
                if kind.needs_operator() && last_kind != Some(kind) {
                    error!("{message}");
                } else {
                    warn!("{message}");
                }
                last_kind = Some(kind);
                shared.record_failure(kind, reason, failures);
                if wait(&stop, delay) {
                    break;
                }
            }
        }
    }

    {
        let mut link = lock(&shared.link);
        link.up = false;
        shared.ready.store(false, Ordering::Release);
    }
    let _ = worker.send(Message::LinkStopped);
}

/// Detects a broker that closes each connection soon after its CONNACK, the sign of a
/// second client with the same client id, and rate-limits the warning about it.
struct TakeoverWatch {
    /// Connections shorter than this count as closed right after the CONNACK.
    short: Duration,
    /// When the current connection got its CONNACK.
    connected_at: Option<Instant>,
    /// Short connections closed by the broker in a row.
    closes: u32,
    last_warning: Option<Instant>,
}

impl TakeoverWatch {
    fn new(reconnect_min: Duration) -> TakeoverWatch {
        TakeoverWatch {
            short: SHORT_CONNECTION.max(reconnect_min.saturating_mul(2)),
            connected_at: None,
            closes: 0,
            last_warning: None,
        }
    }

    fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// Records the end of a connection; returns the count of short connections in a row
    /// when it is time to warn.
    fn lost(&mut self, error: &ConnectionError) -> Option<u32> {
        let lived = self.connected_at.take().map(|at| at.elapsed());
        if !(closed_by_broker(error).is_some() && lived.is_some_and(|lived| lived < self.short)) {
            self.closes = 0;
            return None;
        }
        self.closes += 1;
        let quiet = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= TAKEOVER_WARN_INTERVAL);
        if self.closes >= TAKEOVER_CLOSES && quiet {
            self.last_warning = Some(Instant::now());
            return Some(self.closes);
        }
        None
    }
}

/// Sleeps for `delay` unless the worker requests a stop first; returns true when it did.
fn wait(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

/// Sends the events the worker tracks; true for the outgoing DISCONNECT.
fn forward(event: &Event, generation: u64, worker: &Sender<Message>) -> bool {
    let message = match event {
        Event::Incoming(Packet::PubAck(ack)) => Message::Acked {
            generation,
            pkid: ack.pkid,
        },
        // Packet id 0 is a QoS 0 publish (frames, stats), which the worker does not track.
        Event::Outgoing(Outgoing::Publish(pkid)) if *pkid != 0 => Message::Sent {
            generation,
            pkid: *pkid,
        },
        Event::Outgoing(Outgoing::Disconnect) => return true,
        _ => return false,
    };
    let _ = worker.send(message);
    false
}

/// Marks the link down and discards what rumqttc still holds for the lost connection;
/// returns whether the link was up.
///
/// With a clean session rumqttc would drop its pending publishes at the next CONNACK
/// anyway. Discarding them here, under the link lock, also drops requests that are still
/// in its channel, so every QoS 1 publish that rumqttc sends after the next CONNACK was
/// submitted by the worker after that CONNACK. That keeps the worker's packet-id bookkeeping
/// exact; the worker resubmits unacknowledged events from the on-disk queue instead.
fn reset_after_error(
    connection: &mut Connection,
    shared: &Shared,
    generation: u64,
    worker: &Sender<Message>,
) -> bool {
    let stale: Vec<Event>;
    let was_up;
    {
        let mut link = lock(&shared.link);
        was_up = link.up;
        link.up = false;
        shared.ready.store(false, Ordering::Release);
        connection.eventloop.clean();
        connection.eventloop.pending.clear();
        // Events rumqttc buffered before the error (a PUBACK read in the same batch, say)
        // belong to the old connection. Left here, they would come out after the next CONNACK.
        stale = connection.eventloop.state.events.drain(..).collect();
    }
    for event in &stale {
        forward(event, generation, worker);
    }
    if was_up {
        let _ = worker.send(Message::Lost { generation });
    }
    was_up
}

/// Classifies a connection error and writes a message that names the broker and the fix.
/// `was_up`: the error ended a connection that had its CONNACK.
fn describe(error: &ConnectionError, shared: &Shared, was_up: bool) -> (FailureKind, String) {
    let url = &shared.url;
    // With TLS 1.3 a broker rejects a client certificate only after the handshake, so its
    // alert arrives while rumqttc reads the CONNACK, wrapped in a state error.
    if let Some(tls_error) = find_rustls_error(error) {
        return (FailureKind::Tls, describe_tls(tls_error, url));
    }
    // mosquitto 2.0.11 resets the connection both when a TLS listener gets a plain CONNECT
    // and when a plain listener gets a TLS ClientHello. A close before the CONNACK
    // therefore most often means that the scheme does not match the listener.
    if let Some(closed) = closed_by_broker(error).filter(|_| !was_up) {
        let host = url.host_for_connect();
        let port = url.port;
        return if url.tls {
            (
                FailureKind::Tls,
                format!(
                    "TLS handshake with {url} failed, because the broker closed the connection \
                     ({closed}): if port {port} is a plain MQTT listener, the scheme does not \
                     match it; use mqtt://{host}:{port}, or the broker's TLS port with mqtts://"
                ),
            )
        } else {
            (
                FailureKind::Other,
                format!(
                    "broker {url} closed the connection before its CONNACK ({closed}): if port \
                     {port} is a TLS listener, the scheme does not match it; use \
                     mqtts://{host}:{port} and set mqtt.ca_file"
                ),
            )
        };
    }
    if let ConnectionError::Tls(_) = error {
        return (
            FailureKind::Tls,
            format!(
                "TLS connection to {url} failed ({}): check mqtt.ca_file, mqtt.client_cert and \
                 mqtt.client_key",
                error_chain(error)
            ),
        );
    }
    match error {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => {
            let code = match error {
                ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
                    "bad user name or password"
                }
                _ => "not authorized",
            };
            (
                FailureKind::Credentials,
                format!(
                    "broker {url} refused the credentials ({code}): check mqtt.username and \
                     mqtt.password in the config file, or GRADGATE_MQTT_USERNAME and \
                     GRADGATE_MQTT_PASSWORD"
                ),
            )
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => (
            FailureKind::Refused,
            format!(
                "broker {url} rejected the client id `{}`: use a shorter device id of letters \
                 and digits (MQTT 3.1.1 brokers need only accept 23 of them)",
                shared.client_id
            ),
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::RefusedProtocolVersion) => (
            FailureKind::Refused,
            format!("broker {url} does not accept MQTT 3.1.1: enable it on the broker"),
        ),
        ConnectionError::ConnectionRefused(code) => (
            FailureKind::Refused,
            format!("broker {url} refused the connection ({code:?})"),
        ),
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => (
            FailureKind::Unreachable,
            format!(
                "nothing accepts connections at {url} (connection refused): check that the \
                 broker runs and listens on port {}",
                url.port
            ),
        ),
        ConnectionError::Io(io) => (
            FailureKind::Unreachable,
            format!("network error with {url}: {io}"),
        ),
        ConnectionError::NetworkTimeout => (
            FailureKind::TimedOut,
            format!(
                "no answer from {url} within {CONNECT_TIMEOUT_S} s: check the host, the port \
                 and any firewall"
            ),
        ),
        other => (FailureKind::Other, error_chain(other)),
    }
}

/// Writes the message for a rustls error: which side rejected what, and the setting to
/// check.
fn describe_tls(error: &rustls::Error, url: &MqttUrl) -> String {
    use rustls::AlertDescription as Alert;
    match error {
        rustls::Error::InvalidCertificate(reason) => format!(
            "TLS handshake with {url} failed, because the broker's certificate is not trusted \
             ({reason:?}): check mqtt.ca_file (it must hold the CA that signed the broker's \
             certificate, and the certificate must be issued for host `{}`)",
            url.host
        ),
        rustls::Error::AlertReceived(Alert::CertificateRequired) => format!(
            "TLS handshake with {url} failed, because the broker requires a client \
             certificate: set mqtt.client_cert and mqtt.client_key"
        ),
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied),
        ) => format!(
            "TLS handshake with {url} failed, because the broker rejected the client \
             certificate ({alert:?}): check mqtt.client_cert and mqtt.client_key, and that the \
             broker trusts the CA that signed them"
        ),
        other => format!(
            "TLS handshake with {url} failed ({other}): check mqtt.ca_file and, if the broker \
             requires one, mqtt.client_cert and mqtt.client_key"
        ),
    }
}

/// Finds the rustls error inside a connection error. rustls errors travel inside
/// `io::Error`s, whose `source()` skips the wrapped error itself.
fn find_rustls_error(error: &ConnectionError) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if wrapped.is_some() {
            return wrapped;
        }
        current = error.source();
    }
    None
}

/// Describes how the broker ended the connection (end of stream, reset, abort), found
/// anywhere in the error's chain; `None` for other errors.
fn closed_by_broker(error: &ConnectionError) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(StateError::ConnectionAborted) = error.downcast_ref::<StateError>() {
            return Some("connection closed by peer".into());
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let closed = matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            );
            return closed.then(|| super::queue::os_message(io));
        }
        current = error.source();
    }
    None
}

/// Connection timeout handed to rumqttc (TCP, TLS and CONNACK together), in seconds.
pub(crate) const CONNECT_TIMEOUT_S: u64 = 5;

/// Joins the error's message and those of its sources, skipping repeats.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_up_to_max() {
        let backoff = Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let delays: Vec<u64> = (1..=9)
            .map(|failures| backoff.delay(failures).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn takeover_warning_is_rate_limited() {
        let mut watch = TakeoverWatch::new(Duration::from_millis(500));
        let closed = || ConnectionError::MqttState(StateError::ConnectionAborted);
        let mut warnings = Vec::new();
        for _ in 0..5 {
            watch.connected();
            warnings.push(watch.lost(&closed()));
        }
        assert_eq!(warnings, vec![None, None, Some(3), None, None]);
    }

    #[test]
    fn takeover_count_restarts_after_other_failure() {
        let mut watch = TakeoverWatch::new(Duration::from_millis(500));
        let closed = || ConnectionError::MqttState(StateError::ConnectionAborted);
        for _ in 0..2 {
            watch.connected();
            assert_eq!(watch.lost(&closed()), None);
        }
        watch.connected();
        assert_eq!(watch.lost(&ConnectionError::NetworkTimeout), None);
        for _ in 0..2 {
            watch.connected();
            assert_eq!(watch.lost(&closed()), None);
        }
        watch.connected();
        assert_eq!(watch.lost(&closed()), Some(3));
    }

    #[test]
    fn backoff_saturates_for_huge_failure_counts() {
        let backoff = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
    }
}
