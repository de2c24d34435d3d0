//! `gradgate run` with MQTT against a real mosquitto: events, state, availability, stop
//! signals, broker outages and restarts, bad credentials.
//!
//! The runs use the fp32 model, the faster one under tract. Each test derives the expected
//! events from the run's own JSON lines with an independent model of the debounce rule, so
//! the tests hold whatever the scores are on this machine.

#[path = "common/broker.rs"]
mod broker;

use broker::{send_signal, Broker, BrokerKind, Message, Subscriber, PASSWORD, USERNAME};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ood_images() -> PathBuf {
    root().join("tests/data/ood")
}

/// `gradgate run` on the fp32 model with MSP, whose calibrated threshold flags about half of
/// the bundled out-of-distribution images, so runs have many short events.
fn gradgate(device: &str, url: &str, queue: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradgate"));
    cmd.current_dir(root())
        .env_remove("GRADGATE_MQTT_USERNAME")
        .env_remove("GRADGATE_MQTT_PASSWORD")
        .env_remove("RUST_LOG")
        .args(["run", "--model", "models/efficientnet-lite0-fp32.onnx"])
        .args(["--scorer", "msp", "--device-id", device, "--mqtt", url])
        .arg("--mqtt-queue-dir")
        .arg(queue)
        .args(["--enter-frames", "1", "--leave-frames", "1"]);
    cmd
}

/// Parses the JSON lines of a run.
fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// An event as the frame lines imply it: the index and source of its opening frame.
#[derive(Debug, PartialEq)]
struct Expected {
    frame: u64,
    source: String,
    frames: u64,
}

/// Events under "enter after 1, leave after 1": each run of out-of-distribution frames.
fn expected_events(lines: &[Value]) -> Vec<Expected> {
    expected_transitions(lines).0
}

/// Returns the events of `lines` and whether a later line closed the last one.
fn expected_transitions(lines: &[Value]) -> (Vec<Expected>, bool) {
    let mut events: Vec<Expected> = Vec::new();
    let mut open = false;
    for line in lines {
        let Some(ood) = line["ood"].as_bool() else {
            continue;
        };
        match (open, ood) {
            (false, true) => events.push(Expected {
                frame: line["frame"].as_u64().unwrap(),
                source: line["source"].as_str().unwrap().to_string(),
                frames: 1,
            }),
            (true, true) => events.last_mut().unwrap().frames += 1,
            _ => {}
        }
        open = ood;
    }
    (events, !open)
}

/// `(type, opening frame)` of each message, in order of first arrival, and the number of
/// messages that repeated an earlier one.
fn first_arrivals(messages: &[Message]) -> (Vec<(String, u64)>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for message in messages {
        let p = json(message);
        let key = (
            p["type"].as_str().unwrap().to_string(),
            p["id"].as_str().unwrap().to_string(),
        );
        if seen.insert(key) {
            order.push((
                p["type"].as_str().unwrap().to_string(),
                p["frame"].as_u64().unwrap(),
            ));
        }
    }
    let repeats = messages.len() - order.len();
    (order, repeats)
}

/// Lists the messages `expected` implies, in order. The last end is listed only when `closed`.
fn as_messages(expected: &[Expected], closed: bool) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (i, event) in expected.iter().enumerate() {
        out.push(("start".to_string(), event.frame));
        if closed || i + 1 < expected.len() {
            out.push(("end".to_string(), event.frame));
        }
    }
    out
}

/// Spawns `cmd` with stdout collected on a thread, so a long run never blocks on a full pipe.
fn spawn_collecting(cmd: &mut Command) -> (Running, std::thread::JoinHandle<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    (Running(child), reader)
}

fn json(message: &Message) -> Value {
    serde_json::from_slice(&message.payload).expect("an event payload is JSON")
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "gradgate did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child on drop, so a failed assert leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines of a running gradgate until `enough` holds for the lines so far.
fn read_until(child: &mut Child, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let stdout = child.stdout.as_mut().expect("stdout is piped");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    let mut line = String::new();
    while !enough(&lines) {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "gradgate ended before the condition held");
        lines.push(serde_json::from_str(&line).unwrap());
    }
    lines
}

#[test]
fn ood_run_publishes_events_and_state() {
    let broker = Broker::start(BrokerKind::Plain);
    let watcher = Subscriber::connect(&broker, "watch-events", "gradgate/#");
    let queue = tempfile::tempdir().unwrap();

    let output = gradgate("cam-a", &broker.url(), queue.path())
        .arg(ood_images())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = expected_events(&lines(&String::from_utf8(output.stdout).unwrap()));
    assert!(expected.len() >= 2, "the run should hold several events");

    let messages = watcher.wait_for("gradgate/cam-a/events", 2 * expected.len(), WAIT);
    let payloads: Vec<Value> = messages.iter().map(json).collect();
    let starts: Vec<&Value> = payloads.iter().filter(|p| p["type"] == "start").collect();
    let ends: Vec<&Value> = payloads.iter().filter(|p| p["type"] == "end").collect();
    let implied: Vec<Expected> = ends
        .iter()
        .map(|p| Expected {
            frame: p["frame"].as_u64().unwrap(),
            source: p["source"].as_str().unwrap().to_string(),
            frames: p["frames"].as_u64().unwrap(),
        })
        .collect();
    assert_eq!(implied, expected);
    assert_eq!(starts.len(), expected.len());
    assert!(
        messages.iter().all(|m| !m.retained),
        "events must not be retained"
    );
    assert!(messages.iter().all(|m| m.qos == 1), "events go with QoS 1");
    // Start and end alternate, with the same id.
    for pair in payloads.chunks(2) {
        assert_eq!(
            (&pair[0]["type"], &pair[1]["type"]),
            (&"start".into(), &"end".into())
        );
        assert_eq!(pair[0]["id"], pair[1]["id"]);
    }
    let end = ends[0];
    assert_eq!(end["device"], "cam-a");
    assert_eq!(end["scorer"], "msp");
    assert_eq!(end["closed_by"], "in-distribution");
    assert!(end["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(end["threshold"].as_f64().unwrap() > 0.0);
    assert!(end["min_score"].as_f64() <= end["mean_score"].as_f64());

    // A late subscriber gets the retained state and availability.
    let late = Subscriber::connect(&broker, "late", "gradgate/cam-a/+");
    let state = late.wait_for("gradgate/cam-a/state", 1, WAIT);
    assert_eq!(
        (state[0].text(), state[0].retained),
        ("in".to_string(), true)
    );
    let availability = late.wait_for("gradgate/cam-a/availability", 1, WAIT);
    assert_eq!(
        (availability[0].text(), availability[0].retained),
        ("offline".to_string(), true)
    );
}

#[test]
fn state_follows_every_transition() {
    let broker = Broker::start(BrokerKind::Plain);
    let watcher = Subscriber::connect(&broker, "watch-state", "gradgate/cam-s/state");
    let queue = tempfile::tempdir().unwrap();

    let output = gradgate("cam-s", &broker.url(), queue.path())
        .arg(ood_images())
        .output()
        .unwrap();
    let expected = expected_events(&lines(&String::from_utf8(output.stdout).unwrap()));

    // "in" on connecting, then "out" and "in" per event.
    let states = watcher.wait_for("gradgate/cam-s/state", 1 + 2 * expected.len(), WAIT);
    let texts: Vec<String> = states.iter().map(Message::text).collect();
    let mut want = vec!["in".to_string()];
    for _ in &expected {
        want.extend(["out".to_string(), "in".to_string()]);
    }
    assert_eq!(texts, want);
}

#[test]
fn sigkill_turns_availability_offline() {
    let broker = Broker::start(BrokerKind::Plain);
    let watcher = Subscriber::connect(&broker, "watch-will", "gradgate/cam-k/availability");
    let queue = tempfile::tempdir().unwrap();
    let mut cmd = gradgate("cam-k", &broker.url(), queue.path());
    for _ in 0..20 {
        cmd.arg(ood_images());
    }
    let mut child = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    watcher.wait_for("gradgate/cam-k/availability", 1, WAIT);
    send_signal(child.0.id(), "KILL");
    wait_exit(&mut child.0);

    let availability = watcher.wait_for("gradgate/cam-k/availability", 2, WAIT);
    assert_eq!(
        availability.iter().map(Message::text).collect::<Vec<_>>(),
        ["online", "offline"]
    );
}

#[test]
fn sigterm_closes_open_event() {
    let broker = Broker::start(BrokerKind::Plain);
    let watcher = Subscriber::connect(&broker, "watch-term", "gradgate/cam-t/#");
    let queue = tempfile::tempdir().unwrap();
    // MSP is at most 1, so a threshold of 2 makes every frame out-of-distribution.
    let mut cmd = gradgate("cam-t", &broker.url(), queue.path());
    cmd.args(["--threshold", "2"]);
    for _ in 0..20 {
        cmd.arg(ood_images());
    }
    let mut child = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    watcher.wait_for("gradgate/cam-t/events", 1, WAIT);
    send_signal(child.0.id(), "TERM");
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0));

    let events = watcher.wait_for("gradgate/cam-t/events", 2, WAIT);
    let end = json(&events[1]);
    assert_eq!(
        (&end["type"], &end["closed_by"]),
        (&"end".into(), &"finished".into())
    );
    let availability = watcher.wait_for("gradgate/cam-t/availability", 2, WAIT);
    assert_eq!(availability.last().unwrap().text(), "offline");
}

#[test]
fn broker_outage_loses_no_event() {
    let mut broker = Broker::start(BrokerKind::Plain);
    let watcher = Subscriber::connect(&broker, "watch-outage", "gradgate/cam-o/events");
    let queue = tempfile::tempdir().unwrap();
    let mut cmd = gradgate("cam-o", &broker.url(), queue.path());
    for _ in 0..10 {
        cmd.arg(ood_images());
    }
    let (mut child, stdout) = spawn_collecting(&mut cmd);

    // Stop the broker once events flow, for long enough that several events queue on disk.
    watcher.wait_for("gradgate/cam-o/events", 2, WAIT);
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.start_again();

    assert!(wait_exit(&mut child.0).success());
    let expected = expected_events(&lines(&stdout.join().unwrap()));
    let want = as_messages(&expected, true);
    let messages = watcher.wait_until(
        "every event after the outage",
        Duration::from_secs(60),
        |m| first_arrivals(m).0.len() >= want.len(),
    );
    let (order, repeats) = first_arrivals(&messages);
    assert_eq!(order, want);
    // QoS 1 repeats only what was in flight when the broker went away: at most the window.
    eprintln!("repeated deliveries after the outage: {repeats}");
    assert!(
        repeats <= gradgate::signal::mqtt::EVENT_WINDOW,
        "{repeats} repeats"
    );
}

#[test]
fn queued_events_survive_sigkill() {
    let mut broker = Broker::start(BrokerKind::Plain);
    broker.stop();
    let queue = tempfile::tempdir().unwrap();

    // First run, with the broker down: kill it once a few events were decided.
    let mut cmd = gradgate("cam-q", &broker.url(), queue.path());
    for _ in 0..10 {
        cmd.arg(ood_images());
    }
    let mut first = Running(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let seen = read_until(&mut first.0, |lines| expected_events(lines).len() >= 3);
    send_signal(first.0.id(), "KILL");
    wait_exit(&mut first.0);
    // Each event is on disk before the line of the frame that decided it is printed.
    let (expected, closed) = expected_transitions(&seen);
    let want = as_messages(&expected, closed);

    // Second run, broker back: the queue goes out first, in order.
    broker.start_again();
    let watcher = Subscriber::connect(&broker, "watch-queue", "gradgate/cam-q/events");
    let output = gradgate("cam-q", &broker.url(), queue.path())
        .arg(root().join("tests/data/id/espresso-cup.jpg"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let messages = watcher.wait_for("gradgate/cam-q/events", want.len(), WAIT);
    let (order, _) = first_arrivals(&messages);
    assert_eq!(order[..want.len()], want[..]);
}

/// Runs over the out-of-distribution images against a TLS broker, checks that every frame
/// was scored and the run exited 0, and returns its stderr.
fn tls_run(broker: &Broker, ca: &Path, password: &str) -> String {
    let queue = tempfile::tempdir().unwrap();
    let output = gradgate("cam-tls", &broker.url(), queue.path())
        .arg("--mqtt-ca-file")
        .arg(ca)
        .env("GRADGATE_MQTT_USERNAME", USERNAME)
        .env("GRADGATE_MQTT_PASSWORD", password)
        .arg(ood_images())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let frames = lines(&String::from_utf8(output.stdout).unwrap()).len();
    assert_eq!(
        frames, 33,
        "every frame is scored while the broker refuses us"
    );
    stderr
}

#[test]
fn wrong_password_keeps_frames_flowing() {
    let broker = Broker::start(BrokerKind::Tls);
    let ca = broker.tls().unwrap().ca_cert.clone();
    let stderr = tls_run(&broker, &ca, "not-the-password-42");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password-42"),
        "the password leaked: {stderr}"
    );
}

#[test]
fn wrong_ca_keeps_frames_flowing() {
    let broker = Broker::start(BrokerKind::Tls);
    let other = broker.tls().unwrap().other_ca_cert.clone();
    let stderr = tls_run(&broker, &other, PASSWORD);
    assert!(stderr.contains("certificate is not trusted"), "{stderr}");
}

#[test]
fn tls_with_right_credentials_delivers() {
    let broker = Broker::start(BrokerKind::Tls);
    let watcher = Subscriber::connect(&broker, "watch-tls", "gradgate/cam-tls/availability");
    let ca = broker.tls().unwrap().ca_cert.clone();
    tls_run(&broker, &ca, PASSWORD);
    let availability = watcher.wait_for("gradgate/cam-tls/availability", 2, WAIT);
    assert_eq!(
        availability.iter().map(Message::text).collect::<Vec<_>>(),
        ["online", "offline"]
    );
}
