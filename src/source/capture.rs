//! The capture thread: runs a [`FrameSource`] into preallocated buffers, newest frame wins.
//!
//! A camera produces frames at its own rate whatever the model costs, so capture runs on its
//! own thread and the inference loop takes the newest complete frame. Frames that arrive
//! while inference is busy replace the waiting one, which is dropped and counted: a slow
//! model lowers the processing rate, never stalls the camera, and never works on stale
//! frames.
//!
//! ```no_run
//! use gradgate::source::capture::{Capture, Taken};
//! use gradgate::source::stream::MjpegStream;
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//!
//! let source = MjpegStream::new(std::io::stdin(), "-".into(), 8 << 20);
//! let stop = Arc::new(AtomicBool::new(false));
//! let capture = Capture::start(Box::new(source), 8 << 20, Arc::clone(&stop));
//! loop {
//!     match capture.take() {
//!         Taken::Frame(frame) => {
//!             println!("frame {} of {} bytes", frame.seq, frame.bytes.len());
//!             capture.give_back(frame);
//!         }
//!         Taken::Skipped(reason) => eprintln!("skipped: {reason}"),
//!         Taken::End(_) | Taken::Stopped => break,
//!     }
//! }
//! ```
//!
//! # Important notes
//! - Design: three buffers of `max_frame_bytes` each, allocated at start. At any time one is
//!   being filled by the source, at most one contains the newest complete frame, and at most one
//!   is with the inference loop, so the capture thread always has a buffer to write and
//!   never waits for inference.
//! - Skip reasons go through a bounded queue; when inference falls behind by more than
//!   [`SKIP_QUEUE`] skips, further reasons are counted but not delivered.
//! - The capture thread blocks in the source's reads. [`Taken::Stopped`] lets the caller
//!   leave while it is blocked (on stdin, say); the thread ends with the process.

use super::{Captured, FrameSource, Next, SkipReason};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Skip reasons kept for the inference loop. Trade-off: enough for a burst of corrupt
/// frames between two inferences; beyond it only the count is exact.
pub const SKIP_QUEUE: usize = 64;

/// Buffers in the capture ring: one being filled, one ready, one being processed.
const BUFFERS: usize = 3;

/// How often [`Capture::take`] checks the stop flag while it waits.
const STOP_POLL: Duration = Duration::from_millis(100);

/// One captured frame, lent to the inference loop until [`Capture::give_back`].
#[derive(Debug)]
pub struct CapturedFrame {
    /// The frame's bytes, in the encoding `captured.encoding` gives.
    pub bytes: Vec<u8>,
    /// Time and encoding.
    pub captured: Captured,
    /// Position of the frame in the source, from 0, counting dropped frames too.
    pub seq: u64,
}

/// The result of [`Capture::take`].
#[derive(Debug)]
pub enum Taken {
    /// The newest complete frame.
    Frame(CapturedFrame),
    /// The source skipped input (a corrupt or truncated frame, bytes between frames).
    Skipped(SkipReason),
    /// The source ended; `Some` gives the fault at the end.
    End(Option<SkipReason>),
    /// The stop flag was set.
    Stopped,
}

/// Counters of a capture, readable while it runs.
#[derive(Debug, Default)]
pub struct CaptureCounts {
    /// Frames the source produced.
    pub captured: AtomicU64,
    /// Frames replaced by a newer one before inference took them.
    pub dropped: AtomicU64,
    /// Skips the source reported.
    pub skipped: AtomicU64,
    /// Skip reasons not delivered because the skip queue was full.
    pub skips_not_delivered: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    /// Unused buffers. Invariant: `free.len() + ready + lent + filling == BUFFERS`.
    free: Vec<Vec<u8>>,
    /// The newest complete frame, not yet taken.
    ready: Option<CapturedFrame>,
    /// Skip reasons, oldest first, at most [`SKIP_QUEUE`].
    skips: VecDeque<SkipReason>,
    /// Set once the source ended.
    end: Option<Option<SkipReason>>,
}

struct Shared {
    ring: Mutex<Ring>,
    changed: Condvar,
    counts: CaptureCounts,
}

/// A running capture thread and its buffers.
pub struct Capture {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    name: String,
    _thread: JoinHandle<()>,
}

impl Capture {
    /// Allocates the buffers (`max_frame_bytes` each) and starts the capture thread.
    pub fn start(
        mut source: Box<dyn FrameSource>,
        max_frame_bytes: usize,
        stop: Arc<AtomicBool>,
    ) -> Capture {
        let name = source.name().to_string();
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring {
                free: (0..BUFFERS - 1)
                    .map(|_| Vec::with_capacity(max_frame_bytes))
                    .collect(),
                ready: None,
                skips: VecDeque::with_capacity(SKIP_QUEUE),
                end: None,
            }),
            changed: Condvar::new(),
            counts: CaptureCounts::default(),
        });
        log::info!("capture from {name} started: {BUFFERS} buffers of {max_frame_bytes} bytes");

        let thread_shared = Arc::clone(&shared);
        let thread_stop = Arc::clone(&stop);
        let mut filling = Vec::with_capacity(max_frame_bytes);
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                run_capture(&mut *source, &mut filling, &thread_shared, &thread_stop);
            })
            .expect("the capture thread starts");
        Capture {
            shared,
            stop,
            name,
            _thread: thread,
        }
    }

    /// Names the source.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the counters.
    pub fn counts(&self) -> &CaptureCounts {
        &self.shared.counts
    }

    /// Waits for the next skip reason, the newest frame, the end, or the stop flag, in that
    /// order of priority. Skips come first so that they are reported in order with frames.
    pub fn take(&self) -> Taken {
        let mut ring = lock(&self.shared.ring);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Taken::Stopped;
            }
            if let Some(reason) = ring.skips.pop_front() {
                return Taken::Skipped(reason);
            }
            if let Some(frame) = ring.ready.take() {
                return Taken::Frame(frame);
            }
            if let Some(end) = ring.end.take() {
                // Later calls see a clean end.
                ring.end = Some(None);
                return Taken::End(end);
            }
            ring = self
                .shared
                .changed
                .wait_timeout(ring, STOP_POLL)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Returns a frame's buffer to the ring. Call it before the next [`Capture::take`]: the
    /// ring has one buffer for the caller.
    pub fn give_back(&self, frame: CapturedFrame) {
        let mut bytes = frame.bytes;
        bytes.clear();
        lock(&self.shared.ring).free.push(bytes);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // The thread may be blocked in a read; it notices the flag after its next frame.
        self.stop.store(true, Ordering::Relaxed);
        let counts = &self.shared.counts;
        log::info!(
            "capture from {} stopped: {} frames captured, {} dropped as stale, {} skipped",
            self.name,
            counts.captured.load(Ordering::Relaxed),
            counts.dropped.load(Ordering::Relaxed),
            counts.skipped.load(Ordering::Relaxed)
        );
    }
}

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // A panic elsewhere cannot leave the ring inconsistent: every change is one assignment.
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run_capture(
    source: &mut dyn FrameSource,
    filling: &mut Vec<u8>,
    shared: &Shared,
    stop: &AtomicBool,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let next = source.next_into(filling);
        match next {
            Next::Frame(captured) => {
                shared.counts.captured.fetch_add(1, Ordering::Relaxed);
                let mut ring = lock(&shared.ring);
                // Publish this frame; a frame still waiting is stale and gives its buffer
                // back for the next fill.
                let spare = match ring.ready.take() {
                    Some(stale) => {
                        shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
                        stale.bytes
                    }
                    // A buffer is always free here unless the caller keeps more than one
                    // frame; then a new one is allocated rather than stalling capture.
                    None => ring
                        .free
                        .pop()
                        .unwrap_or_else(|| Vec::with_capacity(filling.capacity())),
                };
                let bytes = std::mem::replace(filling, spare);
                ring.ready = Some(CapturedFrame {
                    bytes,
                    captured,
                    seq,
                });
                seq += 1;
                drop(ring);
                shared.changed.notify_all();
            }
            Next::Skipped(reason) => {
                shared.counts.skipped.fetch_add(1, Ordering::Relaxed);
                let mut ring = lock(&shared.ring);
                if ring.skips.len() < SKIP_QUEUE {
                    ring.skips.push_back(reason);
                } else {
                    shared
                        .counts
                        .skips_not_delivered
                        .fetch_add(1, Ordering::Relaxed);
                }
                drop(ring);
                shared.changed.notify_all();
            }
            Next::End(reason) => {
                lock(&shared.ring).end = Some(reason);
                shared.changed.notify_all();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Encoding;
    use std::sync::mpsc;
    use std::time::SystemTime;

    /// A source that hands out scripted results when the test allows it.
    struct Scripted {
        steps: mpsc::Receiver<Option<Vec<u8>>>,
    }

    impl FrameSource for Scripted {
        fn next_into(&mut self, out: &mut Vec<u8>) -> Next {
            match self.steps.recv() {
                Ok(Some(bytes)) if bytes.is_empty() => Next::Skipped("bad frame".into()),
                Ok(Some(bytes)) => {
                    out.clear();
                    out.extend_from_slice(&bytes);
                    Next::Frame(Captured {
                        time: SystemTime::UNIX_EPOCH,
                        encoding: Encoding::Jpeg,
                    })
                }
                Ok(None) | Err(_) => Next::End(None),
            }
        }

        fn name(&self) -> &str {
            "scripted"
        }
    }

    fn start() -> (Capture, mpsc::SyncSender<Option<Vec<u8>>>) {
        let (send, steps) = mpsc::sync_channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let capture = Capture::start(Box::new(Scripted { steps }), 16, stop);
        (capture, send)
    }

    fn wait_captured(capture: &Capture, n: u64) {
        while capture.counts().captured.load(Ordering::Relaxed) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn newest_frame_wins_and_stale_ones_are_counted() {
        let (capture, send) = start();
        for byte in 1..=3u8 {
            send.send(Some(vec![byte])).unwrap();
        }
        wait_captured(&capture, 3);
        let Taken::Frame(frame) = capture.take() else {
            panic!("expected a frame");
        };
        assert_eq!((frame.bytes.as_slice(), frame.seq), (&[3u8][..], 2));
        assert_eq!(capture.counts().dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn buffers_keep_their_capacity() {
        let (capture, send) = start();
        for byte in 1..=5u8 {
            send.send(Some(vec![byte])).unwrap();
            wait_captured(&capture, u64::from(byte));
            let Taken::Frame(frame) = capture.take() else {
                panic!("expected a frame");
            };
            assert!(frame.bytes.capacity() >= 16);
            capture.give_back(frame);
        }
    }

    #[test]
    fn skip_is_delivered_before_the_next_frame() {
        let (capture, send) = start();
        send.send(Some(Vec::new())).unwrap();
        send.send(Some(vec![7])).unwrap();
        wait_captured(&capture, 1);
        assert!(matches!(capture.take(), Taken::Skipped(_)));
    }

    #[test]
    fn end_follows_the_last_frame() {
        let (capture, send) = start();
        send.send(Some(vec![1])).unwrap();
        send.send(None).unwrap();
        assert!(matches!(capture.take(), Taken::Frame(_)));
        assert!(matches!(capture.take(), Taken::End(None)));
    }

    #[test]
    fn stop_flag_ends_a_wait() {
        let (send, steps) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let capture = Capture::start(Box::new(Scripted { steps }), 16, Arc::clone(&stop));
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(capture.take(), Taken::Stopped));
        drop(send);
    }
}
