//! Debouncing: per-frame verdicts into an in/out state with hysteresis, and event records.
//!
//! A single noisy frame must not toggle a relay or publish an event, so [`DebouncedGate`]
//! enters the out-of-distribution state only after a run of out-of-distribution frames
//! ([`EnterRule::Consecutive`]) or when an exponential moving average of the score falls
//! below the threshold ([`EnterRule::Ema`]), and leaves it only after `leave_frames`
//! consecutive in-distribution frames.
//!
//! ```
//! use gradgate::gate::{DebounceConfig, DebouncedGate, EnterRule, FrameRef, Gate, Transition};
//! use std::time::SystemTime;
//!
//! let config = DebounceConfig { enter: EnterRule::Consecutive { frames: 2 }, leave_frames: 1 };
//! let gate = Gate::new(1.0);
//! let mut debounced = DebouncedGate::new(config, gate.threshold()).unwrap();
//! let frame = |index| FrameRef { index, time: SystemTime::UNIX_EPOCH, source: "cam" };
//! assert_eq!(debounced.step(frame(0), gate.decide(0.5)), Transition::None);
//! assert_eq!(debounced.step(frame(1), gate.decide(0.4)), Transition::Opened);
//! assert_eq!(debounced.step(frame(2), gate.decide(1.5)), Transition::Closed);
//! assert_eq!(debounced.event().unwrap().frames, 2);
//! ```
//!
//! # What an event covers
//! An event starts at the first frame of the out-of-distribution run that opened it and
//! ends at the last out-of-distribution frame before the in-distribution run that closed it.
//! In-distribution frames inside the event (runs shorter than `leave_frames`) count towards
//! its frames and scores; the closing run does not. `end_time` is therefore the time of the
//! last out-of-distribution frame, and `end_time − start_time` is how long the scene looked
//! out of distribution.

use super::Verdict;
use std::fmt;
use std::time::SystemTime;

/// Bytes of the opening frame's source name kept in an [`EventRecord`].
///
/// Trade-off: 512 bytes hold any camera URI and typical file paths, inline and without
/// allocation. A longer path is cut at a character boundary and ends with `…`.
pub const SOURCE_CAPACITY: usize = 512;

/// When the gate enters the out-of-distribution state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EnterRule {
    /// After `frames` consecutive out-of-distribution frames (at least 1). Latency is
    /// `frames` frame periods; one in-distribution frame restarts the count.
    Consecutive {
        /// Length of the run, in frames.
        frames: u32,
    },
    /// When the exponential moving average `ema ← alpha·score + (1 − alpha)·ema` falls below
    /// the threshold. `alpha` is in (0, 1]; smaller values smooth more and react later. The
    /// average starts at the first frame's score. Leaving also waits for the average to be
    /// back at or above the threshold, since otherwise the next frame would reopen at once.
    Ema {
        /// Weight of the newest score.
        alpha: f32,
    },
}

/// Settings of a [`DebouncedGate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DebounceConfig {
    /// When to enter the out-of-distribution state.
    pub enter: EnterRule,
    /// Consecutive in-distribution frames that end an event (at least 1).
    pub leave_frames: u32,
}

impl Default for DebounceConfig {
    /// Three frames in, five frames out.
    ///
    /// Trade-off: at 15 frames per second this reacts within 0.2 s and closes an event after
    /// 0.33 s of in-distribution frames. One or two stray frames, the usual noise of a
    /// thresholded score, toggle nothing.
    fn default() -> DebounceConfig {
        DebounceConfig {
            enter: EnterRule::Consecutive { frames: 3 },
            leave_frames: 5,
        }
    }
}

/// A [`DebounceConfig`] or threshold that cannot work.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DebounceError {
    /// A run length of zero frames.
    ZeroFrames {
        /// The setting's name.
        name: &'static str,
    },
    /// An EMA weight outside (0, 1].
    Alpha {
        /// The value given.
        alpha: f32,
    },
    /// A threshold that is NaN or infinite.
    Threshold {
        /// The value given.
        threshold: f32,
    },
}

impl fmt::Display for DebounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebounceError::ZeroFrames { name } => {
                write!(f, "{name} is 0; it must be at least 1 frame")
            }
            DebounceError::Alpha { alpha } => write!(
                f,
                "EMA weight {alpha} is outside (0, 1]; use for example 0.3 (smaller smooths more)"
            ),
            DebounceError::Threshold { threshold } => {
                write!(f, "gate threshold {threshold} is not a finite number")
            }
        }
    }
}

impl std::error::Error for DebounceError {}

/// One frame's origin and capture time, as the gate records them.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    /// Position of the frame in the run, from 0.
    pub index: u64,
    /// Capture time: the source's timestamp where it has one, else when it was read.
    pub time: SystemTime,
    /// The source's name (a file path or a camera URI).
    pub source: &'a str,
}

/// The debounced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    /// In distribution: no event open.
    In,
    /// Out of distribution: an event is open.
    Out,
}

impl GateState {
    /// `"in"` or `"out"`, as the MQTT state topic carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            GateState::In => "in",
            GateState::Out => "out",
        }
    }
}

/// The change one [`DebouncedGate::step`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The state did not change.
    None,
    /// The gate entered the out-of-distribution state; [`DebouncedGate::event`] is the new event.
    Opened,
    /// The gate left it; [`DebouncedGate::event`] is the closed event.
    Closed,
}

/// The reason an event closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// `leave_frames` consecutive in-distribution frames arrived.
    InDistribution,
    /// The run ended (end of input or a stop signal) while the event was open.
    Finished,
}

impl CloseReason {
    /// `"in-distribution"` or `"finished"`, as event payloads carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::InDistribution => "in-distribution",
            CloseReason::Finished => "finished",
        }
    }
}

/// Running statistics over a span of frames.
#[derive(Clone, Copy, Debug)]
struct Span {
    frames: u64,
    min_score: f32,
    /// Sum of scores in f64: an event can last millions of frames.
    score_sum: f64,
    last_time: SystemTime,
}

impl Span {
    const EMPTY: Span = Span {
        frames: 0,
        min_score: f32::INFINITY,
        score_sum: 0.0,
        last_time: SystemTime::UNIX_EPOCH,
    };

    fn add(&mut self, score: f32, time: SystemTime) {
        self.frames += 1;
        // NaN scores (flagged as out-of-distribution by `Gate`) are counted but leave the
        // minimum and the mean alone, so one bad value does not poison the event's figures.
        if score.is_finite() {
            self.min_score = self.min_score.min(score);
            self.score_sum += f64::from(score);
        }
        self.last_time = time;
    }

    fn merge(&mut self, other: &Span) {
        self.frames += other.frames;
        self.min_score = self.min_score.min(other.min_score);
        self.score_sum += other.score_sum;
    }
}

/// One out-of-distribution spell, open or closed.
///
/// Invariant: `frames ≥ 1` and `start_time ≤ end_time` for frames with increasing times.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// Number of the event in this gate's life, from 1.
    pub seq: u64,
    /// Time of the first frame of the event.
    pub start_time: SystemTime,
    /// Time of the last out-of-distribution frame so far (see the module doc).
    pub end_time: SystemTime,
    /// Frames in the event, including short in-distribution runs inside it.
    pub frames: u64,
    /// Lowest score in the event (scores are higher for in-distribution frames).
    pub min_score: f32,
    /// The threshold the frames were compared with.
    pub threshold: f32,
    /// Index of the frame that opened the event.
    pub opened_by_index: u64,
    /// Source of the frame that opened the event, cut to [`SOURCE_CAPACITY`] bytes.
    pub opened_by_source: heapless::String<SOURCE_CAPACITY>,
    /// `None` while the event is open.
    pub closed_by: Option<CloseReason>,
    score_sum: f64,
}

impl EventRecord {
    /// Mean score over the event's frames (NaN scores excluded).
    pub fn mean_score(&self) -> f32 {
        (self.score_sum / self.frames as f64) as f32
    }

    /// True while the event is open.
    pub fn is_open(&self) -> bool {
        self.closed_by.is_none()
    }
}

/// Debounces verdicts into [`GateState`] transitions and [`EventRecord`]s.
///
/// Design: all state is inline (the source name in a fixed-capacity string), so
/// [`DebouncedGate::step`] allocates nothing, and the gate reads time only from the frames,
/// which makes tests deterministic.
#[derive(Clone, Debug)]
pub struct DebouncedGate {
    config: DebounceConfig,
    threshold: f32,
    state: GateState,
    /// Length of the current run of out-of-distribution frames.
    ood_run: u32,
    /// Length of the current run of in-distribution frames.
    id_run: u32,
    /// The moving average, once a finite score has arrived (EMA rule only).
    ema: Option<f64>,
    /// While in: the current out-of-distribution run and its first frame, the candidate
    /// event. While out: unused.
    candidate: Span,
    candidate_start: SystemTime,
    candidate_index: u64,
    candidate_source: heapless::String<SOURCE_CAPACITY>,
    /// While out: the in-distribution frames since the last out-of-distribution frame,
    /// merged into the event if another out-of-distribution frame follows.
    trailing: Span,
    /// The open event, or the last closed one.
    event: Option<EventRecord>,
    next_seq: u64,
}

impl DebouncedGate {
    /// Creates a gate in the in-distribution state that compares scores with `threshold`, the
    /// threshold of the [`super::Gate`] whose verdicts it is fed.
    pub fn new(config: DebounceConfig, threshold: f32) -> Result<DebouncedGate, DebounceError> {
        if let EnterRule::Consecutive { frames: 0 } = config.enter {
            return Err(DebounceError::ZeroFrames {
                name: "enter_frames",
            });
        }
        if config.leave_frames == 0 {
            return Err(DebounceError::ZeroFrames {
                name: "leave_frames",
            });
        }
        if let EnterRule::Ema { alpha } = config.enter {
            if !(alpha > 0.0 && alpha <= 1.0) {
                return Err(DebounceError::Alpha { alpha });
            }
        }
        if !threshold.is_finite() {
            return Err(DebounceError::Threshold { threshold });
        }
        Ok(DebouncedGate {
            config,
            threshold,
            state: GateState::In,
            ood_run: 0,
            id_run: 0,
            ema: None,
            candidate: Span::EMPTY,
            candidate_start: SystemTime::UNIX_EPOCH,
            candidate_index: 0,
            candidate_source: heapless::String::new(),
            trailing: Span::EMPTY,
            event: None,
            next_seq: 1,
        })
    }

    /// Returns the current state.
    pub fn state(&self) -> GateState {
        self.state
    }

    /// Returns the settings in use.
    pub fn config(&self) -> DebounceConfig {
        self.config
    }

    /// Returns the threshold in use.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Returns the moving average of the score, under the EMA rule once a finite score arrived.
    pub fn ema(&self) -> Option<f32> {
        self.ema.map(|v| v as f32)
    }

    /// Returns the open event, or the last closed one, and `None` before the first event.
    pub fn event(&self) -> Option<&EventRecord> {
        self.event.as_ref()
    }

    /// Feeds one frame's verdict. Allocates nothing.
    pub fn step(&mut self, frame: FrameRef<'_>, verdict: Verdict) -> Transition {
        // The average tracks every finite score, in both states.
        if let (EnterRule::Ema { alpha }, true) = (self.config.enter, verdict.score.is_finite()) {
            let score = f64::from(verdict.score);
            let alpha = f64::from(alpha);
            self.ema = Some(match self.ema {
                None => score,
                Some(ema) => alpha * score + (1.0 - alpha) * ema,
            });
        }

        match self.state {
            GateState::In => self.step_in(frame, verdict),
            GateState::Out => self.step_out(frame, verdict),
        }
    }

    /// Closes an open event because the run ends. Returns [`Transition::Closed`] when an
    /// event was open, else [`Transition::None`].
    pub fn finish(&mut self) -> Transition {
        if self.state == GateState::In {
            return Transition::None;
        }
        self.close(CloseReason::Finished);
        Transition::Closed
    }

    fn ema_below_threshold(&self) -> bool {
        self.ema.is_some_and(|ema| ema < f64::from(self.threshold))
    }

    fn step_in(&mut self, frame: FrameRef<'_>, verdict: Verdict) -> Transition {
        if !verdict.ood {
            self.ood_run = 0;
            return Transition::None;
        }

        // Track the run of out-of-distribution frames: its first frame opens the event.
        if self.ood_run == 0 {
            self.candidate = Span::EMPTY;
            self.candidate_start = frame.time;
            self.candidate_index = frame.index;
            copy_truncated(&mut self.candidate_source, frame.source);
        }
        self.ood_run = self.ood_run.saturating_add(1);
        self.candidate.add(verdict.score, frame.time);

        let enter = match self.config.enter {
            EnterRule::Consecutive { frames } => self.ood_run >= frames,
            EnterRule::Ema { .. } => self.ema_below_threshold(),
        };
        if !enter {
            return Transition::None;
        }

        // Open the event from the run so far.
        let seq = self.next_seq;
        self.next_seq += 1;
        let event = EventRecord {
            seq,
            start_time: self.candidate_start,
            end_time: self.candidate.last_time,
            frames: self.candidate.frames,
            min_score: self.candidate.min_score,
            threshold: self.threshold,
            opened_by_index: self.candidate_index,
            opened_by_source: self.candidate_source.clone(),
            closed_by: None,
            score_sum: self.candidate.score_sum,
        };
        self.event = Some(event);
        self.state = GateState::Out;
        self.id_run = 0;
        self.trailing = Span::EMPTY;
        Transition::Opened
    }

    fn step_out(&mut self, frame: FrameRef<'_>, verdict: Verdict) -> Transition {
        let event = self
            .event
            .as_mut()
            .expect("an event is open while the state is out");

        if verdict.ood {
            // The in-distribution frames since the last out-of-distribution one belong to
            // the event after all.
            let mut span = Span {
                frames: event.frames,
                min_score: event.min_score,
                score_sum: event.score_sum,
                last_time: event.end_time,
            };
            span.merge(&self.trailing);
            span.add(verdict.score, frame.time);
            event.frames = span.frames;
            event.min_score = span.min_score;
            event.score_sum = span.score_sum;
            event.end_time = span.last_time;
            self.trailing = Span::EMPTY;
            self.id_run = 0;
            return Transition::None;
        }

        self.id_run = self.id_run.saturating_add(1);
        self.trailing.add(verdict.score, frame.time);
        let average_recovered = match self.config.enter {
            EnterRule::Consecutive { .. } => true,
            EnterRule::Ema { .. } => !self.ema_below_threshold(),
        };
        if self.id_run < self.config.leave_frames || !average_recovered {
            return Transition::None;
        }
        self.close(CloseReason::InDistribution);
        Transition::Closed
    }

    fn close(&mut self, reason: CloseReason) {
        if let Some(event) = self.event.as_mut() {
            event.closed_by = Some(reason);
        }
        self.state = GateState::In;
        self.ood_run = 0;
        self.id_run = 0;
        self.trailing = Span::EMPTY;
    }
}

/// Copies `source` into `out`, cutting it at a character boundary and ending it with `…`
/// when it does not fit.
fn copy_truncated(out: &mut heapless::String<SOURCE_CAPACITY>, source: &str) {
    out.clear();
    if out.push_str(source).is_ok() {
        return;
    }
    const ELLIPSIS: &str = "…";
    let mut end = SOURCE_CAPACITY - ELLIPSIS.len();
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    // Both pushes fit by construction: `end + ELLIPSIS.len() ≤ SOURCE_CAPACITY`.
    let _ = out.push_str(&source[..end]);
    let _ = out.push_str(ELLIPSIS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Gate;
    use std::time::Duration;

    const THRESHOLD: f32 = 1.0;

    fn at(index: u64) -> FrameRef<'static> {
        FrameRef {
            index,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(100 * index),
            source: "cam",
        }
    }

    fn consecutive(enter: u32, leave: u32) -> DebouncedGate {
        let config = DebounceConfig {
            enter: EnterRule::Consecutive { frames: enter },
            leave_frames: leave,
        };
        DebouncedGate::new(config, THRESHOLD).unwrap()
    }

    /// Feeds `scores` from frame 0 and returns the transitions.
    fn feed(gate: &mut DebouncedGate, scores: &[f32]) -> Vec<Transition> {
        let decide = Gate::new(THRESHOLD);
        scores
            .iter()
            .enumerate()
            .map(|(i, &s)| gate.step(at(i as u64), decide.decide(s)))
            .collect()
    }

    use Transition::{Closed, None as Stay, Opened};

    #[test]
    fn gate_ignores_single_frame_spike() {
        let mut gate = consecutive(2, 2);
        let t = feed(&mut gate, &[2.0, 0.1, 2.0, 0.1, 2.0]);
        assert!(t.iter().all(|&t| t == Stay));
    }

    #[test]
    fn gate_opens_on_the_nth_consecutive_frame() {
        let mut gate = consecutive(3, 2);
        let t = feed(&mut gate, &[0.1, 0.2, 0.3]);
        assert_eq!(t, [Stay, Stay, Opened]);
    }

    #[test]
    fn event_starts_at_opening_run() {
        let mut gate = consecutive(3, 2);
        feed(&mut gate, &[2.0, 0.1, 0.2, 0.3]);
        assert_eq!(gate.event().unwrap().opened_by_index, 1);
    }

    #[test]
    fn open_event_reports_the_opening_run() {
        let mut gate = consecutive(3, 2);
        feed(&mut gate, &[2.0, 0.5, 0.25, 0.75]);
        let event = gate.event().unwrap();
        assert_eq!(
            (
                event.frames,
                event.min_score,
                event.mean_score(),
                event.start_time
            ),
            (3, 0.25, 0.5, at(1).time)
        );
    }

    #[test]
    fn gate_closes_after_leave_frames_in_distribution() {
        let mut gate = consecutive(1, 3);
        let t = feed(&mut gate, &[0.1, 2.0, 2.0, 2.0]);
        assert_eq!(t, [Opened, Stay, Stay, Closed]);
    }

    #[test]
    fn short_inner_run_joins_event() {
        let mut gate = consecutive(1, 3);
        feed(&mut gate, &[0.5, 2.0, 0.25, 3.0, 3.0, 3.0]);
        let event = gate.event().unwrap();
        assert_eq!(
            (event.frames, event.mean_score(), event.end_time),
            (3, (0.5 + 2.0 + 0.25) / 3.0, at(2).time)
        );
    }

    #[test]
    fn closing_run_is_not_part_of_the_event() {
        let mut gate = consecutive(1, 2);
        feed(&mut gate, &[0.5, 4.0, 4.0]);
        let event = gate.event().unwrap();
        assert_eq!((event.frames, event.end_time), (1, at(0).time));
    }

    #[test]
    fn closed_event_says_why() {
        let mut gate = consecutive(1, 1);
        feed(&mut gate, &[0.5, 4.0]);
        assert_eq!(
            gate.event().unwrap().closed_by,
            Some(CloseReason::InDistribution)
        );
    }

    #[test]
    fn finish_closes_an_open_event() {
        let mut gate = consecutive(1, 5);
        feed(&mut gate, &[0.5]);
        assert_eq!(gate.finish(), Closed);
    }

    #[test]
    fn finish_without_an_open_event_changes_nothing() {
        let mut gate = consecutive(1, 5);
        feed(&mut gate, &[2.0]);
        assert_eq!(gate.finish(), Stay);
    }

    #[test]
    fn events_are_numbered_from_one() {
        let mut gate = consecutive(1, 1);
        feed(&mut gate, &[0.5, 2.0, 0.5]);
        assert_eq!(gate.event().unwrap().seq, 2);
    }

    #[test]
    fn ema_gate_ignores_a_spike_the_average_absorbs() {
        let config = DebounceConfig {
            enter: EnterRule::Ema { alpha: 0.25 },
            leave_frames: 1,
        };
        let mut gate = DebouncedGate::new(config, THRESHOLD).unwrap();
        // 2.0 then 0.0: the average is 0.25·0 + 0.75·2 = 1.5, still above 1.
        let t = feed(&mut gate, &[2.0, 0.0, 2.0]);
        assert!(t.iter().all(|&t| t == Stay));
    }

    #[test]
    fn ema_gate_opens_when_the_average_crosses() {
        let config = DebounceConfig {
            enter: EnterRule::Ema { alpha: 0.5 },
            leave_frames: 1,
        };
        let mut gate = DebouncedGate::new(config, THRESHOLD).unwrap();
        // Averages: 2.0, 1.25, 0.875.
        let t = feed(&mut gate, &[2.0, 0.5, 0.5]);
        assert_eq!(t, [Stay, Stay, Opened]);
    }

    #[test]
    fn ema_gate_closes_after_recovery() {
        let config = DebounceConfig {
            enter: EnterRule::Ema { alpha: 0.5 },
            leave_frames: 1,
        };
        let mut gate = DebouncedGate::new(config, THRESHOLD).unwrap();
        // Averages: 0.0 (opens), 0.6 (in-distribution frame, average still low), 1.3.
        let t = feed(&mut gate, &[0.0, 1.2, 2.0]);
        assert_eq!(t, [Opened, Stay, Closed]);
    }

    #[test]
    fn zero_enter_frames_is_rejected() {
        let config = DebounceConfig {
            enter: EnterRule::Consecutive { frames: 0 },
            leave_frames: 1,
        };
        let err = DebouncedGate::new(config, THRESHOLD).unwrap_err();
        assert_eq!(
            err.to_string(),
            "enter_frames is 0; it must be at least 1 frame"
        );
    }

    #[test]
    fn alpha_above_one_is_rejected() {
        let config = DebounceConfig {
            enter: EnterRule::Ema { alpha: 1.5 },
            leave_frames: 1,
        };
        assert_eq!(
            DebouncedGate::new(config, THRESHOLD).unwrap_err(),
            DebounceError::Alpha { alpha: 1.5 }
        );
    }

    #[test]
    fn long_source_is_cut_at_a_character_boundary() {
        let mut out = heapless::String::<SOURCE_CAPACITY>::new();
        let source = "é".repeat(SOURCE_CAPACITY);
        copy_truncated(&mut out, &source);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn short_source_is_kept_whole() {
        let mut out = heapless::String::<SOURCE_CAPACITY>::new();
        copy_truncated(&mut out, "v4l2:///dev/video0");
        assert_eq!(out.as_str(), "v4l2:///dev/video0");
    }
}
