//! The worker thread: hands queued events, state, availability and stats to rumqttc, tracks
//! each QoS 1 publish until its PUBACK, and runs the shutdown sequence.
//!
//! The worker never waits on the network: it submits with rumqttc's non-blocking
//! `try_publish` and retries on its next pass when the request channel is full. It holds the
//! queue mutex only for in-memory look-ups and for `EventQueue::ack` (one local `sync_data`
//! for an event on disk).

use super::config::MqttUrl;
use super::event_queue::EventQueue;
use super::{publish_packet_bytes, FailureKind, ShutdownReport, Topics};
use super::{OFFLINE, ONLINE, STATE_IN, STATE_OUT};
use crate::signal::stats::RunStats;
use log::{debug, error, info, warn};
use rumqttc::{Client, QoS};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Events handed to rumqttc and not yet acknowledged, at most.
///
/// Trade-off: a larger window sends faster over a high-latency link, but after a lost
/// connection every event in it may reach subscribers twice (QoS 1 resends them all).
pub const EVENT_WINDOW: usize = 16;

/// Pass interval while something waits for room in rumqttc's request channel.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// Maximum sleep between passes when nothing is due.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// Locks a mutex, continuing with the data if another thread panicked while holding it:
/// every value guarded here stays consistent between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Connection state shared by the link thread (writer) and the worker (reader).
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// Number of the current or last connection; see `Message::Connected`.
    pub generation: u64,
    /// True between a CONNACK and the next connection error.
    pub up: bool,
}

/// Last connection failure, for `Mqtt::status`.
#[derive(Debug, Default)]
pub(crate) struct Failure {
    pub kind: Option<FailureKind>,
    pub message: Option<String>,
    pub attempts: u32,
}

/// State shared by the `Mqtt` handle, the link thread and the worker.
pub(crate) struct Shared {
    pub url: MqttUrl,
    pub client_id: String,
    pub device_id: String,
    pub topics: Topics,
    pub max_packet_bytes: usize,
    pub stats: Arc<RunStats>,
    pub queue: Mutex<EventQueue>,
    /// Lock order: `link` before `queue`.
    pub link: Mutex<Link>,
    /// True once the worker has handed `online` to rumqttc on the current connection;
    /// frames and stats are published only while true.
    pub ready: AtomicBool,
    /// Latest gate state given to `Mqtt::publish_state`: true while out-of-distribution.
    pub ood: AtomicBool,
    /// Set by the worker at shutdown; the link thread then stops instead of reconnecting.
    pub stop_link: AtomicBool,
    /// True while a `Message::Wake` is queued, so that a burst of calls sends one.
    pub wake_pending: AtomicBool,
    pub failure: Mutex<Failure>,
}

impl Shared {
    pub fn record_failure(&self, kind: FailureKind, message: String, attempts: u32) {
        let mut failure = lock(&self.failure);
        failure.kind = Some(kind);
        failure.message = Some(message);
        failure.attempts = attempts;
    }

    pub fn clear_failure(&self) {
        *lock(&self.failure) = Failure::default();
    }

    /// Stores the queue's length, disk and memory, in `RunStats::queue_depth`.
    pub fn update_depth(&self, queue: &EventQueue) {
        self.stats
            .queue_depth
            .store(queue.len() as u64, Ordering::Relaxed);
    }
}

/// Messages to the worker. `generation` numbers connections, so that events of a lost
/// connection cannot be taken for events of the next one.
#[derive(Debug)]
pub(crate) enum Message {
    /// CONNACK received.
    Connected { generation: u64 },
    /// rumqttc sent a QoS 1 publish with this packet id; publishes go out in the order the
    /// worker submitted them.
    Sent { generation: u64, pkid: u16 },
    /// PUBACK received.
    Acked { generation: u64, pkid: u16 },
    /// The connection failed after its CONNACK; everything unacknowledged on it is lost.
    Lost { generation: u64 },
    /// The link thread has ended.
    LinkStopped,
    /// A handle call changed the queue or the state.
    Wake,
    /// `Mqtt::shutdown` or `Drop`: finish by `deadline`.
    Shutdown { deadline: Instant },
}

/// A QoS 1 publish the worker submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    Event(u64),
    Online,
    Offline,
    State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Delivering queued events while connected.
    Draining,
    /// `offline` submitted; waiting for its PUBACK.
    Offline,
    /// Link thread asked to stop; waiting for it.
    Stopping,
}

struct Shutdown {
    deadline: Instant,
    /// End of the draining phase, leaving time for `offline` and DISCONNECT.
    drain_until: Instant,
    phase: Phase,
    offline_acked: bool,
    disconnect_sent: bool,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    client: Client,
    inbox: Receiver<Message>,
    /// Wakes the link thread from its backoff sleep at shutdown.
    stop_link: Sender<()>,
    stats_interval: Duration,
    /// Connection the worker publishes on; None while down.
    generation: Option<u64>,
    /// `online` still has to be submitted on this connection.
    announce: bool,
    /// Seq of the last event submitted on this connection; the next comes after it.
    cursor: Option<u64>,
    /// Submitted QoS 1 publishes that rumqttc has not yet sent, in submission order. Each
    /// `Message::Sent` pops the front and files it under its packet id.
    unsent: VecDeque<Tracked>,
    /// Sent QoS 1 publishes waiting for their PUBACK, by packet id.
    in_flight: HashMap<u16, Tracked>,
    /// Events in `unsent` and `in_flight`; at most `EVENT_WINDOW`.
    events_in_window: usize,
    /// State submitted on this connection.
    published_ood: Option<bool>,
    /// A submission found rumqttc's request channel full.
    blocked: bool,
    /// Events acknowledged by the broker since start.
    delivered: u64,
    link_stopped: bool,
    stats_due: Option<Instant>,
    /// When the last stats interval began, with the frame and latency counters then.
    stats_mark: (Instant, u64, u64),
    shutdown: Option<Shutdown>,
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        client: Client,
        inbox: Receiver<Message>,
        stop_link: Sender<()>,
        stats_interval: Duration,
    ) -> Worker {
        let now = Instant::now();
        let stats_due = (!stats_interval.is_zero()).then(|| now + stats_interval);
        let stats_mark = (
            now,
            shared.stats.frames.load(Ordering::Relaxed),
            shared.stats.latency_us_total.load(Ordering::Relaxed),
        );
        Worker {
            shared,
            client,
            inbox,
            stop_link,
            stats_interval,
            generation: None,
            announce: false,
            cursor: None,
            unsent: VecDeque::new(),
            in_flight: HashMap::new(),
            events_in_window: 0,
            published_ood: None,
            blocked: false,
            delivered: 0,
            link_stopped: false,
            stats_due,
            stats_mark,
            shutdown: None,
        }
    }

    /// Runs until the shutdown sequence ends; returns its report.
    pub fn run(mut self) -> ShutdownReport {
        loop {
            let timeout = self.next_pass().saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(timeout) {
                Ok(message) => {
                    self.handle(message);
                    while let Ok(message) = self.inbox.try_recv() {
                        self.handle(message);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The handle and the link thread are both gone: stop now.
                Err(RecvTimeoutError::Disconnected) => {
                    self.link_stopped = true;
                    if self.shutdown.is_none() {
                        self.begin_shutdown(Instant::now());
                    }
                }
            }

            self.blocked = false;
            self.pump();
            if let Some(report) = self.advance_shutdown() {
                return report;
            }
        }
    }

    fn next_pass(&self) -> Instant {
        let now = Instant::now();
        let mut next = now
            + if self.blocked {
                RETRY_INTERVAL
            } else {
                IDLE_INTERVAL
            };
        if let Some(due) = self.stats_due {
            next = next.min(due);
        }
        if let Some(shutdown) = &self.shutdown {
            next = next.min(shutdown.deadline).min(now + RETRY_INTERVAL);
        }
        next
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Connected { generation } => {
                let current = {
                    let link = lock(&self.shared.link);
                    link.up && link.generation == generation
                };
                // A stale CONNACK (the connection already failed again) is ignored; the next
                // one follows.
                if current {
                    self.reset_connection(Some(generation));
                    self.announce = true;
                }
            }
            Message::Sent { generation, pkid } => {
                if self.generation != Some(generation) {
                    return;
                }
                match self.unsent.pop_front() {
                    Some(tracked) => {
                        if let Some(replaced) = self.in_flight.insert(pkid, tracked) {
                            // rumqttc reuses a packet id only after its PUBACK; if it did not,
                            // the replaced publish is resent after the next reconnect.
                            warn!("MQTT packet id {pkid} reused while {replaced:?} was unacknowledged");
                            self.forget(replaced);
                        }
                    }
                    None => warn!("MQTT publish {pkid} sent that the worker did not submit"),
                }
            }
            Message::Acked { generation, pkid } => {
                if self.generation == Some(generation) {
                    self.acknowledge(pkid);
                }
            }
            Message::Lost { generation } => {
                if self.generation == Some(generation) {
                    self.reset_connection(None);
                }
            }
            Message::LinkStopped => {
                self.link_stopped = true;
                self.reset_connection(None);
            }
            Message::Wake => self.shared.wake_pending.store(false, Ordering::Release),
            Message::Shutdown { deadline } => {
                if self.shutdown.is_none() {
                    self.begin_shutdown(deadline);
                }
            }
        }
    }

    /// Forgets everything tracked on the previous connection. Unacknowledged events are
    /// still in the queue; the cursor restarts so they are submitted again, in order.
    fn reset_connection(&mut self, generation: Option<u64>) {
        self.generation = generation;
        self.announce = false;
        self.cursor = None;
        self.unsent.clear();
        self.in_flight.clear();
        self.events_in_window = 0;
        self.published_ood = None;
    }

    fn forget(&mut self, tracked: Tracked) {
        if matches!(tracked, Tracked::Event(_)) {
            self.events_in_window -= 1;
        }
    }

    fn acknowledge(&mut self, pkid: u16) {
        let Some(tracked) = self.in_flight.remove(&pkid) else {
            debug!("PUBACK for MQTT packet id {pkid}, which is not tracked");
            return;
        };
        self.forget(tracked);
        match tracked {
            Tracked::Event(seq) => {
                let mut queue = lock(&self.shared.queue);
                // A failed write of the ack is logged there; the event leaves the queue anyway.
                queue.ack(seq);
                self.delivered += 1;
                self.shared.update_depth(&queue);
            }
            Tracked::Offline => {
                if let Some(shutdown) = &mut self.shutdown {
                    shutdown.offline_acked = true;
                }
            }
            Tracked::Online | Tracked::State => {}
        }
    }

    /// Submits what is due on the current connection: `online`, events up to the window,
    /// the state, stats.
    fn pump(&mut self) {
        let Some(generation) = self.generation else {
            self.skip_stats_if_due();
            return;
        };
        let shared = Arc::clone(&self.shared);
        let link = lock(&shared.link);
        // The link lock keeps the link thread from discarding rumqttc's requests while
        // this pass submits; a lost connection shows here before its `Lost` message.
        if !(link.up && link.generation == generation) {
            drop(link);
            self.skip_stats_if_due();
            return;
        }

        if self.announce {
            let topic = &shared.topics.availability;
            if !self.submit(Tracked::Online, topic, ONLINE.as_bytes().to_vec(), true) {
                return;
            }
            self.announce = false;
            shared.ready.store(true, Ordering::Release);
        }

        // Events go before the state, so that a subscriber that reacts to a state change
        // can already have the event behind it. The state is read before the queue:
        // `Mqtt::publish_event` queues before `Mqtt::publish_state` stores, so an event
        // queued before the state read here is found by the loop below.
        let ood = shared.ood.load(Ordering::Acquire);

        let draining = self
            .shutdown
            .as_ref()
            .is_none_or(|shutdown| shutdown.phase == Phase::Draining);
        while draining && self.events_in_window < EVENT_WINDOW {
            let Some((seq, payload)) = self.next_event() else {
                break;
            };
            if !self.submit(Tracked::Event(seq), &shared.topics.events, payload, false) {
                break;
            }
            self.cursor = Some(seq);
            self.events_in_window += 1;
        }

        if self.published_ood != Some(ood) {
            let payload = if ood { STATE_OUT } else { STATE_IN };
            if !self.submit(Tracked::State, &shared.topics.state, payload.into(), true) {
                return;
            }
            self.published_ood = Some(ood);
        }
        drop(link);

        self.publish_stats_if_due();
    }

    /// Copies the next queued event after the cursor. Drops events too large for
    /// `max_packet_bytes` on the way, which a run with a larger limit may have queued.
    fn next_event(&mut self) -> Option<(u64, Vec<u8>)> {
        let mut queue = lock(&self.shared.queue);
        loop {
            let (seq, payload) = queue.next_after(self.cursor)?;
            let packet = publish_packet_bytes(self.shared.topics.events.len(), payload.len(), true);
            if packet <= self.shared.max_packet_bytes {
                return Some((seq, payload.to_vec()));
            }
            error!(
                "dropped queued event {seq}: its MQTT packet of {packet} bytes exceeds \
                 mqtt.max_packet_bytes = {}",
                self.shared.max_packet_bytes
            );
            self.cursor = Some(seq);
            queue.ack(seq);
            RunStats::bump(&self.shared.stats.events_dropped);
            self.shared.update_depth(&queue);
        }
    }

    /// Hands one QoS 1 publish to rumqttc; false when its request channel is full.
    fn submit(&mut self, tracked: Tracked, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.unsent.push_back(tracked);
                true
            }
            Err(_) => {
                self.blocked = true;
                false
            }
        }
    }

    fn skip_stats_if_due(&mut self) {
        if self.stats_due.is_some_and(|due| Instant::now() >= due) {
            self.stats_due = Some(Instant::now() + self.stats_interval);
            self.stats_mark = self.counters_now();
        }
    }

    fn counters_now(&self) -> (Instant, u64, u64) {
        let stats = &self.shared.stats;
        (
            Instant::now(),
            stats.frames.load(Ordering::Relaxed),
            stats.latency_us_total.load(Ordering::Relaxed),
        )
    }

    fn publish_stats_if_due(&mut self) {
        let Some(due) = self.stats_due else { return };
        let now = Instant::now();
        if now < due || !self.shared.ready.load(Ordering::Acquire) {
            self.skip_stats_if_due();
            return;
        }
        self.stats_due = Some(now + self.stats_interval);
        let mark = self.counters_now();
        let payload = stats_payload(&self.shared, self.stats_mark, mark);
        self.stats_mark = mark;
        // QoS 0: a lost stats message is replaced by the next one.
        if self
            .client
            .try_publish(&self.shared.topics.stats, QoS::AtMostOnce, false, payload)
            .is_err()
        {
            debug!("stats message skipped: rumqttc's request channel is full");
        }
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        let now = Instant::now();
        let total = deadline.saturating_duration_since(now);
        // Keep a fifth of the time, at most 1 s, for `offline` and DISCONNECT.
        let reserve = (total / 5).min(Duration::from_secs(1));
        self.shutdown = Some(Shutdown {
            deadline,
            drain_until: deadline - reserve,
            phase: Phase::Draining,
            offline_acked: false,
            disconnect_sent: false,
        });
    }

    /// Moves the shutdown sequence on; returns the report when it has ended.
    fn advance_shutdown(&mut self) -> Option<ShutdownReport> {
        let phase = self.shutdown.as_ref()?.phase;
        let now = Instant::now();
        let connected = self.generation.is_some() && !self.announce;
        let (deadline, drain_until) = {
            let shutdown = self.shutdown.as_ref()?;
            (shutdown.deadline, shutdown.drain_until)
        };

        if phase == Phase::Draining {
            let queue_empty = lock(&self.shared.queue).is_empty();
            if connected && !queue_empty && now < drain_until {
                return None;
            }
            if connected && self.submit_offline() {
                self.set_phase(Phase::Offline);
                return None;
            }
            if connected && now < deadline {
                // rumqttc's channel is full; try again on the next pass.
                return None;
            }
            self.begin_stopping();
        }

        if self.shutdown.as_ref()?.phase == Phase::Offline {
            let acked = self.shutdown.as_ref()?.offline_acked;
            if !acked && self.generation.is_some() && now < deadline {
                return None;
            }
            self.begin_stopping();
        }

        // Phase::Stopping: retry the DISCONNECT until the channel takes it.
        let shutdown = self.shutdown.as_mut()?;
        if !shutdown.disconnect_sent && self.generation.is_some() {
            shutdown.disconnect_sent = self.client.try_disconnect().is_ok();
        }
        if !self.link_stopped && now < deadline {
            return None;
        }
        Some(self.report(now >= deadline && !self.link_stopped))
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.phase = phase;
        }
    }

    fn submit_offline(&mut self) -> bool {
        let Some(generation) = self.generation else {
            return false;
        };
        let shared = Arc::clone(&self.shared);
        let link = lock(&shared.link);
        if !(link.up && link.generation == generation) {
            return false;
        }
        let topic = &shared.topics.availability;
        let submitted = self.submit(Tracked::Offline, topic, OFFLINE.as_bytes().to_vec(), true);
        drop(link);
        submitted
    }

    /// Tells the link thread to stop: after the DISCONNECT when connected, at once from a
    /// backoff sleep, or after the connection attempt under way.
    fn begin_stopping(&mut self) {
        self.shared.stop_link.store(true, Ordering::Release);
        let _ = self.stop_link.send(());
        let connected = self.generation.is_some();
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.phase = Phase::Stopping;
            if connected && !shutdown.disconnect_sent {
                shutdown.disconnect_sent = self.client.try_disconnect().is_ok();
            }
        }
    }

    fn report(&self, timed_out: bool) -> ShutdownReport {
        let queue = lock(&self.shared.queue);
        self.shared.update_depth(&queue);
        let offline_published = self
            .shutdown
            .as_ref()
            .is_some_and(|shutdown| shutdown.offline_acked);
        let report = ShutdownReport {
            delivered: self.delivered,
            left_in_queue: queue.disk_len() as u64,
            lost_in_memory: queue.memory_len() as u64,
            offline_published,
            link_stopped: self.link_stopped,
            timed_out,
        };
        if report.left_in_queue > 0 {
            warn!(
                "{} event(s) not acknowledged by the broker stay queued in {}; they are sent \
                 at the next start",
                report.left_in_queue,
                queue.path().display()
            );
        }
        if !self.link_stopped {
            if self.generation.is_some() {
                // The link thread has not reported the DISCONNECT as sent, usually because
                // the broker is slow or stalled.
                warn!(
                    "the connection to MQTT broker {} was still open at the shutdown deadline; \
                     it closes in the background once the DISCONNECT is sent or the \
                     connection fails, or when the process exits",
                    self.shared.url
                );
            } else {
                warn!(
                    "the MQTT link thread is still inside a connection attempt to {}; it ends \
                     after it, within {} s",
                    self.shared.url,
                    super::link::CONNECT_TIMEOUT_S
                );
            }
        }
        if report.lost_in_memory > 0 {
            error!(
                "{} event(s) kept in memory, because {} could not be written, were not \
                 acknowledged by the broker and are lost",
                report.lost_in_memory,
                queue.path().display()
            );
        }
        info!(
            "MQTT signal stopped: {} event(s) delivered in this run, {} left in {}{}{}",
            report.delivered,
            report.left_in_queue,
            queue.path().display(),
            if offline_published {
                ", `offline` published"
            } else {
                ", `offline` not published (the broker sends the last will)"
            },
            if timed_out {
                ", shutdown timed out"
            } else {
                ""
            }
        );
        report
    }
}

/// Builds the JSON of one stats message. `mark` and `now` bound the interval that `fps` and
/// `mean_latency_ms` cover.
fn stats_payload(shared: &Shared, mark: (Instant, u64, u64), now: (Instant, u64, u64)) -> Vec<u8> {
    let stats = &shared.stats;
    let seconds = now.0.saturating_duration_since(mark.0).as_secs_f64();
    let frames = now.1.saturating_sub(mark.1);
    let latency_us = now.2.saturating_sub(mark.2);
    let fps = if seconds > 0.0 {
        round(frames as f64 / seconds, 100.0)
    } else {
        0.0
    };
    let mean_latency_ms =
        (frames > 0).then(|| round(latency_us as f64 / frames as f64 / 1000.0, 1000.0));
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let state = if shared.ood.load(Ordering::Acquire) {
        STATE_OUT
    } else {
        STATE_IN
    };
    let message = json!({
        "device": shared.device_id,
        "uptime_s": stats.started.elapsed().as_secs(),
        "frames": now.1,
        "fps": fps,
        "mean_latency_ms": mean_latency_ms,
        "skipped": load(&stats.skipped),
        "ood_frames": load(&stats.ood_frames),
        "events": load(&stats.events),
        "frames_dropped": load(&stats.mqtt_frames_dropped),
        "stale_frames": load(&stats.stale_frames),
        "events_dropped": load(&stats.events_dropped),
        "queue_depth": load(&stats.queue_depth),
        "state": state,
        "connected": shared.ready.load(Ordering::Acquire),
    });
    message.to_string().into_bytes()
}

fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}
