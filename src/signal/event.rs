//! The JSON payload of one event transition, as the MQTT events topic carries it.
//!
//! Each event produces two messages: `"type": "start"` when the gate enters the
//! out-of-distribution state and `"type": "end"` when it leaves it (or the run ends).
//!
//! ```json
//! {"type":"end","id":"cam1-1764887000123-1","device":"cam1",
//!  "start_time":"2026-12-04T22:40:01.123Z","end_time":"2026-12-04T22:40:02.456Z",
//!  "frames":14,"min_score":0.0123,"mean_score":0.0311,"scorer":"gradnorm-logits",
//!  "threshold":0.0542,"source":"/dev/video0","frame":812,"closed_by":"in-distribution"}
//! ```
//!
//! | key | meaning |
//! |---|---|
//! | `type` | `start` or `end` |
//! | `id` | `<device>-<run start, Unix ms>-<event number in the run>`; the same in both messages |
//! | `device` | the device id |
//! | `start_time` | capture time of the first frame of the event, RFC 3339 UTC, milliseconds |
//! | `end_time` | time of the last out-of-distribution frame; `null` in `start` |
//! | `frames` | frames in the event so far (in `start`: the run that opened it) |
//! | `min_score`, `mean_score` | lowest and mean score over those frames |
//! | `scorer`, `threshold` | the detector and the threshold the frames were compared with |
//! | `source`, `frame` | source and index of the frame that opened the event |
//! | `closed_by` | `in-distribution` or `finished` (end of input, SIGINT or SIGTERM); `null` in `start` |
//!
//! Scores are higher for in-distribution frames, so `min_score` is the most
//! out-of-distribution frame of the event.
//!
//! # Important notes
//! - Building a payload allocates; it happens twice per event, never per frame.

use crate::gate::EventRecord;
use serde::Serialize;
use std::time::SystemTime;

/// The half of an event that a message reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The gate entered the out-of-distribution state.
    Start,
    /// The gate left it.
    End,
}

/// Names the event ids of one run: the device and the run's start time keep ids unique
/// across restarts of the process, which matters because queued events outlive it.
#[derive(Clone, Debug)]
pub struct EventIds {
    device: String,
    run_start_ms: u128,
}

impl EventIds {
    /// Ids for a run of `device` starting now.
    pub fn new(device: &str) -> EventIds {
        let run_start_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        EventIds {
            device: device.to_string(),
            run_start_ms,
        }
    }

    /// Returns the device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Formats the id of event number `seq` of this run.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{}-{seq}", self.device, self.run_start_ms)
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    device: &'a str,
    start_time: String,
    end_time: Option<String>,
    frames: u64,
    min_score: Option<f32>,
    mean_score: Option<f32>,
    scorer: &'a str,
    threshold: f32,
    source: &'a str,
    frame: u64,
    closed_by: Option<&'static str>,
}

/// Serializes one event message. `scorer` is the detector's name as `--scorer` takes it.
pub fn event_json(ids: &EventIds, event: &EventRecord, kind: EventKind, scorer: &str) -> Vec<u8> {
    let id = ids.id(event.seq);
    let finite = |v: f32| v.is_finite().then_some(v);
    let payload = Payload {
        kind: match kind {
            EventKind::Start => "start",
            EventKind::End => "end",
        },
        id: &id,
        device: ids.device(),
        start_time: rfc3339(event.start_time),
        end_time: match kind {
            EventKind::Start => None,
            EventKind::End => Some(rfc3339(event.end_time)),
        },
        frames: event.frames,
        // Only NaN scores in every frame leave these non-finite; JSON has no NaN.
        min_score: finite(event.min_score),
        mean_score: finite(event.mean_score()),
        scorer,
        threshold: event.threshold,
        source: &event.opened_by_source,
        frame: event.opened_by_index,
        closed_by: match kind {
            EventKind::Start => None,
            EventKind::End => event.closed_by.map(|r| r.as_str()),
        },
    };
    serde_json::to_vec(&payload).expect("an event payload always serializes")
}

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{DebounceConfig, DebouncedGate, EnterRule, FrameRef, Gate};
    use std::time::Duration;

    fn closed_event() -> EventRecord {
        let config = DebounceConfig {
            enter: EnterRule::Consecutive { frames: 2 },
            leave_frames: 1,
        };
        let gate = Gate::new(1.0);
        let mut debounced = DebouncedGate::new(config, 1.0).unwrap();
        for (index, score) in [0.5f32, 0.25, 2.0].into_iter().enumerate() {
            let frame = FrameRef {
                index: index as u64 + 7,
                time: SystemTime::UNIX_EPOCH + Duration::from_millis(1500 * index as u64),
                source: "a.jpg",
            };
            debounced.step(frame, gate.decide(score));
        }
        debounced.event().unwrap().clone()
    }

    #[test]
    fn end_message_has_the_documented_fields() {
        let ids = EventIds {
            device: "cam1".into(),
            run_start_ms: 42,
        };
        let json = event_json(&ids, &closed_event(), EventKind::End, "msp");
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"type":"end","id":"cam1-42-1","device":"cam1","start_time":"1970-01-01T00:00:00.000Z","end_time":"1970-01-01T00:00:01.500Z","frames":2,"min_score":0.25,"mean_score":0.375,"scorer":"msp","threshold":1.0,"source":"a.jpg","frame":7,"closed_by":"in-distribution"}"#
        );
    }

    #[test]
    fn start_message_has_no_end() {
        let ids = EventIds {
            device: "cam1".into(),
            run_start_ms: 42,
        };
        let json = event_json(&ids, &closed_event(), EventKind::Start, "msp");
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(value["end_time"].is_null());
    }
}
