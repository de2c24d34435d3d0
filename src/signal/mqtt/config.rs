//! Broker URL, configuration and its validation.

use super::MqttError;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default port of `mqtt://` (plain TCP), from the MQTT specification.
pub const DEFAULT_PORT: u16 = 1883;
/// Default port of `mqtts://` (MQTT over TLS), from the MQTT specification.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// Maximum packet size MQTT 3.1.1 can encode: a 4-byte remaining length encodes at most
/// 268 435 455 bytes, plus the fixed header.
const MQTT_MAX_PACKET_BYTES: usize = 268_435_455 + 5;
/// Maximum topic length MQTT can encode (a 16-bit length prefix).
const MQTT_MAX_TOPIC_BYTES: usize = 65_535;
/// Smallest accepted [`MqttConfig::queue_max_bytes`], in bytes.
///
/// A smaller queue holds only a handful of events of about 350 bytes each (plus 21 bytes of
/// record header), so a short outage would drop most of them.
pub const MIN_QUEUE_MAX_BYTES: u64 = 64 * 1024;
/// Smallest accepted [`MqttConfig::max_packet_bytes`], in bytes.
///
/// An event packet takes about 350 bytes plus its topic and a stats packet about 250.
/// rumqttc and mosquitto treat a packet over the limit as a protocol error and close the
/// connection, so a limit below one message would drop the connection over and over.
pub const MIN_MAX_PACKET_BYTES: usize = 4 * 1024;

/// Broker address: `mqtt://host[:port]` or `mqtts://host[:port]`.
///
/// Credentials, paths and query strings are rejected. Credentials in a URL would show in
/// `ps` and in logs; they belong in [`MqttConfig::username`] and [`MqttConfig::password`].
/// `host` is a DNS name or an IP address; an IPv6 address is written in brackets in the URL
/// and stored without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// True for `mqtts://`: connect with TLS (requires [`MqttConfig::ca_file`]).
    pub tls: bool,
    /// Host name or IP address, without brackets.
    pub host: String,
    /// TCP port; 1883 for `mqtt://` and 8883 for `mqtts://` when the URL gives none.
    pub port: u16,
}

impl MqttUrl {
    /// Host as rumqttc expects it: IPv6 addresses in brackets, so that `host:port` resolves.
    pub(crate) fn host_for_connect(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for MqttUrl {
    type Err = MqttError;

    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`; a trailing `/` is allowed.
    fn from_str(text: &str) -> Result<MqttUrl, MqttError> {
        let invalid = |reason: String| MqttError::InvalidUrl {
            url: redact_userinfo(text),
            reason,
        };

        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(invalid(format!(
                "missing scheme: write mqtt://{text} (plain) or mqtts://{text} (TLS)"
            )));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => false,
            "mqtts" => true,
            _ => {
                return Err(invalid(format!(
                    "unsupported scheme `{scheme}`: use mqtt:// (plain TCP) or mqtts:// (TLS)"
                )))
            }
        };

        // The authority ends at the first `/`, `?` or `#`; only an empty path or `/` may follow.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            return Err(invalid(format!(
                "unexpected `{tail}` after the host: the broker URL takes no path, query or fragment"
            )));
        }
        if authority.contains('@') {
            return Err(MqttError::CredentialsInUrl {
                url: redact_userinfo(text),
            });
        }

        if let Some(reason) = unbracketed_ipv6(scheme, authority) {
            return Err(invalid(reason));
        }
        let (host, port_text) = split_host_port(authority).map_err(invalid)?;
        if host.is_empty() {
            return Err(invalid(
                "missing host: write e.g. mqtt://localhost:1883".into(),
            ));
        }
        let port = match port_text {
            None => {
                if tls {
                    DEFAULT_TLS_PORT
                } else {
                    DEFAULT_PORT
                }
            }
            // `u16::from_str` accepts a leading `+`, which no URL parser does.
            Some(port) => match port.parse::<u16>() {
                Ok(number) if number != 0 && port.bytes().all(|b| b.is_ascii_digit()) => number,
                _ => {
                    return Err(invalid(format!(
                        "invalid port `{port}`: expected digits only, a number from 1 to 65535"
                    )))
                }
            },
        };
        Ok(MqttUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Returns the reason for rejecting an authority that is an IPv6 address without brackets,
/// such as `::1` or `::1:1883`, with the bracketed form to write instead.
fn unbracketed_ipv6(scheme: &str, authority: &str) -> Option<String> {
    if authority.starts_with('[') || authority.matches(':').count() < 2 {
        return None;
    }
    let is_ipv6 = |text: &str| text.parse::<std::net::Ipv6Addr>().is_ok();
    // `::1:1883` is itself a valid IPv6 address, so the port cannot be told apart; suggest
    // both readings.
    let with_port = authority
        .rsplit_once(':')
        .filter(|(host, port)| is_ipv6(host) && port.bytes().all(|b| b.is_ascii_digit()));
    let example = match with_port {
        Some((host, port)) if is_ipv6(authority) => format!(
            "{scheme}://[{host}]:{port}, or {scheme}://[{authority}] if `{port}` is part of \
             the address"
        ),
        Some((host, port)) => format!("{scheme}://[{host}]:{port}"),
        None if is_ipv6(authority) => format!("{scheme}://[{authority}]"),
        None => format!("{scheme}://[::1]:1883"),
    };
    Some(format!(
        "`{authority}` has more than one `:`, and an IPv6 address needs brackets in a URL: \
         write {example}"
    ))
}

/// Splits `host[:port]` or `[ipv6][:port]` and checks the host's characters.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!(
                "missing `]` after the IPv6 address in `{authority}`"
            ));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{host}` in brackets is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected `{after}` after `[{host}]`")),
            },
        };
    }

    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "invalid character `{bad}` in host `{host}`: use a DNS name, an IPv4 address or an \
             IPv6 address in brackets"
        ));
    }
    Ok((host, port))
}

/// Replaces anything before `@` in the authority with `***`, so that an error message never
/// repeats a password given in a URL.
fn redact_userinfo(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

impl<'de> Deserialize<'de> for MqttUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MqttUrl, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Settings of the MQTT signal; the `[mqtt]` section of the configuration file.
///
/// Durations in the file are humantime strings (`"500ms"`, `"10s"`, `"1m"`); sizes are
/// bytes. [`Mqtt::start`](super::Mqtt::start) validates the whole struct and names the first
/// invalid field. `Debug` prints the password as `<redacted>`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker address. Default `mqtt://localhost:1883`.
    pub url: MqttUrl,
    /// Device id, the second topic level: one non-empty level without `/`, `+`, `#` or
    /// control characters. No default: it must be set.
    pub device_id: String,
    /// Topic prefix, the first level(s); may contain `/` between non-empty levels. Default
    /// `gradgate`.
    pub prefix: String,
    /// User name for the broker, if it requires one.
    pub username: Option<String>,
    /// Password for the broker; requires `username`. Never logged or printed.
    pub password: Option<String>,
    /// PEM file with the CA certificate(s) that signed the broker's certificate; required
    /// for `mqtts://`. There is no fallback to the system's certificate store.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for brokers that require client
    /// certificates; requires `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// Folder of the on-disk event queue; created if missing. No default: it must be set.
    pub queue_dir: PathBuf,
    /// Size limit of the on-disk queue in bytes; at the limit the oldest undelivered events
    /// are dropped. At least [`MIN_QUEUE_MAX_BYTES`] (64 KiB). Default 8 MiB.
    pub queue_max_bytes: u64,
    /// Publish one message per frame on `<prefix>/<device>/frames`. Default off.
    pub publish_frames: bool,
    /// Interval of the stats topic; zero disables it. Default 10 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub stats_interval: Duration,
    /// Largest MQTT packet sent or accepted, in bytes, header and topic included. At least
    /// [`MIN_MAX_PACKET_BYTES`] (4 KiB). Default 1 MiB (rumqttc's own default is 10 KiB).
    pub max_packet_bytes: usize,
    /// MQTT keep-alive: whole seconds from 1 s to 65535 s, or zero to disable pings. The
    /// broker publishes the last will after about 1.5 × this without traffic. Default 30 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub keep_alive: Duration,
    /// First delay between connection attempts; doubled after each failure. Default 0.5 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub reconnect_min: Duration,
    /// Cap on the delay between connection attempts. Default 30 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub reconnect_max: Duration,
    /// Time [`Mqtt::shutdown`](super::Mqtt::shutdown) may take to deliver queued events,
    /// publish `offline` and disconnect. Default 5 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            url: MqttUrl {
                tls: false,
                host: "localhost".into(),
                port: DEFAULT_PORT,
            },
            device_id: String::new(),
            prefix: "gradgate".into(),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            queue_dir: PathBuf::new(),
            queue_max_bytes: 8 << 20,
            publish_frames: false,
            stats_interval: Duration::from_secs(10),
            max_packet_bytes: 1 << 20,
            keep_alive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("device_id", &self.device_id)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("queue_dir", &self.queue_dir)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("publish_frames", &self.publish_frames)
            .field("stats_interval", &self.stats_interval)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("keep_alive", &self.keep_alive)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl MqttConfig {
    /// Default settings for `url` and `device_id`. `queue_dir` is still empty and must be
    /// set before [`Mqtt::start`](super::Mqtt::start).
    pub fn new(url: MqttUrl, device_id: String) -> MqttConfig {
        MqttConfig {
            url,
            device_id,
            ..MqttConfig::default()
        }
    }

    /// Checks every field that [`Mqtt::start`](super::Mqtt::start) relies on, in the order
    /// of the struct, and returns the first problem.
    pub fn validate(&self) -> Result<(), MqttError> {
        validate_topic_level("device id", &self.device_id)?;
        validate_prefix(&self.prefix)?;
        let longest = super::topic(&self.prefix, &self.device_id, "availability");
        if longest.len() > MQTT_MAX_TOPIC_BYTES {
            return Err(invalid(
                "prefix",
                format!(
                    "topics would be {} bytes long, over MQTT's limit of {MQTT_MAX_TOPIC_BYTES}: \
                     shorten the prefix or the device id",
                    longest.len()
                ),
            ));
        }

        if self.password.is_some() && self.username.is_none() {
            return Err(invalid(
                "password",
                "a password without a user name cannot be sent in MQTT 3.1.1: set the user \
                 name too (mqtt.username or GRADGATE_MQTT_USERNAME)"
                    .into(),
            ));
        }

        match (self.url.tls, &self.ca_file) {
            (true, None) => {
                return Err(MqttError::MissingCaFile {
                    url: self.url.to_string(),
                })
            }
            (false, Some(path)) => {
                return Err(invalid(
                    "ca_file",
                    format!(
                        "{} is set but {} is plain TCP: use mqtts://{}:{} for TLS, or remove \
                         ca_file",
                        path.display(),
                        self.url,
                        self.url.host_for_connect(),
                        self.url.port
                    ),
                ))
            }
            _ => {}
        }
        if self.url.tls && self.url.host.contains(':') {
            return Err(invalid(
                "url",
                format!(
                    "TLS to an IPv6 address ({}) is not supported by rumqttc 0.25: use a host name \
                     that the broker's certificate names",
                    self.url
                ),
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "client_key",
                    "client_cert is set without client_key: set both or neither".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "client_cert",
                    "client_key is set without client_cert: set both or neither".into(),
                ))
            }
            (Some(_), Some(_)) if !self.url.tls => {
                return Err(invalid(
                    "client_cert",
                    format!("client certificates need TLS but {} is plain TCP", self.url),
                ))
            }
            _ => {}
        }

        if self.queue_dir.as_os_str().is_empty() {
            return Err(invalid(
                "queue_dir",
                "missing: set the folder of the on-disk event queue".into(),
            ));
        }
        if self.queue_max_bytes < MIN_QUEUE_MAX_BYTES {
            return Err(invalid(
                "queue_max_bytes",
                format!(
                    "{} bytes is below the minimum of {MIN_QUEUE_MAX_BYTES} (64 KiB), room for \
                     about 170 events of 350 bytes: set --mqtt-queue-max-bytes or \
                     mqtt.queue_max_bytes to at least {MIN_QUEUE_MAX_BYTES}, e.g. 8388608 \
                     (8 MiB, the default)",
                    self.queue_max_bytes
                ),
            ));
        }
        if self.max_packet_bytes < MIN_MAX_PACKET_BYTES {
            return Err(invalid(
                "max_packet_bytes",
                format!(
                    "{} bytes is below the minimum of {MIN_MAX_PACKET_BYTES} (4 KiB): an event \
                     takes about 350 bytes plus its topic and a stats message about 250, and \
                     rumqttc and mosquitto drop the connection on a packet over the limit; set \
                     mqtt.max_packet_bytes to at least {MIN_MAX_PACKET_BYTES}, e.g. 1048576 \
                     (1 MiB, the default)",
                    self.max_packet_bytes
                ),
            ));
        }
        if self.max_packet_bytes > MQTT_MAX_PACKET_BYTES {
            return Err(invalid(
                "max_packet_bytes",
                format!(
                    "{} bytes is above {MQTT_MAX_PACKET_BYTES}, the largest packet MQTT 3.1.1 \
                     can encode: set mqtt.max_packet_bytes to at most that",
                    self.max_packet_bytes
                ),
            ));
        }
        let keep_alive = self.keep_alive;
        if !keep_alive.is_zero()
            && (keep_alive.subsec_nanos() != 0
                || keep_alive < Duration::from_secs(1)
                || keep_alive > Duration::from_secs(u64::from(u16::MAX)))
        {
            return Err(invalid(
                "keep_alive",
                format!(
                    "{} is not whole seconds from 1 s to 65535 s (MQTT sends it in seconds); use \
                     0 to disable",
                    humantime::format_duration(keep_alive)
                ),
            ));
        }
        if self.reconnect_min.is_zero() {
            return Err(invalid(
                "reconnect_min",
                "0 would retry a failing broker in a busy loop: use e.g. 500ms".into(),
            ));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(invalid(
                "reconnect_max",
                format!(
                    "{} is shorter than reconnect_min ({})",
                    humantime::format_duration(self.reconnect_max),
                    humantime::format_duration(self.reconnect_min)
                ),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> MqttError {
    MqttError::InvalidConfig { field, reason }
}

/// Checks one topic level: not empty, no wildcard, separator, NUL or control character.
fn validate_topic_level(what: &'static str, value: &str) -> Result<(), MqttError> {
    let bad = |reason: String| MqttError::InvalidTopicLevel {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty: set a name such as `camera-1`".into()));
    }
    if let Some((index, c)) = value
        .char_indices()
        .find(|&(_, c)| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(bad(format!(
            "it contains {} at byte {index}: MQTT reserves `/` as the level separator and `+` \
             and `#` as wildcards; use letters, digits, `-` or `_`",
            describe_char(c)
        )));
    }
    Ok(())
}

/// Checks the prefix: one or more non-empty levels separated by `/`, not starting with `$`.
fn validate_prefix(prefix: &str) -> Result<(), MqttError> {
    let bad = |reason: String| MqttError::InvalidTopicLevel {
        what: "topic prefix",
        value: prefix.to_string(),
        reason,
    };
    if prefix.is_empty() {
        return Err(bad("it is empty: use e.g. `gradgate`".into()));
    }
    if prefix.starts_with('$') {
        return Err(bad(
            "it starts with `$`, which brokers reserve for their own topics ($SYS)".into(),
        ));
    }
    if let Some((index, c)) = prefix
        .char_indices()
        .find(|&(_, c)| matches!(c, '+' | '#') || c.is_control())
    {
        return Err(bad(format!(
            "it contains {} at byte {index}: MQTT reserves `+` and `#` as wildcards",
            describe_char(c)
        )));
    }
    if prefix.split('/').any(str::is_empty) {
        return Err(bad(
            "it has an empty level (a leading, trailing or doubled `/`): write levels like \
             `home/gradgate`"
                .into(),
        ));
    }
    Ok(())
}

fn describe_char(c: char) -> String {
    if c.is_control() {
        format!("the control character U+{:04X}", u32::from(c))
    } else {
        format!("`{c}`")
    }
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` ({error}): write e.g. \"500ms\", \"10s\" or \"1m\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MqttUrl {
        text.parse().unwrap()
    }

    fn parse_error(text: &str) -> String {
        text.parse::<MqttUrl>().unwrap_err().to_string()
    }

    fn valid_config() -> MqttConfig {
        MqttConfig {
            device_id: "camera-1".into(),
            queue_dir: "/tmp/queue".into(),
            ..MqttConfig::default()
        }
    }

    #[test]
    fn url_without_port_gets_scheme_default() {
        assert_eq!(
            parse("mqtt://broker.lan"),
            MqttUrl {
                tls: false,
                host: "broker.lan".into(),
                port: 1883
            }
        );
        assert_eq!(parse("mqtts://broker.lan").port, 8883);
        assert!(parse("mqtts://broker.lan").tls);
    }

    #[test]
    fn url_accepts_port_trailing_slash_and_ipv6() {
        assert_eq!(parse("mqtt://127.0.0.1:1884/").port, 1884);
        assert_eq!(parse("MQTT://Host_1:2000").host, "Host_1");
        let v6 = parse("mqtt://[::1]:1885");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.port, 1885);
        assert_eq!(v6.host_for_connect(), "[::1]");
        assert_eq!(parse("mqtt://[fe80::1]").port, 1883);
    }

    #[test]
    fn url_display_round_trips() {
        for text in [
            "mqtt://localhost:1883",
            "mqtts://10.0.0.2:8884",
            "mqtt://[::1]:1883",
        ] {
            assert_eq!(parse(text).to_string(), text);
        }
    }

    #[test]
    fn url_rejects_credentials_without_echoing_them() {
        let message = parse_error("mqtt://alice:s3cret@broker:1883");
        assert!(message.contains("GRADGATE_MQTT_PASSWORD"), "{message}");
        assert!(message.contains("***@broker:1883"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert!(!message.contains("alice"), "{message}");
    }

    #[test]
    fn url_rejections_name_the_problem() {
        let cases = [
            (
                "localhost:1883",
                "missing scheme: write mqtt://localhost:1883",
            ),
            ("tcp://localhost", "unsupported scheme `tcp`"),
            ("ws://localhost", "unsupported scheme `ws`"),
            ("mqtt://", "missing host"),
            ("mqtt://:1883", "missing host"),
            ("mqtt://host:0", "invalid port `0`"),
            ("mqtt://host:70000", "invalid port `70000`"),
            ("mqtt://host:", "invalid port ``"),
            ("mqtt://host:abc", "invalid port `abc`"),
            ("mqtt://host/topic", "unexpected `/topic` after the host"),
            ("mqtt://host?x=1", "unexpected `?x=1` after the host"),
            ("mqtt://ho st", "invalid character ` ` in host `ho st`"),
            ("mqtt://[::1", "missing `]`"),
            (
                "mqtt://[nope]:1883",
                "`nope` in brackets is not an IPv6 address",
            ),
            ("mqtt://[::1]x", "unexpected `x` after `[::1]`"),
            ("mqtt://127.0.0.1:+21883", "invalid port `+21883`"),
            ("mqtt://host:-1", "invalid port `-1`"),
            ("mqtt://host: 1883", "invalid port ` 1883`"),
        ];
        for (text, expected) in cases {
            let message = parse_error(text);
            assert!(
                message.contains(expected),
                "{text}: expected `{expected}` in `{message}`"
            );
        }
    }

    #[test]
    fn url_with_unbracketed_ipv6_suggests_brackets() {
        let cases = [
            ("mqtt://::1:21883", "write mqtt://[::1]:21883"),
            (
                "mqtts://fe80::2:1883",
                "write mqtts://[fe80::2]:1883, or mqtts://[fe80::2:1883] if `1883` is part of \
                 the address",
            ),
            ("mqtt://fe80::abcd", "write mqtt://[fe80::abcd]"),
            ("mqtt://a:b:c", "write mqtt://[::1]:1883"),
        ];
        for (text, expected) in cases {
            let message = parse_error(text);
            assert!(
                message.contains("needs brackets in a URL"),
                "{text}: {message}"
            );
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn debug_redacts_password() {
        let config = MqttConfig {
            username: Some("alice".into()),
            password: Some("s3cret-pass".into()),
            ..valid_config()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret-pass"), "{text}");
        assert!(text.contains("password: Some(\"<redacted>\")"), "{text}");
        assert!(text.contains("alice"), "{text}");
    }

    #[test]
    fn debug_shows_missing_password_as_none() {
        let text = format!("{:?}", valid_config());
        assert!(text.contains("password: None"), "{text}");
    }

    #[test]
    fn default_config_with_device_and_queue_is_valid() {
        assert!(valid_config().validate().is_ok());
    }

    #[test]
    fn device_id_rejections_name_the_character() {
        let cases = [
            ("", "it is empty"),
            ("cam/1", "contains `/` at byte 3"),
            ("cam+", "contains `+` at byte 3"),
            ("#", "contains `#` at byte 0"),
            ("cam\n1", "U+000A at byte 3"),
        ];
        for (device_id, expected) in cases {
            let config = MqttConfig {
                device_id: device_id.into(),
                ..valid_config()
            };
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("device id"), "{message}");
            assert!(message.contains(expected), "{device_id:?}: {message}");
        }
    }

    #[test]
    fn prefix_rejections_name_the_problem() {
        let cases = [
            ("", "it is empty"),
            ("home/+", "contains `+` at byte 5"),
            ("a#", "contains `#` at byte 1"),
            ("/gradgate", "empty level"),
            ("gradgate/", "empty level"),
            ("a//b", "empty level"),
            ("$SYS", "starts with `$`"),
        ];
        for (prefix, expected) in cases {
            let config = MqttConfig {
                prefix: prefix.into(),
                ..valid_config()
            };
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("topic prefix"), "{message}");
            assert!(message.contains(expected), "{prefix:?}: {message}");
        }
    }

    #[test]
    fn multi_level_prefix_is_valid() {
        let config = MqttConfig {
            prefix: "home/cameras".into(),
            ..valid_config()
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn mqtts_without_ca_file_is_rejected() {
        let config = MqttConfig {
            url: parse("mqtts://broker"),
            ..valid_config()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("ca_file"), "{message}");
        assert!(message.contains("mqtts://broker:8883"), "{message}");
    }

    #[test]
    fn field_rejections_name_the_field() {
        let cases: Vec<(MqttConfig, &str)> = vec![
            (
                MqttConfig {
                    password: Some("x".into()),
                    ..valid_config()
                },
                "password",
            ),
            (
                MqttConfig {
                    ca_file: Some("/ca.pem".into()),
                    ..valid_config()
                },
                "ca_file",
            ),
            (
                MqttConfig {
                    url: parse("mqtts://broker"),
                    ca_file: Some("/ca.pem".into()),
                    client_cert: Some("/c.pem".into()),
                    ..valid_config()
                },
                "client_key",
            ),
            (
                MqttConfig {
                    queue_dir: PathBuf::new(),
                    ..valid_config()
                },
                "queue_dir",
            ),
            (
                MqttConfig {
                    queue_max_bytes: 0,
                    ..valid_config()
                },
                "queue_max_bytes",
            ),
            (
                MqttConfig {
                    max_packet_bytes: 10,
                    ..valid_config()
                },
                "max_packet_bytes",
            ),
            (
                MqttConfig {
                    keep_alive: Duration::from_millis(1500),
                    ..valid_config()
                },
                "keep_alive",
            ),
            (
                MqttConfig {
                    reconnect_min: Duration::ZERO,
                    ..valid_config()
                },
                "reconnect_min",
            ),
            (
                MqttConfig {
                    reconnect_max: Duration::from_millis(100),
                    ..valid_config()
                },
                "reconnect_max",
            ),
        ];
        for (config, field) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(field), "{field}: {message}");
        }
    }

    #[test]
    fn queue_limit_below_64_kib_is_rejected() {
        let config = MqttConfig {
            queue_max_bytes: MIN_QUEUE_MAX_BYTES - 1,
            ..valid_config()
        };

        let message = config.validate().unwrap_err().to_string();

        assert!(
            message.starts_with(
                "invalid mqtt.queue_max_bytes: 65535 bytes is below the minimum of 65536"
            ),
            "{message}"
        );
        assert!(message.contains("--mqtt-queue-max-bytes"), "{message}");
        let smallest = MqttConfig {
            queue_max_bytes: MIN_QUEUE_MAX_BYTES,
            ..valid_config()
        };
        assert!(smallest.validate().is_ok());
    }

    #[test]
    fn packet_limit_below_4_kib_is_rejected() {
        let config = MqttConfig {
            max_packet_bytes: MIN_MAX_PACKET_BYTES - 1,
            ..valid_config()
        };

        let message = config.validate().unwrap_err().to_string();

        assert!(
            message.starts_with(
                "invalid mqtt.max_packet_bytes: 4095 bytes is below the minimum of 4096"
            ),
            "{message}"
        );
        assert!(message.contains("drop the connection"), "{message}");
        let smallest = MqttConfig {
            max_packet_bytes: MIN_MAX_PACKET_BYTES,
            ..valid_config()
        };
        assert!(smallest.validate().is_ok());
        let too_large = MqttConfig {
            max_packet_bytes: MQTT_MAX_PACKET_BYTES + 1,
            ..valid_config()
        };
        assert!(too_large.validate().is_err());
    }

    #[test]
    fn keep_alive_accepts_zero_to_65535() {
        for seconds in [0, 1, 65_535] {
            let config = MqttConfig {
                keep_alive: Duration::from_secs(seconds),
                ..valid_config()
            };
            assert!(config.validate().is_ok(), "{seconds} s");
        }
        let config = MqttConfig {
            keep_alive: Duration::from_secs(65_536),
            ..valid_config()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("use 0 to disable"), "{message}");
    }

    #[test]
    fn config_section_deserializes_with_defaults() {
        let config: MqttConfig = toml::from_str(
            r#"
            url = "mqtts://broker:8884"
            device_id = "cam"
            stats_interval = "2s"
            reconnect_min = "250ms"
            ca_file = "/etc/ca.pem"
            queue_dir = "/q"
            "#,
        )
        .unwrap();
        assert_eq!(config.url.port, 8884);
        assert!(config.url.tls);
        assert_eq!(config.stats_interval, Duration::from_secs(2));
        assert_eq!(config.reconnect_min, Duration::from_millis(250));
        assert_eq!(config.prefix, "gradgate");
        assert_eq!(config.max_packet_bytes, 1 << 20);
    }

    #[test]
    fn config_section_rejects_unknown_fields_and_bad_values() {
        let unknown = toml::from_str::<MqttConfig>(r#"hostname = "x""#)
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `hostname`"), "{unknown}");

        let duration = toml::from_str::<MqttConfig>(r#"keep_alive = "ten""#)
            .unwrap_err()
            .to_string();
        assert!(duration.contains("invalid duration `ten`"), "{duration}");

        let url = toml::from_str::<MqttConfig>(r#"url = "http://x""#)
            .unwrap_err()
            .to_string();
        assert!(url.contains("unsupported scheme `http`"), "{url}");
    }
}
