//! Per-frame output of `gradgate run`: the JSON line, the signals, the counters.

use crate::signals::Signals;
use gradgate::gate::FrameRef;
use gradgate::{FrameError, FrameResult};
use serde::{Serialize, Serializer};
use std::io::{LineWriter, StdoutLock, Write};
use std::time::{Duration, SystemTime};

/// One line of `run` output.
#[derive(Serialize)]
struct FrameLine<'a> {
    source: &'a str,
    /// Absent on skips that are not a frame (bytes between frames of a stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<u64>,
    /// Capture time (the source's timestamp, else when the frame was read), RFC 3339 UTC.
    #[serde(serialize_with = "rfc3339")]
    time: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ood: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prob: Option<f32>,
    scorer: &'a str,
    /// The debounced state after this frame: `in` or `out`.
    state: &'static str,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Writes the time without an intermediate `String`.
fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// The frame loop's next step after a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// stdout was closed and nothing else carries the decisions.
    Stop,
}

/// Counts of a run, for the summary line and the exit code.
#[derive(Default, Debug)]
pub(crate) struct Counts {
    pub(crate) inside: u64,
    pub(crate) outside: u64,
    pub(crate) skipped: u64,
}

/// Turns frame results into JSON lines, signals and counts.
pub(crate) struct Sink<'a> {
    out: LineWriter<StdoutLock<'static>>,
    stdout_open: bool,
    pub(crate) signals: Signals,
    scorer: &'a str,
    labels: &'a [String],
    /// Reused for the MQTT frames topic; grows only while a message is longer than any before.
    frame_message: Vec<u8>,
    pub(crate) counts: Counts,
    /// An error writing stdout other than a closed pipe; it ends the run.
    pub(crate) write_error: Option<std::io::Error>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(signals: Signals, scorer: &'a str, labels: &'a [String]) -> Sink<'a> {
        Sink {
            // One line per frame, flushed as it is written, so that a reader sees each
            // decision when it is made.
            out: LineWriter::new(std::io::stdout().lock()),
            stdout_open: true,
            signals,
            scorer,
            labels,
            frame_message: Vec::with_capacity(1024),
            counts: Counts::default(),
            write_error: None,
        }
    }

    /// Reports one frame: its result or why it was skipped.
    pub(crate) fn frame(
        &mut self,
        at: FrameRef<'_>,
        result: Result<FrameResult, FrameError>,
        latency: Duration,
    ) -> Flow {
        let latency_ms = latency.as_secs_f64() * 1000.0;
        let line = match result {
            Ok(result) => {
                if result.verdict.ood {
                    self.counts.outside += 1;
                } else {
                    self.counts.inside += 1;
                }
                self.signals.frame(at, result.verdict, latency);
                FrameLine {
                    source: at.source,
                    frame: Some(at.index),
                    time: at.time,
                    score: Some(result.verdict.score),
                    threshold: Some(result.verdict.threshold),
                    ood: Some(result.verdict.ood),
                    label: self.labels.get(result.top1).map(String::as_str),
                    prob: Some(result.prob),
                    scorer: self.scorer,
                    state: self.signals.state().as_str(),
                    latency_ms,
                    error: None,
                }
            }
            Err(err) => {
                self.counts.skipped += 1;
                self.signals.skipped();
                log::warn!("skipped frame {} ({}): {err}", at.index, at.source);
                self.error_line(
                    at.source,
                    Some(at.index),
                    at.time,
                    err.to_string(),
                    latency_ms,
                )
            }
        };
        self.write(&line, at.index)
    }

    /// Reports input a stream skipped between frames (a truncated or corrupt frame, stray
    /// bytes), which has no frame index.
    pub(crate) fn skip(&mut self, source: &str, reason: &dyn std::error::Error) -> Flow {
        self.counts.skipped += 1;
        self.signals.skipped();
        log::warn!("skipped input from {source}: {reason}");
        let line = self.error_line(source, None, SystemTime::now(), reason.to_string(), 0.0);
        self.write(&line, self.counts.inside + self.counts.outside)
    }

    fn error_line<'s>(
        &self,
        source: &'s str,
        frame: Option<u64>,
        time: SystemTime,
        error: String,
        latency_ms: f64,
    ) -> FrameLine<'s>
    where
        'a: 's,
    {
        FrameLine {
            source,
            frame,
            time,
            score: None,
            threshold: None,
            ood: None,
            label: None,
            prob: None,
            scorer: self.scorer,
            state: self.signals.state().as_str(),
            latency_ms,
            error: Some(error),
        }
    }

    fn write(&mut self, line: &FrameLine<'_>, frame: u64) -> Flow {
        if self.signals.wants_frames() {
            self.frame_message.clear();
            if serde_json::to_writer(&mut self.frame_message, line).is_ok() {
                self.signals.frame_message(&self.frame_message);
            }
        }
        if !self.stdout_open {
            return Flow::Continue;
        }
        let written = serde_json::to_writer(&mut self.out, line)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(self.out));
        let Err(err) = written else {
            return Flow::Continue;
        };

        // A closed pipe (`gradgate run … | head`) means the reader has what it wanted, unless
        // MQTT or GPIO carry the decisions: then the run goes on without stdout.
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            if self.signals.is_active() {
                log::warn!("stdout closed after frame {frame}; going on for MQTT and GPIO");
                self.stdout_open = false;
                return Flow::Continue;
            }
            log::info!("stdout closed after frame {frame}; stopping");
            return Flow::Stop;
        }
        self.write_error = Some(err);
        Flow::Stop
    }
}
