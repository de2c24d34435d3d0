//! MQTT signal against a real mosquitto broker on loopback: topics, retained state, delivery
//! across broker restarts and process restarts, TLS failures, the queue limit, stats and
//! shutdown.
//!
//! Needs mosquitto, mosquitto_passwd and openssl (Debian: mosquitto, mosquitto-clients,
//! openssl). Run with `cargo test --release --test mqtt`.

#[path = "common/broker.rs"]
mod broker;

use broker::{send_signal, Broker, BrokerKind, Message, Subscriber, PASSWORD, USERNAME};
use gradgate::signal::mqtt::queue::QueueError;
use gradgate::signal::mqtt::{
    FailureKind, Mqtt, MqttConfig, MqttError, MqttStatus, Queued, Topics, EVENT_WINDOW,
};
use gradgate::signal::stats::RunStats;
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Generous bound for anything that crosses the broker; loopback needs milliseconds.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

// ---- log capture: every test's records go to one list; tests filter them by broker URL ----

static RECORDS: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

struct CaptureLog;

impl Log for CaptureLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        if record.target().starts_with("gradgate") {
            let text = record.args().to_string();
            RECORDS.lock().unwrap().push((record.level(), text));
        }
    }

    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&CaptureLog).expect("another logger is installed");
        log::set_max_level(LevelFilter::Debug);
    });
}

/// Log records that mention `needle`, with their levels.
fn records_mentioning(needle: &str) -> Vec<(Level, String)> {
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, text)| text.contains(needle))
        .cloned()
        .collect()
}

// ---- helpers ----

fn config(broker: &Broker, queue_dir: &Path, device: &str) -> MqttConfig {
    MqttConfig {
        url: broker.url().parse().unwrap(),
        device_id: device.into(),
        queue_dir: queue_dir.into(),
        // Fast retries keep the tests short; the backoff itself is unit-tested.
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
        stats_interval: Duration::ZERO,
        ..MqttConfig::default()
    }
}

fn tls_config(broker: &Broker, queue_dir: &Path, device: &str) -> MqttConfig {
    let tls = broker.tls().expect("a TLS broker");
    MqttConfig {
        ca_file: Some(tls.ca_cert.clone()),
        username: Some(USERNAME.into()),
        password: Some(PASSWORD.into()),
        ..config(broker, queue_dir, device)
    }
}

/// Polls `status()` until `done` holds; panics with the last status at the deadline.
fn wait_status(mqtt: &Mqtt, description: &str, done: impl Fn(&MqttStatus) -> bool) -> MqttStatus {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let status = mqtt.status();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {description}; last status: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages.iter().map(Message::text).collect()
}

fn numbered_event(n: usize) -> Vec<u8> {
    format!(r#"{{"event":"start","n":{n}}}"#).into_bytes()
}

/// Numbers of the numbered events in arrival order, leaving out the broker's redeliveries
/// to the subscriber (DUP set), which are not the publisher's doing.
fn event_numbers(messages: &[Message]) -> Vec<usize> {
    messages
        .iter()
        .filter(|message| !message.dup)
        .map(|message| {
            let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            value["n"].as_u64().unwrap() as usize
        })
        .collect()
}

fn distinct_count(numbers: &[usize]) -> usize {
    numbers.iter().collect::<BTreeSet<_>>().len()
}

/// A 16 KiB tmpfs on a temporary folder, unmounted on drop: a real file system that runs
/// out of space.
struct TinyDisk {
    dir: tempfile::TempDir,
    /// Allocation unit of the tmpfs (the memory page size), in bytes.
    page: usize,
}

impl TinyDisk {
    /// Mounts the tmpfs; `None`, after printing why, where mounting is not allowed (it
    /// needs root or CAP_SYS_ADMIN).
    fn mount() -> Option<TinyDisk> {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                eprintln!("skipped: cannot mount a tmpfs: {}", stderr.trim());
                return None;
            }
            Err(error) => {
                eprintln!("skipped: cannot run mount: {error}");
                return None;
            }
        }
        // tmpfs reports its page size as the block size.
        use std::os::unix::fs::MetadataExt;
        let page = fs::metadata(dir.path()).unwrap().blksize() as usize;
        Some(TinyDisk { dir, page })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the tmpfs is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = File::create(&path).unwrap();
        let chunk = vec![0u8; 512];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(
                        error.kind(),
                        std::io::ErrorKind::StorageFull,
                        "filling the tmpfs: {error}"
                    );
                    break;
                }
            }
        }
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazy, so that a file a failed test left open cannot keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Builds a numbered event padded to `len` bytes.
fn padded_event(n: usize, len: usize) -> Vec<u8> {
    let mut payload = format!(r#"{{"event":"start","n":{n},"pad":""#).into_bytes();
    payload.resize(len - 2, b'x');
    payload.extend_from_slice(b"\"}");
    payload
}

// ---- tests ----

#[test]
fn events_and_retained_state_arrive_as_published() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-1");
    let watcher = Subscriber::connect(&broker, "watcher-1", "gradgate/cam-1/#");
    let stats = Arc::new(RunStats::new());
    let mqtt = Mqtt::start(config(&broker, queue.path(), "cam-1"), stats.clone()).unwrap();

    watcher.wait_for(&topics.state, 1, DELIVERY_TIMEOUT);
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"event":"start","score":3.25}"#.to_vec(),
        "{\"event\":\"end\",\"note\":\"gr\u{00fc}n\\n\"}\n"
            .as_bytes()
            .to_vec(),
        vec![0x00, 0xff, 0x7b, 0x0a],
    ];
    mqtt.publish_event(&payloads[0]).unwrap();
    mqtt.publish_state(true);
    mqtt.publish_event(&payloads[1]).unwrap();
    mqtt.publish_event(&payloads[2]).unwrap();

    let events = watcher.wait_for(&topics.events, 3, DELIVERY_TIMEOUT);
    let states = watcher.wait_for(&topics.state, 2, DELIVERY_TIMEOUT);
    let availability = watcher.on(&topics.availability);

    assert_eq!(texts(&availability), vec!["online"]);
    assert!(availability[0].retained);
    assert_eq!(availability[0].qos, 1);
    assert_eq!(texts(&states), vec!["in", "out"]);
    assert!(states.iter().all(|message| message.retained), "{states:?}");
    let received: Vec<Vec<u8>> = events.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(received, payloads);
    assert!(events.iter().all(|message| !message.retained), "{events:?}");
    assert!(events.iter().all(|message| message.qos == 1), "{events:?}");

    let late = Subscriber::connect(&broker, "late-1", "gradgate/cam-1/#");
    let late_availability = late.wait_for(&topics.availability, 1, DELIVERY_TIMEOUT);
    let late_state = late.wait_for(&topics.state, 1, DELIVERY_TIMEOUT);
    assert_eq!(texts(&late_availability), vec!["online"]);
    assert!(late_availability[0].retained);
    assert_eq!(texts(&late_state), vec!["out"]);
    assert!(late_state[0].retained);
    assert!(late.on(&topics.events).is_empty());

    let report = mqtt.shutdown();
    assert_eq!(report.delivered, 3);
    assert_eq!(report.left_in_queue, 0);
    assert_eq!(stats.queue_depth.load(Ordering::Relaxed), 0);
}

#[test]
fn broker_restart_mid_stream_loses_no_event() {
    capture_logs();
    let mut broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-2");
    let watcher = Subscriber::connect(&broker, "watcher-2", &topics.events);
    let mqtt = Mqtt::start(
        config(&broker, queue.path(), "cam-2"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    wait_status(&mqtt, "the first connection", |status| status.connected);

    // A third of the stream goes out before the stop (some of it still in flight when the
    // broker goes), a third while it is down, a third after it is back.
    for n in 0..60 {
        mqtt.publish_event(&numbered_event(n)).unwrap();
    }
    broker.stop();
    for n in 60..120 {
        mqtt.publish_event(&numbered_event(n)).unwrap();
    }
    wait_status(&mqtt, "the lost connection", |status| !status.connected);
    broker.start_again();
    for n in 120..180 {
        mqtt.publish_event(&numbered_event(n)).unwrap();
    }

    let messages = watcher.wait_until("180 distinct events", DELIVERY_TIMEOUT, |messages| {
        let numbers = event_numbers(messages);
        distinct_count(&numbers) >= 180
    });
    let numbers = event_numbers(&messages);
    let mut first_arrivals = Vec::new();
    let mut copies: HashMap<usize, usize> = HashMap::new();
    for &n in &numbers {
        let count = copies.entry(n).or_insert(0);
        if *count == 0 {
            first_arrivals.push(n);
        }
        *count += 1;
    }
    let duplicates: Vec<usize> = copies
        .iter()
        .filter(|(_, &count)| count > 1)
        .map(|(&n, _)| n)
        .collect();

    assert_eq!(first_arrivals, (0..180).collect::<Vec<_>>());
    // QoS 1 allows a duplicate where the broker stored an event but its PUBACK never
    // reached gradgate. A SIGTERM can end mosquitto 2.0.11 in between: in failing runs its
    // log shows "Sending PUBACK" for the duplicated events as its last lines before
    // "terminating", and about one run in thirty has such duplicates, so zero cannot be
    // asserted. Only events sent before the stop can be affected, at most one window of
    // them, each at most twice.
    let most_copies = copies.values().copied().max().unwrap();
    assert!(duplicates.len() <= EVENT_WINDOW, "{duplicates:?}");
    assert!(duplicates.iter().all(|&n| n < 60), "{duplicates:?}");
    assert!(most_copies <= 2, "{copies:?}");
    if !duplicates.is_empty() {
        eprintln!("events delivered twice (PUBACK lost at the broker stop): {duplicates:?}");
    }

    let report = mqtt.shutdown();
    assert_eq!(report.left_in_queue, 0);
    assert_eq!(report.delivered, 180);
}

#[test]
fn queued_events_survive_process_restart_in_order() {
    capture_logs();
    let mut broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-3");
    let watcher = Subscriber::connect(&broker, "watcher-3", &topics.events);

    let first = Mqtt::start(
        config(&broker, queue.path(), "cam-3"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    wait_status(&first, "the first connection", |status| status.connected);
    broker.stop();
    wait_status(&first, "the lost connection", |status| !status.connected);
    for n in 0..5 {
        first.publish_event(&numbered_event(n)).unwrap();
    }
    let report = first.shutdown();

    assert_eq!(report.delivered, 0);
    assert_eq!(report.left_in_queue, 5);
    assert!(!report.offline_published);

    broker.start_again();
    let stats = Arc::new(RunStats::new());
    let second = Mqtt::start(config(&broker, queue.path(), "cam-3"), stats.clone()).unwrap();
    assert_eq!(stats.queue_depth.load(Ordering::Relaxed), 5);
    second.publish_event(&numbered_event(5)).unwrap();

    let events = watcher.wait_for(&topics.events, 6, DELIVERY_TIMEOUT);
    assert_eq!(event_numbers(&events), (0..6).collect::<Vec<_>>());

    let report = second.shutdown();
    assert_eq!(report.delivered, 6);
    assert_eq!(report.left_in_queue, 0);
}

#[test]
fn second_start_on_same_queue_is_rejected() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let first = Mqtt::start(
        config(&broker, queue.path(), "cam-4"),
        Arc::new(RunStats::new()),
    )
    .unwrap();

    let error = Mqtt::start(
        config(&broker, queue.path(), "cam-4"),
        Arc::new(RunStats::new()),
    )
    .unwrap_err();

    assert!(
        matches!(error, MqttError::Queue(QueueError::Locked { .. })),
        "{error:?}"
    );
    first.shutdown();
}

#[test]
fn wrong_password_is_reported_and_events_keep_queueing() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Tls);
    let queue = tempfile::tempdir().unwrap();
    let stats = Arc::new(RunStats::new());
    let wrong_password = "not the password 7f3a";
    let mqtt = Mqtt::start(
        MqttConfig {
            password: Some(wrong_password.into()),
            publish_frames: true,
            ..tls_config(&broker, queue.path(), "cam-5")
        },
        stats.clone(),
    )
    .unwrap();

    let status = wait_status(&mqtt, "a credentials failure", |status| {
        status.failure == Some(FailureKind::Credentials)
    });
    let message = status.last_error.clone().unwrap();
    assert!(!status.connected);
    assert!(message.contains(&broker.url()), "{message}");
    assert!(
        message.contains("check mqtt.username and mqtt.password"),
        "{message}"
    );

    mqtt.publish_event(&numbered_event(0)).unwrap();
    mqtt.publish_event(&numbered_event(1)).unwrap();
    assert_eq!(mqtt.status().queue_depth, 2);

    let started = Instant::now();
    let sent = (0..1000)
        .filter(|n| mqtt.try_publish_frame(format!(r#"{{"seq":{n}}}"#).as_bytes()))
        .count();
    let elapsed = started.elapsed();
    assert_eq!(sent, 0);
    assert_eq!(stats.mqtt_frames_dropped.load(Ordering::Relaxed), 1000);
    // A loose bound: the calls must not wait on the network, not be fast.
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    let errors: Vec<String> = records_mentioning(&broker.url())
        .into_iter()
        .filter(|(level, _)| *level == Level::Error)
        .map(|(_, text)| text)
        .collect();
    assert!(
        errors
            .iter()
            .any(|text| text.contains("refused the credentials")),
        "{errors:?}"
    );
    assert!(records_mentioning(wrong_password).is_empty());
    assert!(records_mentioning(PASSWORD).is_empty());

    let report = mqtt.shutdown();
    assert_eq!(report.left_in_queue, 2);
}

#[test]
fn wrong_ca_is_reported_as_tls_failure() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Tls);
    let queue = tempfile::tempdir().unwrap();
    let mqtt = Mqtt::start(
        MqttConfig {
            ca_file: Some(broker.tls().unwrap().other_ca_cert.clone()),
            ..tls_config(&broker, queue.path(), "cam-6")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap();

    let status = wait_status(&mqtt, "a TLS failure", |status| {
        status.failure == Some(FailureKind::Tls)
    });
    let message = status.last_error.clone().unwrap();
    assert!(!status.connected);
    assert!(message.contains(&broker.url()), "{message}");
    assert!(message.contains("check mqtt.ca_file"), "{message}");
    assert!(mqtt.publish_event(&numbered_event(0)).is_ok());

    let errors: Vec<String> = records_mentioning(&broker.url())
        .into_iter()
        .filter(|(level, _)| *level == Level::Error)
        .map(|(_, text)| text)
        .collect();
    assert!(
        errors.iter().any(|text| text.contains("TLS handshake")),
        "{errors:?}"
    );

    let report = mqtt.shutdown();
    assert_eq!(report.left_in_queue, 1);
}

#[test]
fn right_ca_and_password_connect_and_deliver() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Tls);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-7");
    let watcher = Subscriber::connect(&broker, "watcher-7", "gradgate/cam-7/#");
    let mqtt = Mqtt::start(
        tls_config(&broker, queue.path(), "cam-7"),
        Arc::new(RunStats::new()),
    )
    .unwrap();

    mqtt.publish_event(&numbered_event(7)).unwrap();
    let events = watcher.wait_for(&topics.events, 1, DELIVERY_TIMEOUT);

    assert_eq!(event_numbers(&events), vec![7]);
    assert!(mqtt.status().connected);
    assert_eq!(mqtt.status().last_error, None);
    let report = mqtt.shutdown();
    assert_eq!(report.delivered, 1);
}

#[test]
fn client_certificate_is_presented_when_configured() {
    capture_logs();
    let broker = Broker::start(BrokerKind::TlsClientCert);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-8");
    let watcher = Subscriber::connect(&broker, "watcher-8", &topics.events);
    let tls = broker.tls().unwrap().clone();
    let mqtt = Mqtt::start(
        MqttConfig {
            client_cert: Some(tls.client_cert.clone()),
            client_key: Some(tls.client_key.clone()),
            ..tls_config(&broker, queue.path(), "cam-8")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap();

    mqtt.publish_event(&numbered_event(8)).unwrap();
    let events = watcher.wait_for(&topics.events, 1, DELIVERY_TIMEOUT);

    assert_eq!(event_numbers(&events), vec![8]);
    mqtt.shutdown();
}

#[test]
fn missing_client_certificate_is_reported() {
    capture_logs();
    let broker = Broker::start(BrokerKind::TlsClientCert);
    let queue = tempfile::tempdir().unwrap();
    let mqtt = Mqtt::start(
        tls_config(&broker, queue.path(), "cam-9"),
        Arc::new(RunStats::new()),
    )
    .unwrap();

    let status = wait_status(&mqtt, "a TLS failure", |status| {
        status.failure == Some(FailureKind::Tls)
    });
    let message = status.last_error.clone().unwrap();

    assert!(!status.connected);
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
    assert!(
        message.contains("set mqtt.client_cert and mqtt.client_key"),
        "{message}"
    );
    mqtt.shutdown();
}

#[test]
fn full_queue_drops_oldest_and_delivers_newest() {
    capture_logs();
    let mut broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-10");
    // Subscribe before the outage, so that the persistent session collects what arrives
    // after the restart.
    let watcher = Subscriber::connect(&broker, "watcher-10", &topics.events);
    broker.stop();

    // Each event is 13 179 bytes, 13 200 with its queue record header. A limit of 66 000
    // bytes, just above the smallest accepted (64 KiB), has room for five.
    let event = |n: usize| {
        format!(
            r#"{{"event":"start","n":{n},"pad":"{}"}}"#,
            "x".repeat(13_147)
        )
        .into_bytes()
    };
    assert_eq!(event(0).len(), 13_179);
    let stats = Arc::new(RunStats::new());
    let mqtt = Mqtt::start(
        MqttConfig {
            queue_max_bytes: 5 * 13_200,
            ..config(&broker, queue.path(), "cam-10")
        },
        stats.clone(),
    )
    .unwrap();
    for n in 0..8 {
        mqtt.publish_event(&event(n)).unwrap();
    }

    assert_eq!(stats.events_dropped.load(Ordering::Relaxed), 3);
    assert_eq!(mqtt.status().queue_depth, 5);

    broker.start_again();
    let events = watcher.wait_for(&topics.events, 5, DELIVERY_TIMEOUT);
    assert_eq!(event_numbers(&events), vec![3, 4, 5, 6, 7]);
    let report = mqtt.shutdown();
    assert_eq!(report.left_in_queue, 0);
}

#[test]
fn event_larger_than_rumqttc_default_limit_is_delivered() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-11");
    let watcher = Subscriber::connect(&broker, "watcher-11", &topics.events);
    let mqtt = Mqtt::start(
        config(&broker, queue.path(), "cam-11"),
        Arc::new(RunStats::new()),
    )
    .unwrap();

    // 200 KiB, twenty times rumqttc's default packet limit of 10 KiB.
    let big = vec![b'x'; 200 << 10];
    mqtt.publish_event(&big).unwrap();
    let too_big = vec![b'y'; 1 << 20];
    let error = mqtt.publish_event(&too_big).unwrap_err();

    let events = watcher.wait_for(&topics.events, 1, DELIVERY_TIMEOUT);
    assert_eq!(events[0].payload.len(), big.len());
    assert!(
        matches!(error, MqttError::PayloadTooLarge { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("mqtt.max_packet_bytes"),
        "{error}"
    );
    // The rejected payload was never queued; the delivered one leaves on its PUBACK.
    wait_status(&mqtt, "an empty queue", |status| status.queue_depth == 0);
    mqtt.shutdown();
}

#[test]
fn frames_are_published_with_qos0_when_enabled() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-12");
    let watcher = Subscriber::connect(&broker, "watcher-12", "gradgate/cam-12/#");
    let stats = Arc::new(RunStats::new());
    let mqtt = Mqtt::start(
        MqttConfig {
            publish_frames: true,
            ..config(&broker, queue.path(), "cam-12")
        },
        stats.clone(),
    )
    .unwrap();
    watcher.wait_for(&topics.availability, 1, DELIVERY_TIMEOUT);

    let sent = (0..3)
        .filter(|n| mqtt.try_publish_frame(format!(r#"{{"seq":{n}}}"#).as_bytes()))
        .count();

    let frames = watcher.wait_for(&topics.frames, 3, DELIVERY_TIMEOUT);
    assert_eq!(sent, 3);
    assert_eq!(
        texts(&frames),
        vec![r#"{"seq":0}"#, r#"{"seq":1}"#, r#"{"seq":2}"#]
    );
    assert!(
        frames.iter().all(|m| m.qos == 0 && !m.retained),
        "{frames:?}"
    );
    assert_eq!(stats.mqtt_frames_dropped.load(Ordering::Relaxed), 0);
    mqtt.shutdown();
}

#[test]
fn frames_are_a_no_op_when_disabled() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let stats = Arc::new(RunStats::new());
    let mqtt = Mqtt::start(config(&broker, queue.path(), "cam-13"), stats.clone()).unwrap();

    assert!(mqtt.try_publish_frame(b"{}"));
    assert_eq!(stats.mqtt_frames_dropped.load(Ordering::Relaxed), 0);
    mqtt.shutdown();
}

#[test]
fn stats_messages_carry_documented_keys() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-14");
    let watcher = Subscriber::connect(&broker, "watcher-14", &topics.stats);
    let stats = Arc::new(RunStats::new());
    let mqtt = Mqtt::start(
        MqttConfig {
            stats_interval: Duration::from_secs(1),
            ..config(&broker, queue.path(), "cam-14")
        },
        stats.clone(),
    )
    .unwrap();
    // Four frames of 2 ms each in the first interval, then none in the second.
    stats.latency_us_total.fetch_add(8_000, Ordering::Relaxed);
    stats.frames.fetch_add(4, Ordering::Relaxed);
    stats.ood_frames.fetch_add(1, Ordering::Relaxed);
    stats.skipped.fetch_add(2, Ordering::Relaxed);
    mqtt.publish_state(true);

    let messages = watcher.wait_for(&topics.stats, 2, DELIVERY_TIMEOUT);
    let first: serde_json::Value = serde_json::from_slice(&messages[0].payload).unwrap();
    let second: serde_json::Value = serde_json::from_slice(&messages[1].payload).unwrap();

    let keys: BTreeSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "device",
        "uptime_s",
        "frames",
        "fps",
        "mean_latency_ms",
        "skipped",
        "ood_frames",
        "events",
        "frames_dropped",
        "stale_frames",
        "events_dropped",
        "queue_depth",
        "state",
        "connected",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(first["device"], "cam-14");
    assert_eq!(first["frames"], 4);
    assert_eq!(first["mean_latency_ms"], 2.0);
    assert!(first["fps"].as_f64().unwrap() > 0.0, "{first}");
    assert_eq!(first["skipped"], 2);
    assert_eq!(first["ood_frames"], 1);
    assert_eq!(first["state"], "out");
    assert_eq!(first["connected"], true);
    assert_eq!(first["queue_depth"], 0);
    assert!(!messages[0].retained);
    assert_eq!(messages[0].qos, 0);
    assert_eq!(second["mean_latency_ms"], serde_json::Value::Null);
    assert_eq!(second["fps"], 0.0);
    mqtt.shutdown();
}

#[test]
fn shutdown_publishes_offline_retained() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-15");
    let watcher = Subscriber::connect(&broker, "watcher-15", &topics.availability);
    let mqtt = Mqtt::start(
        config(&broker, queue.path(), "cam-15"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    watcher.wait_for(&topics.availability, 1, DELIVERY_TIMEOUT);

    let report = mqtt.shutdown();
    let availability = watcher.wait_for(&topics.availability, 2, DELIVERY_TIMEOUT);

    assert!(report.offline_published);
    assert!(!report.timed_out);
    assert_eq!(texts(&availability), vec!["online", "offline"]);
    assert!(availability[1].retained);
    let late = Subscriber::connect(&broker, "late-15", &topics.availability);
    let retained = late.wait_for(&topics.availability, 1, DELIVERY_TIMEOUT);
    assert_eq!(texts(&retained), vec!["offline"]);
}

#[test]
fn full_disk_keeps_events_in_memory() {
    capture_logs();
    let Some(disk) = TinyDisk::mount() else {
        return;
    };
    let mut broker = Broker::start(BrokerKind::Plain);
    let topics = Topics::new("gradgate", "cam-16");
    let watcher = Subscriber::connect(&broker, "watcher-16", &topics.events);
    let stats = Arc::new(RunStats::new());
    let mqtt = Mqtt::start(config(&broker, disk.path(), "cam-16"), stats.clone()).unwrap();
    let queue_file = disk.path().join("cam-16.queue");

    // Event 0 fills the queue file's first page exactly (20-byte file header, 21-byte
    // record header). Events 1 to 3 are larger than a page, so each needs a new one.
    let first = mqtt
        .publish_event(&padded_event(0, disk.page - 20 - 21))
        .unwrap();
    assert_eq!(first, Queued::Disk);
    wait_status(&mqtt, "event 0 acknowledged", |status| {
        status.queue_depth == 0
    });
    let filler = disk.fill();
    broker.stop();
    wait_status(&mqtt, "the lost connection", |status| !status.connected);

    let queued: Vec<Queued> = (1..=3)
        .map(|n| {
            mqtt.publish_event(&padded_event(n, disk.page + 1000))
                .unwrap()
        })
        .collect();

    assert_eq!(queued, vec![Queued::Memory; 3]);
    assert_eq!(mqtt.status().queue_depth, 3);
    assert_eq!(stats.events_dropped.load(Ordering::Relaxed), 0);
    let full_disk_errors: Vec<(Level, String)> =
        records_mentioning(&queue_file.display().to_string())
            .into_iter()
            .filter(|(_, text)| text.contains("no space left on device"))
            .collect();
    assert_eq!(full_disk_errors.len(), 1, "{full_disk_errors:?}");
    assert_eq!(full_disk_errors[0].0, Level::Error);
    assert!(
        full_disk_errors[0].1.contains("kept in memory"),
        "{full_disk_errors:?}"
    );

    // Memory events outlive the broker outage.
    broker.start_again();
    let events = watcher.wait_for(&topics.events, 4, DELIVERY_TIMEOUT);
    assert_eq!(event_numbers(&events), vec![0, 1, 2, 3]);
    wait_status(&mqtt, "an empty queue", |status| status.queue_depth == 0);
    let report = mqtt.shutdown();
    assert_eq!(report.delivered, 4);
    assert_eq!(report.lost_in_memory, 0);
    assert_eq!(report.left_in_queue, 0);

    // The failed writes left no partial record that the next start takes for a crash.
    let second = Mqtt::start(
        config(&broker, disk.path(), "cam-16"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    let damage = records_mentioning("incomplete or damaged data");
    assert!(
        damage
            .iter()
            .all(|(_, text)| !text.contains("cam-16.queue")),
        "{damage:?}"
    );
    assert_eq!(second.status().queue_depth, 0);

    // With room again, events go to disk.
    fs::remove_file(filler).unwrap();
    assert_eq!(
        second.publish_event(&numbered_event(4)).unwrap(),
        Queued::Disk
    );
    let events = watcher.wait_for(&topics.events, 5, DELIVERY_TIMEOUT);
    assert_eq!(event_numbers(&events), vec![0, 1, 2, 3, 4]);
    second.shutdown();
}

#[test]
fn shutdown_reports_lost_memory_events() {
    capture_logs();
    let Some(disk) = TinyDisk::mount() else {
        return;
    };
    let mut broker = Broker::start(BrokerKind::Plain);
    broker.stop();
    let mqtt = Mqtt::start(
        MqttConfig {
            shutdown_timeout: Duration::from_millis(500),
            ..config(&broker, disk.path(), "cam-17")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap();
    // Fill the queue file's first page, then the disk.
    let first = padded_event(0, disk.page - 20 - 21);
    assert_eq!(mqtt.publish_event(&first).unwrap(), Queued::Disk);
    disk.fill();

    let second = mqtt
        .publish_event(&padded_event(1, disk.page + 1000))
        .unwrap();
    let report = mqtt.shutdown();

    assert_eq!(second, Queued::Memory);
    assert_eq!(report.left_in_queue, 1);
    assert_eq!(report.lost_in_memory, 1);
    let path = disk.path().join("cam-17.queue").display().to_string();
    let lost: Vec<(Level, String)> = records_mentioning(&path)
        .into_iter()
        .filter(|(_, text)| text.contains("were not acknowledged"))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0, Level::Error);
    assert!(
        lost[0].1.starts_with("1 event(s) kept in memory"),
        "{lost:?}"
    );
}

#[test]
fn same_device_id_twice_warns() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let first_queue = tempfile::tempdir().unwrap();
    let second_queue = tempfile::tempdir().unwrap();
    let first = Mqtt::start(
        config(&broker, first_queue.path(), "cam-18"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    wait_status(&first, "the first connection", |status| status.connected);

    let second = Mqtt::start(
        config(&broker, second_queue.path(), "cam-18"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let warnings = loop {
        let warnings: Vec<(Level, String)> = records_mentioning("`gradgate-cam-18`")
            .into_iter()
            .filter(|(_, text)| text.contains("same client id"))
            .collect();
        if !warnings.is_empty() || Instant::now() > deadline {
            break warnings;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    first.shutdown();
    second.shutdown();

    assert!(!warnings.is_empty(), "no warning about the client id");
    assert_eq!(warnings[0].0, Level::Warn);
    assert!(warnings[0].1.contains(&broker.url()), "{warnings:?}");
    assert!(warnings[0].1.contains("--device-id"), "{warnings:?}");
}

#[test]
fn shutdown_warns_about_unacked_events() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let mqtt = Mqtt::start(
        MqttConfig {
            shutdown_timeout: Duration::from_secs(1),
            ..config(&broker, queue.path(), "cam-19")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap();
    wait_status(&mqtt, "the connection", |status| status.connected);
    // A stopped broker keeps the connection open but acknowledges nothing.
    let pid = broker.pid().unwrap();
    send_signal(pid, "STOP");

    mqtt.publish_event(&numbered_event(0)).unwrap();
    mqtt.publish_event(&numbered_event(1)).unwrap();
    let report = mqtt.shutdown();
    send_signal(pid, "CONT");

    assert_eq!(report.left_in_queue, 2);
    let path = queue.path().join("cam-19.queue").display().to_string();
    let expected = format!(
        "2 event(s) not acknowledged by the broker stay queued in {path}; they are sent at \
         the next start"
    );
    let warnings: Vec<(Level, String)> = records_mentioning(&path)
        .into_iter()
        .filter(|(_, text)| text.contains("not acknowledged by the broker"))
        .collect();
    assert_eq!(warnings, vec![(Level::Warn, expected)]);
    let attempt = records_mentioning("inside a connection attempt");
    assert!(
        attempt
            .iter()
            .all(|(_, text)| !text.contains(&broker.url())),
        "{attempt:?}"
    );
}

#[test]
fn missing_ca_file_message_names_setting() {
    capture_logs();
    let queue = tempfile::tempdir().unwrap();
    let missing = queue.path().join("no-such-ca.pem");
    let config = MqttConfig {
        url: "mqtts://127.0.0.1:8883".parse().unwrap(),
        device_id: "cam-20".into(),
        queue_dir: queue.path().into(),
        ca_file: Some(missing.clone()),
        ..MqttConfig::default()
    };

    let error = Mqtt::start(config, Arc::new(RunStats::new())).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "cannot read mqtt.ca_file (--mqtt-ca-file) {}: no such file or directory (os \
             error 2); check the path and the file's permissions",
            missing.display()
        )
    );
    // The message already contains the OS error, so a cause chain printed with it (as
    // anyhow's `{:#}` does) must not repeat it.
    assert!(std::error::Error::source(&error).is_none());
}

#[test]
fn version_1_client_certificate_is_named() {
    capture_logs();
    let broker = Broker::start(BrokerKind::TlsClientCert);
    let queue = tempfile::tempdir().unwrap();
    let dir = broker.dir();
    let (key, csr, cert) = (dir.join("v1.key"), dir.join("v1.csr"), dir.join("v1.crt"));
    // `openssl x509 -req` without `-extfile` issues a version 1 certificate.
    let openssl = |args: &[&std::ffi::OsStr]| {
        let output = Command::new("openssl").args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req".as_ref(),
        "-new".as_ref(),
        "-newkey".as_ref(),
        "ec".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:prime256v1".as_ref(),
        "-nodes".as_ref(),
        "-subj".as_ref(),
        "/CN=v1 client".as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        csr.as_os_str(),
    ]);
    openssl(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-days".as_ref(),
        "2".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        broker.tls().unwrap().ca_cert.as_os_str(),
        "-CAkey".as_ref(),
        dir.join("ca.key").as_os_str(),
        "-CAcreateserial".as_ref(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);

    let error = Mqtt::start(
        MqttConfig {
            client_cert: Some(cert.clone()),
            client_key: Some(key),
            ..tls_config(&broker, queue.path(), "cam-21")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap_err();
    let message = error.to_string();

    assert!(
        message.starts_with(&format!(
            "invalid mqtt.client_cert (--mqtt-client-cert) {}: ",
            cert.display()
        )),
        "{message}"
    );
    assert!(message.contains("X.509 version 1"), "{message}");
    assert!(message.contains("version 3"), "{message}");
}

#[test]
fn plain_url_on_tls_port_hints_scheme() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Tls);
    let queue = tempfile::tempdir().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port());
    let mqtt = Mqtt::start(
        MqttConfig {
            url: url.parse().unwrap(),
            ..config(&broker, queue.path(), "cam-22")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap();

    let status = wait_status(&mqtt, "a failed attempt", |status| {
        status.last_error.is_some()
    });
    let message = status.last_error.unwrap();
    mqtt.shutdown();

    assert!(message.contains(&url), "{message}");
    assert!(message.contains("the scheme does not match"), "{message}");
    assert!(
        message.contains(&format!("use mqtts://127.0.0.1:{}", broker.port())),
        "{message}"
    );
}

#[test]
fn tls_url_on_plain_port_hints_scheme() {
    capture_logs();
    let tls_broker = Broker::start(BrokerKind::Tls);
    let plain_broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let url = format!("mqtts://127.0.0.1:{}", plain_broker.port());
    let mqtt = Mqtt::start(
        MqttConfig {
            url: url.parse().unwrap(),
            ..tls_config(&tls_broker, queue.path(), "cam-23")
        },
        Arc::new(RunStats::new()),
    )
    .unwrap();

    let status = wait_status(&mqtt, "a TLS failure", |status| {
        status.failure == Some(FailureKind::Tls)
    });
    let message = status.last_error.unwrap();
    mqtt.shutdown();

    assert!(message.contains(&url), "{message}");
    assert!(message.contains("the scheme does not match"), "{message}");
    assert!(
        message.contains(&format!("use mqtt://127.0.0.1:{}", plain_broker.port())),
        "{message}"
    );
}

#[test]
fn event_arrives_before_its_state() {
    capture_logs();
    let broker = Broker::start(BrokerKind::Plain);
    let queue = tempfile::tempdir().unwrap();
    let topics = Topics::new("gradgate", "cam-24");
    let watcher = Subscriber::connect(&broker, "watcher-24", "gradgate/cam-24/#");
    let mqtt = Mqtt::start(
        config(&broker, queue.path(), "cam-24"),
        Arc::new(RunStats::new()),
    )
    .unwrap();
    watcher.wait_for(&topics.state, 1, DELIVERY_TIMEOUT);

    // Five events open and five close, as the gate reports them: the event, then the state.
    for n in 0..10 {
        mqtt.publish_event(&numbered_event(n)).unwrap();
        mqtt.publish_state(n % 2 == 0);
        watcher.wait_for(&topics.state, n + 2, DELIVERY_TIMEOUT);
    }
    let messages = watcher.messages();
    mqtt.shutdown();

    // Each state after the first ("in" at connect) follows the event that changed it.
    let order: Vec<String> = messages
        .iter()
        .filter(|m| m.topic != topics.availability)
        .map(|m| {
            if m.topic == topics.state {
                m.text()
            } else {
                format!("event {}", event_numbers(std::slice::from_ref(m))[0])
            }
        })
        .collect();
    let mut expected = vec!["in".to_string()];
    for n in 0..10 {
        expected.push(format!("event {n}"));
        expected.push(if n % 2 == 0 { "out" } else { "in" }.to_string());
    }
    assert_eq!(order, expected);
}
