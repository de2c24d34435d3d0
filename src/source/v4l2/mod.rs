//! V4L2 cameras: USB and CSI cameras through Video4Linux2 (cargo feature `v4l2`).
//!
//! Stage zero of the data path: **source** → frame → tensor → activations → score → gate →
//! signal. [`V4l2Source`] is a [`FrameSource`]: each [`next_into`](FrameSource::next_into)
//! call copies one captured frame from the driver's memory-mapped buffers into the caller's
//! buffer, as [`Encoding::Jpeg`] for MJPEG or as [`Encoding::Raw`] with [`RawFormat::Yuyv`]
//! at the granted size, and never grows that buffer.
//!
//! Main types:
//! - [`V4l2Config`]: device node, pixel format ([`V4l2Format`]), size, frame rate, buffers.
//! - [`V4l2Source`]: opens the camera at start-up and reopens it when it vanishes.
//! - [`Granted`]: the format, size and rate the driver granted, which may differ from the
//!   request.
//! - [`CameraDevice`] and [`Clock`]: the hardware and the time source behind traits, so the
//!   reconnect logic runs in tests without a camera. [`V4l2Camera`] and [`SystemClock`] are
//!   the real ones.
//! - [`V4l2Error`] for start-up, [`CameraFault`] for capture, [`FrameSkip`] for one frame.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//!
//! use gradgate::source::v4l2::{V4l2Config, V4l2Format, V4l2Source};
//! use gradgate::source::{FrameSource, Next};
//!
//! let stop = Arc::new(AtomicBool::new(false)); // set by the SIGINT and SIGTERM handlers
//! let mut config = V4l2Config::new("/dev/video0");
//! config.format = V4l2Format::Mjpeg;
//! config.width = 1280;
//! config.height = 720;
//! config.fps = Some(15);
//! let mut camera = V4l2Source::open(&config, Arc::clone(&stop))?;
//! let mut frame = Vec::with_capacity(camera.granted().max_frame_bytes);
//! loop {
//!     match camera.next_into(&mut frame) {
//!         Next::Frame(captured) => println!("{} bytes, {:?}", frame.len(), captured.encoding),
//!         Next::Skipped(reason) => eprintln!("skipped: {reason}"),
//!         Next::End(_) => break, // the stop flag is set, or capture failed for good
//!     }
//! }
//! # Ok::<(), gradgate::source::v4l2::V4l2Error>(())
//! ```
//!
//! # Reconnecting
//! Start-up errors (a missing device, permission denied, no usable format) are returned by
//! [`V4l2Source::open`] and never retried. A camera is lost when it fails with ENODEV, EIO or
//! ENXIO after streaming (unplugged), or delivers no frame for [`STALL_TIMEOUT`] (stalled).
//! It is then closed and reopened after 0.5 s, then after 1 s, 2 s, 4 s and so on, up to
//! 30 s between attempts. Each attempt is logged: a warning with the error on failure, an
//! info line with the attempt count on success. Meanwhile `next_into` blocks, but checks the
//! stop flag at least every 100 ms and returns `Next::End(None)` once it is set. Other
//! capture errors end the source with `Next::End(Some(..))`.
//!
//! # Timestamps
//! uvcvideo and most other capture drivers stamp buffers with CLOCK_MONOTONIC and mark this
//! in the buffer flags. std cannot read CLOCK_MONOTONIC's raw value and gradgate does not
//! depend on the libc crate, so frame times are those timestamps shifted to the wall clock by
//! an estimated offset. The estimate is the smallest difference seen between the wall clock
//! at dequeue and the buffer timestamp. Frame times therefore keep the driver's spacing and
//! run late by the shortest timestamp-to-dequeue delay seen. A step of the wall clock (an NTP
//! sync) restarts the estimate. Buffers without a monotonic timestamp get the wall-clock time
//! at dequeue.
//!
//! # Important notes
//! - On a Raspberry Pi with a CSI camera under Raspberry Pi OS Bullseye or later, the camera
//!   is driven through libcamera and plain V4L2 capture gets no frames from it. Pipe
//!   rpicam-vid instead: `rpicam-vid -t 0 --codec mjpeg -o - | gradgate run -`.
//! - Jetson CSI cameras go through the Argus ISP, which only GStreamer's nvarguscamerasrc
//!   reads: `gst-launch-1.0 -q nvarguscamerasrc ! nvvidconv ! 'video/x-raw,format=I420' !
//!   jpegenc ! fdsink | gradgate run -` (`-q` keeps gst-launch's status lines off stdout).
//! - The caller's buffer must hold [`Granted::max_frame_bytes`]: larger frames are skipped
//!   with [`FrameSkip::Oversized`], never truncated.
//! - A consumer slower than the camera gets the oldest frames in the driver's queue, not the
//!   newest: the driver fills the queued buffers, then drops new frames until a buffer is
//!   handed back. The frame timestamps show the age.
//! - USB cameras may send MJPEG frames without Huffman tables, which the decoder then has to
//!   supply from the JPEG standard. zune-jpeg 0.5 does so only for frames that carry the
//!   `AVI1` APP0 marker.
//! - Opening a camera needs read and write access to its node: on most distributions,
//!   membership in the `video` group.
//! - The v4l crate generates its kernel bindings with bindgen at build time, so building
//!   this feature needs libclang and, for cross builds, the target's kernel headers
//!   (Debian: libclang-dev and linux-libc-dev for the target architecture).

mod camera;
mod copy;
mod error;
mod timestamp;

pub use camera::{V4l2Camera, STALL_TIMEOUT};
pub use error::{CameraFault, FrameSkip, V4l2Error};

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::source::{Captured, FrameSource, Next};
#[cfg(doc)]
use crate::source::{Encoding, RawFormat};

/// Default number of capture buffers: one being copied while the driver fills the others.
pub const DEFAULT_BUFFERS: u32 = 4;

/// Maximum number of buffers in a V4L2 queue (`VIDEO_MAX_FRAME` in linux/videodev2.h).
pub const MAX_BUFFERS: u32 = 32;

/// Maximum time `next_into` blocks before it checks the stop flag again. Shorter costs more
/// wake-ups while the camera is idle or gone; longer delays shutdown on SIGINT or SIGTERM.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Delay between losing the camera and the first reconnect attempt, doubled after each
/// failed attempt up to [`MAX_RECONNECT_DELAY`]. A USB camera that was only reset is back
/// within this; one that was unplugged costs one failed open per attempt.
pub const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Maximum delay between two reconnect attempts: a camera plugged back in is found within
/// this, and a camera that stays away costs two failed opens and two warnings a minute.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Pixel format requested from the camera.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum V4l2Format {
    /// Motion JPEG: one complete JPEG image per frame (fourcc `MJPG` or `JPEG`).
    #[default]
    Mjpeg,
    /// Packed 4:2:2 YUV, two bytes per pixel (fourcc `YUYV`).
    Yuyv,
}

impl V4l2Format {
    /// Returns the fourcc codes that deliver this format, preferred first.
    fn fourccs(self) -> &'static [[u8; 4]] {
        const MJPEG: [[u8; 4]; 2] = [*b"MJPG", *b"JPEG"];
        const YUYV: [[u8; 4]; 1] = [*b"YUYV"];
        match self {
            V4l2Format::Mjpeg => &MJPEG,
            V4l2Format::Yuyv => &YUYV,
        }
    }
}

impl fmt::Display for V4l2Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            V4l2Format::Mjpeg => "MJPEG",
            V4l2Format::Yuyv => "YUYV",
        })
    }
}

impl FromStr for V4l2Format {
    type Err = V4l2Error;

    /// Parses `mjpeg` (or `mjpg`) and `yuyv`, in any case.
    fn from_str(text: &str) -> Result<V4l2Format, V4l2Error> {
        match text.to_ascii_lowercase().as_str() {
            "mjpeg" | "mjpg" => Ok(V4l2Format::Mjpeg),
            "yuyv" => Ok(V4l2Format::Yuyv),
            _ => Err(V4l2Error::InvalidFormat {
                value: text.to_string(),
            }),
        }
    }
}

/// Camera device and capture request. The driver may grant another size or frame rate, as
/// [`Granted`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4l2Config {
    /// Device node, such as `/dev/video0`.
    pub device: PathBuf,
    /// Pixel format to request. A camera without it is captured in the other format, with a
    /// warning.
    pub format: V4l2Format,
    /// Requested width in pixels.
    pub width: u32,
    /// Requested height in pixels.
    pub height: u32,
    /// Requested frame rate in frames per second; `None` keeps the camera's current rate.
    pub fps: Option<u32>,
    /// Number of memory-mapped capture buffers, 2 to [`MAX_BUFFERS`]. More buffers ride out
    /// longer consumer stalls but deliver older frames when the consumer is slow.
    pub buffers: u32,
}

impl V4l2Config {
    /// Returns a configuration for `device`: MJPEG at 640×480, the camera's current frame
    /// rate, [`DEFAULT_BUFFERS`] buffers.
    pub fn new(device: impl Into<PathBuf>) -> V4l2Config {
        V4l2Config {
            device: device.into(),
            format: V4l2Format::Mjpeg,
            width: 640,
            height: 480,
            fps: None,
            buffers: DEFAULT_BUFFERS,
        }
    }

    /// Checks the values that no camera accepts: an empty path or one with a NUL byte, a zero
    /// size or frame rate, a buffer count outside 2 to [`MAX_BUFFERS`].
    pub fn validate(&self) -> Result<(), V4l2Error> {
        let path = self.device.as_os_str();
        if path.is_empty() || path.as_bytes().contains(&0) {
            return Err(V4l2Error::InvalidConfig {
                setting: "device",
                value: format!("{:?}", self.device),
                expected: "a device node path without NUL bytes, such as /dev/video0",
            });
        }
        for (setting, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 {
                return Err(V4l2Error::InvalidConfig {
                    setting,
                    value: value.to_string(),
                    expected: "a size of at least 1 pixel",
                });
            }
        }
        if self.fps == Some(0) {
            return Err(V4l2Error::InvalidConfig {
                setting: "fps",
                value: String::from("0"),
                expected: "at least 1 frame per second, or no value for the camera's own rate",
            });
        }
        if !(2..=MAX_BUFFERS).contains(&self.buffers) {
            return Err(V4l2Error::InvalidConfig {
                setting: "buffers",
                value: self.buffers.to_string(),
                expected: "2 to 32 buffers",
            });
        }
        Ok(())
    }
}

/// Capture settings the driver granted when the camera was last opened.
#[derive(Clone, Debug, PartialEq)]
pub struct Granted {
    /// Pixel format of the frames.
    pub format: V4l2Format,
    /// The fourcc behind `format` (`MJPG`, `JPEG` or `YUYV`).
    pub fourcc: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Largest frame the source can deliver, in bytes: the driver's size limit for MJPEG, the
    /// packed frame size for YUYV. The caller's buffer needs at least this capacity.
    pub max_frame_bytes: usize,
    /// Frame rate in frames per second, where the driver reports it.
    pub fps: Option<f64>,
    /// Buffers taking part in capture.
    pub buffers: u32,
}

/// A camera that captures into caller buffers: the seam between [`V4l2Source`]'s reconnect
/// logic and the hardware. [`V4l2Camera`] is the V4L2 implementation; tests script a fake.
pub trait CameraDevice: Send {
    /// Opens the device and starts streaming, closing it first if it is open. Returns what
    /// the driver granted.
    fn open(&mut self) -> Result<Granted, V4l2Error>;

    /// Stops streaming and releases the device. Does nothing when it is closed.
    fn close(&mut self);

    /// Waits up to `wait` for the next frame and copies it into `out`.
    ///
    /// `out` is cleared and filled without growing past its capacity. Returns `Ok(None)` when
    /// no frame came within `wait`, and [`CameraFault::Gone`] when the device is closed.
    fn dequeue_into(
        &mut self,
        out: &mut Vec<u8>,
        wait: Duration,
    ) -> Result<Option<Captured>, CameraFault>;
}

/// Time source and sleep of the reconnect loop; tests substitute a virtual clock.
pub trait Clock: Send {
    /// Returns the current monotonic time.
    fn now(&self) -> Instant;

    /// Blocks the calling thread for `duration`.
    fn sleep(&self, duration: Duration);
}

/// The real clock: [`Instant::now`] and [`std::thread::sleep`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A camera as a [`FrameSource`], reconnecting when the camera vanishes.
///
/// [`open`](V4l2Source::open) opens the device once and returns start-up errors.
/// [`next_into`](FrameSource::next_into) then blocks until a frame, a skipped frame or the
/// end. While the camera is gone it retries with growing delays (see the module docs) and
/// checks the stop flag at least every [`STOP_CHECK_INTERVAL`].
pub struct V4l2Source<D = V4l2Camera, C = SystemClock> {
    device: D,
    clock: C,
    stop: Arc<AtomicBool>,
    /// `v4l2://` and the device path, for logs and JSON lines.
    name: String,
    /// Settings granted at the last successful open.
    granted: Granted,
    link: Link,
    /// Frames delivered and frames skipped, for the log line at the end.
    frames: u64,
    skipped: u64,
    /// Successful reconnects, for the log line at the end.
    reconnects: u64,
}

/// Whether the camera streams.
#[derive(Clone, Copy, Debug)]
enum Link {
    Up,
    /// Lost: closed and waiting for the next reconnect attempt.
    Down {
        /// When the camera was lost.
        since: Instant,
        /// Failed reconnect attempts so far.
        failed: u32,
        /// When the next attempt is due.
        due: Instant,
    },
    /// Capture failed for good: `next_into` returns `Next::End(None)` from now on.
    Ended,
}

impl V4l2Source {
    /// Opens the camera that `config` names and starts streaming.
    ///
    /// `stop` ends the source: once it is set, `next_into` returns `Next::End(None)` within
    /// [`STOP_CHECK_INTERVAL`] plus the duration of a reconnect attempt in progress, even while
    /// the camera is gone. Errors in the configuration or in opening the device are returned
    /// here and never retried.
    pub fn open(config: &V4l2Config, stop: Arc<AtomicBool>) -> Result<V4l2Source, V4l2Error> {
        let name = format!("v4l2://{}", config.device.display());
        let camera = V4l2Camera::new(config.clone())?;
        V4l2Source::with_device(name, camera, SystemClock, stop)
    }
}

impl<D: CameraDevice, C: Clock> V4l2Source<D, C> {
    /// Opens `device` and wraps it as a source named `name`, with `clock` timing the
    /// reconnect attempts. Returns the error of this first open, which is not retried.
    pub fn with_device(
        name: impl Into<String>,
        mut device: D,
        clock: C,
        stop: Arc<AtomicBool>,
    ) -> Result<V4l2Source<D, C>, V4l2Error> {
        let granted = device.open()?;
        Ok(V4l2Source {
            device,
            clock,
            stop,
            name: name.into(),
            granted,
            link: Link::Up,
            frames: 0,
            skipped: 0,
            reconnects: 0,
        })
    }

    /// Returns what the driver granted at the last successful open. A reconnect may change it
    /// when another camera appears under the same path; each frame's [`Captured::encoding`]
    /// carries the size in force.
    pub fn granted(&self) -> &Granted {
        &self.granted
    }

    /// Closes the device and schedules the first reconnect attempt.
    fn lose_camera(&mut self, err: &std::io::Error) {
        self.device.close();
        let now = self.clock.now();
        log::warn!(
            "camera {} lost: {err}; reconnecting in {:?}",
            self.name,
            FIRST_RECONNECT_DELAY
        );
        self.link = Link::Down {
            since: now,
            failed: 0,
            due: now + FIRST_RECONNECT_DELAY,
        };
    }

    /// Sleeps until the next reconnect attempt is due, at most [`STOP_CHECK_INTERVAL`], and
    /// makes the attempt when it is.
    fn wait_or_reconnect(&mut self, since: Instant, failed: u32, due: Instant) {
        let now = self.clock.now();
        if now < due {
            self.clock.sleep((due - now).min(STOP_CHECK_INTERVAL));
            return;
        }

        let attempt = failed + 1;
        match self.device.open() {
            Ok(granted) => {
                log::info!(
                    "camera {} reconnected on attempt {attempt}, {:.1} s after it was lost",
                    self.name,
                    now.saturating_duration_since(since).as_secs_f64()
                );
                self.granted = granted;
                self.reconnects += 1;
                self.link = Link::Up;
            }
            Err(err) => {
                let delay = reconnect_delay(attempt);
                log::warn!(
                    "camera {} reconnect attempt {attempt} failed: {err}; next attempt in {:?}",
                    self.name,
                    delay
                );
                self.link = Link::Down {
                    since,
                    failed: attempt,
                    due: now + delay,
                };
            }
        }
    }
}

/// Returns the delay before the next reconnect attempt after `failed` failed attempts:
/// [`FIRST_RECONNECT_DELAY`] doubled `failed` times, at most [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(failed: u32) -> Duration {
    let factor = 1u32.checked_shl(failed).unwrap_or(u32::MAX);
    FIRST_RECONNECT_DELAY
        .saturating_mul(factor)
        .min(MAX_RECONNECT_DELAY)
}

impl<D: CameraDevice, C: Clock> FrameSource for V4l2Source<D, C> {
    fn next_into(&mut self, out: &mut Vec<u8>) -> Next {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Next::End(None);
            }
            match self.link {
                Link::Up => match self.device.dequeue_into(out, STOP_CHECK_INTERVAL) {
                    Ok(Some(captured)) => {
                        self.frames += 1;
                        return Next::Frame(captured);
                    }
                    Ok(None) => {}
                    Err(CameraFault::Skipped(skip)) => {
                        self.skipped += 1;
                        return Next::Skipped(Box::new(skip));
                    }
                    Err(CameraFault::Gone(err)) => self.lose_camera(&err),
                    Err(CameraFault::Failed(cause)) => {
                        // Returned, not logged: the caller logs the end of its source.
                        self.device.close();
                        self.link = Link::Ended;
                        let name = self.name.clone();
                        return Next::End(Some(Box::new(V4l2Error::Capture { name, cause })));
                    }
                },
                Link::Down { since, failed, due } => self.wait_or_reconnect(since, failed, due),
                Link::Ended => return Next::End(None),
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl<D, C> fmt::Debug for V4l2Source<D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V4l2Source")
            .field("name", &self.name)
            .field("granted", &self.granted)
            .field("link", &self.link)
            .field("frames", &self.frames)
            .field("skipped", &self.skipped)
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

impl<D, C> Drop for V4l2Source<D, C> {
    fn drop(&mut self) {
        log::info!(
            "camera {} stopped: {} frames, {} skipped, {} reconnects",
            self.name,
            self.frames,
            self.skipped,
            self.reconnects
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::copy::copy_frame;
    use super::error::{open_error, EACCES, EINVAL, EIO, ENODEV, ENOENT};
    use super::*;
    use crate::source::{Encoding, RawFormat};

    /// A virtual clock: `sleep` advances it at once and records the duration.
    #[derive(Clone)]
    struct FakeClock {
        state: Arc<Mutex<ClockState>>,
    }

    struct ClockState {
        start: Instant,
        elapsed: Duration,
        sleeps: Vec<Duration>,
        /// Sets the flag during the sleep with this 1-based number.
        stop_at_sleep: Option<(usize, Arc<AtomicBool>)>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            let state = ClockState {
                start: Instant::now(),
                elapsed: Duration::ZERO,
                sleeps: Vec::new(),
                stop_at_sleep: None,
            };
            FakeClock {
                state: Arc::new(Mutex::new(state)),
            }
        }

        fn elapsed(&self) -> Duration {
            self.state.lock().unwrap().elapsed
        }

        fn sleeps(&self) -> Vec<Duration> {
            self.state.lock().unwrap().sleeps.clone()
        }

        /// Moves the clock on without a sleep, as a blocking device call does.
        fn advance(&self, duration: Duration) {
            self.state.lock().unwrap().elapsed += duration;
        }

        fn set_stop_at_sleep(&self, sleep_number: usize, stop: Arc<AtomicBool>) {
            self.state.lock().unwrap().stop_at_sleep = Some((sleep_number, stop));
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            let state = self.state.lock().unwrap();
            state.start + state.elapsed
        }

        fn sleep(&self, duration: Duration) {
            let mut state = self.state.lock().unwrap();
            state.elapsed += duration;
            state.sleeps.push(duration);
            if let Some((sleep_number, stop)) = &state.stop_at_sleep {
                if state.sleeps.len() == *sleep_number {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// One scripted result of `dequeue_into`.
    enum Step {
        Frame {
            bytes: Vec<u8>,
            encoding: Encoding,
            time: SystemTime,
        },
        /// No frame within the wait.
        Idle,
        /// Sets the stop flag, then no frame within the wait.
        SetStop,
        /// Fails with this errno.
        Error(i32),
    }

    /// Script of the fake camera and record of the calls to it, shared with the test.
    struct Script {
        steps: VecDeque<Step>,
        /// Outcome of each open, start-up included: `Ok` or an errno. Opens past the end fail
        /// with ENOENT, as for an unplugged camera.
        opens: VecDeque<Result<(), i32>>,
        /// Clock readings at each open, since the clock started.
        open_times: Vec<Duration>,
        closes: usize,
    }

    /// A camera that plays a [`Script`].
    struct FakeCamera {
        script: Arc<Mutex<Script>>,
        clock: FakeClock,
        stop: Arc<AtomicBool>,
        sequence: u32,
    }

    const FAKE_PATH: &str = "/dev/fake-video0";

    fn fake_granted() -> Granted {
        Granted {
            format: V4l2Format::Mjpeg,
            fourcc: String::from("MJPG"),
            width: 640,
            height: 480,
            max_frame_bytes: 614_400,
            fps: Some(30.0),
            buffers: 4,
        }
    }

    impl CameraDevice for FakeCamera {
        fn open(&mut self) -> Result<Granted, V4l2Error> {
            let mut script = self.script.lock().unwrap();
            script.open_times.push(self.clock.elapsed());
            match script.opens.pop_front().unwrap_or(Err(ENOENT)) {
                Ok(()) => Ok(fake_granted()),
                Err(errno) => Err(open_error(
                    Path::new(FAKE_PATH),
                    io::Error::from_raw_os_error(errno),
                )),
            }
        }

        fn close(&mut self) {
            self.script.lock().unwrap().closes += 1;
        }

        fn dequeue_into(
            &mut self,
            out: &mut Vec<u8>,
            wait: Duration,
        ) -> Result<Option<Captured>, CameraFault> {
            let step = self.script.lock().unwrap().steps.pop_front();
            match step.expect("the fake camera's script ran out") {
                Step::Frame {
                    bytes,
                    encoding,
                    time,
                } => {
                    self.sequence += 1;
                    copy_frame(&bytes, self.sequence, out).map_err(CameraFault::Skipped)?;
                    Ok(Some(Captured { time, encoding }))
                }
                Step::Idle => {
                    self.clock.advance(wait);
                    Ok(None)
                }
                Step::SetStop => {
                    self.stop.store(true, Ordering::Relaxed);
                    self.clock.advance(wait);
                    Ok(None)
                }
                Step::Error(errno) => {
                    Err(CameraFault::from_io(io::Error::from_raw_os_error(errno)))
                }
            }
        }
    }

    struct Harness {
        source: Result<V4l2Source<FakeCamera, FakeClock>, V4l2Error>,
        script: Arc<Mutex<Script>>,
        clock: FakeClock,
        stop: Arc<AtomicBool>,
    }

    fn harness(steps: Vec<Step>, opens: Vec<Result<(), i32>>) -> Harness {
        let script = Arc::new(Mutex::new(Script {
            steps: steps.into(),
            opens: opens.into(),
            open_times: Vec::new(),
            closes: 0,
        }));
        let clock = FakeClock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let camera = FakeCamera {
            script: Arc::clone(&script),
            clock: clock.clone(),
            stop: Arc::clone(&stop),
            sequence: 0,
        };
        let name = format!("v4l2://{FAKE_PATH}");
        let source = V4l2Source::with_device(name, camera, clock.clone(), Arc::clone(&stop));
        Harness {
            source,
            script,
            clock,
            stop,
        }
    }

    fn jpeg_frame(bytes: &[u8], unix_ms: u64) -> Step {
        Step::Frame {
            bytes: bytes.to_vec(),
            encoding: Encoding::Jpeg,
            time: UNIX_EPOCH + Duration::from_millis(unix_ms),
        }
    }

    fn frame_time(next: Next) -> SystemTime {
        match next {
            Next::Frame(captured) => captured.time,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn frames_keep_encoding_and_time() {
        let yuyv = Encoding::Raw {
            format: RawFormat::Yuyv,
            width: 2,
            height: 1,
        };
        let steps = vec![
            jpeg_frame(&[0xFF, 0xD8, 0xFF, 0xD9], 1_000),
            Step::Idle,
            Step::Frame {
                bytes: vec![16, 128, 16, 128],
                encoding: yuyv,
                time: UNIX_EPOCH + Duration::from_millis(1_033),
            },
        ];
        let mut harness = harness(steps, vec![Ok(())]);
        let source = harness.source.as_mut().unwrap();
        let mut out = Vec::with_capacity(64);

        let first = source.next_into(&mut out);
        assert!(matches!(
            first,
            Next::Frame(Captured { encoding: Encoding::Jpeg, time })
                if time == UNIX_EPOCH + Duration::from_millis(1_000)
        ));
        assert_eq!(out, [0xFF, 0xD8, 0xFF, 0xD9]);

        let second = source.next_into(&mut out);
        assert!(matches!(
            second,
            Next::Frame(Captured { encoding, time })
                if encoding == yuyv && time == UNIX_EPOCH + Duration::from_millis(1_033)
        ));
        assert_eq!(out, [16, 128, 16, 128]);
        assert_eq!(source.name(), "v4l2:///dev/fake-video0");
    }

    #[test]
    fn vanished_camera_reconnects_with_doubling_delays() {
        let steps = vec![
            jpeg_frame(&[1], 1_000),
            Step::Error(ENODEV),
            jpeg_frame(&[2], 9_000),
        ];
        let opens = vec![Ok(()), Err(ENOENT), Err(ENOENT), Err(EACCES), Ok(())];
        let mut harness = harness(steps, opens);
        let source = harness.source.as_mut().unwrap();
        let mut out = Vec::with_capacity(16);

        frame_time(source.next_into(&mut out));
        let resumed = frame_time(source.next_into(&mut out));

        assert_eq!(resumed, UNIX_EPOCH + Duration::from_millis(9_000));
        assert_eq!(out, [2]);
        let script = harness.script.lock().unwrap();
        let ms: Vec<u128> = script.open_times.iter().map(|t| t.as_millis()).collect();
        // Start-up, then 0.5 s after the loss and 1 s, 2 s, 4 s after each failed attempt.
        assert_eq!(ms, [0, 500, 1_500, 3_500, 7_500]);
        assert_eq!(script.closes, 1);
        let sleeps = harness.clock.sleeps();
        assert!(sleeps.iter().all(|sleep| *sleep <= STOP_CHECK_INTERVAL));
        assert_eq!(
            sleeps.iter().sum::<Duration>(),
            Duration::from_millis(7_500)
        );
    }

    #[test]
    fn reconnect_delay_doubles_up_to_cap() {
        let delays_ms: Vec<u128> = (1..=9)
            .map(|failed| reconnect_delay(failed).as_millis())
            .collect();

        assert_eq!(
            delays_ms,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(reconnect_delay(0), FIRST_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(u32::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn stop_flag_ends_wait_for_lost_camera() {
        let mut harness = harness(vec![Step::Error(EIO)], vec![Ok(())]);
        harness
            .clock
            .set_stop_at_sleep(3, Arc::clone(&harness.stop));
        let source = harness.source.as_mut().unwrap();
        let mut out = Vec::with_capacity(16);

        let next = source.next_into(&mut out);

        assert!(matches!(next, Next::End(None)));
        let sleeps = harness.clock.sleeps();
        assert_eq!(sleeps, [STOP_CHECK_INTERVAL; 3]);
        // Only the start-up open: the first reconnect attempt was due at 0.5 s.
        assert_eq!(harness.script.lock().unwrap().open_times.len(), 1);
    }

    #[test]
    fn stop_flag_from_other_thread_ends_wait() {
        let script = Arc::new(Mutex::new(Script {
            steps: VecDeque::from([Step::Error(ENODEV)]),
            opens: VecDeque::from([Ok(())]),
            open_times: Vec::new(),
            closes: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let camera = FakeCamera {
            script: Arc::clone(&script),
            clock: FakeClock::new(),
            stop: Arc::clone(&stop),
            sequence: 0,
        };
        let mut source =
            V4l2Source::with_device("v4l2:///dev/fake", camera, SystemClock, Arc::clone(&stop))
                .unwrap();
        let setter = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let mut out = Vec::with_capacity(16);

        let next = source.next_into(&mut out);

        setter.join().unwrap();
        assert!(matches!(next, Next::End(None)));
    }

    #[test]
    fn stop_flag_ends_wait_between_frames() {
        let steps = vec![Step::Idle, Step::SetStop, jpeg_frame(&[1], 1_000)];
        let mut harness = harness(steps, vec![Ok(())]);
        let source = harness.source.as_mut().unwrap();
        let mut out = Vec::with_capacity(16);

        let next = source.next_into(&mut out);

        assert!(matches!(next, Next::End(None)));
        assert_eq!(harness.script.lock().unwrap().steps.len(), 1);
    }

    #[test]
    fn oversized_frame_is_skipped_without_growing_buffer() {
        let mut out = Vec::with_capacity(64);
        let capacity = out.capacity();
        let steps = vec![
            jpeg_frame(&vec![7; capacity + 36], 1_000),
            jpeg_frame(&[1, 2, 3], 1_033),
        ];
        let mut harness = harness(steps, vec![Ok(())]);
        let source = harness.source.as_mut().unwrap();

        let skipped = source.next_into(&mut out);
        let Next::Skipped(reason) = skipped else {
            panic!("expected a skip, got {skipped:?}");
        };
        let message = reason.to_string();
        assert!(
            message.contains(&format!("{} bytes", capacity + 36)),
            "{message}"
        );
        assert!(
            message.contains(&format!("frame buffer of {capacity} bytes")),
            "{message}"
        );
        assert_eq!(out.capacity(), capacity);

        frame_time(source.next_into(&mut out));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn unhealable_capture_error_ends_source() {
        let steps = vec![Step::Error(EINVAL)];
        let mut harness = harness(steps, vec![Ok(())]);
        let source = harness.source.as_mut().unwrap();
        let mut out = Vec::with_capacity(16);

        let next = source.next_into(&mut out);
        let Next::End(Some(err)) = next else {
            panic!("expected the end with an error, got {next:?}");
        };
        let message = err.to_string();
        assert!(message.contains("v4l2:///dev/fake-video0"), "{message}");
        assert!(message.contains("os error 22"), "{message}");
        assert!(matches!(source.next_into(&mut out), Next::End(None)));
        assert_eq!(harness.script.lock().unwrap().open_times.len(), 1);
    }

    #[test]
    fn startup_open_error_is_returned_not_retried() {
        let harness = harness(Vec::new(), vec![Err(ENOENT)]);

        let err = harness.source.expect_err("the start-up open must fail");

        assert!(matches!(&err, V4l2Error::NotFound { device } if device == Path::new(FAKE_PATH)));
        assert_eq!(harness.script.lock().unwrap().open_times.len(), 1);
        assert!(harness.clock.sleeps().is_empty());
    }

    #[test]
    fn missing_device_error_names_path() {
        // /dev/video0 on a machine without a camera; elsewhere a node that never exists.
        let path = if Path::new("/dev/video0").exists() {
            "/dev/video-gradgate-missing"
        } else {
            "/dev/video0"
        };
        let stop = Arc::new(AtomicBool::new(false));

        let err = V4l2Source::open(&V4l2Config::new(path), stop).unwrap_err();

        assert!(matches!(&err, V4l2Error::NotFound { device } if device == Path::new(path)));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("camera {path} not found")),
            "{message}"
        );
        assert!(message.contains("v4l2-ctl --list-devices"), "{message}");
    }

    #[test]
    fn regular_file_is_not_a_v4l2_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let stop = Arc::new(AtomicBool::new(false));

        let err = V4l2Source::open(&V4l2Config::new(file.path()), stop).unwrap_err();

        assert!(
            matches!(&err, V4l2Error::NotV4l2 { device, .. } if device == file.path()),
            "{err:?}"
        );
        assert!(err.to_string().contains("is not a V4L2 device"), "{err}");
    }

    #[test]
    fn permission_denied_error_names_video_group() {
        let err = open_error(
            Path::new("/dev/video0"),
            io::Error::from_raw_os_error(EACCES),
        );

        assert!(matches!(err, V4l2Error::PermissionDenied { .. }));
        let message = err.to_string();
        assert!(
            message.contains("permission denied opening camera /dev/video0"),
            "{message}"
        );
        assert!(message.contains("video group"), "{message}");
        assert!(message.contains("ls -l /dev/video0"), "{message}");
    }

    #[test]
    fn unsupported_format_error_lists_offered_formats() {
        let err = V4l2Error::UnsupportedFormat {
            device: PathBuf::from("/dev/video2"),
            offered: vec![String::from("GREY"), String::from("Y16 ")],
        };

        let message = err.to_string();

        assert!(message.contains("it offers GREY, Y16 "), "{message}");
        assert!(
            message.contains("ffmpeg -f v4l2 -i /dev/video2 -f mjpeg - | gradgate run -"),
            "{message}"
        );
    }

    #[test]
    fn invalid_config_values_are_rejected() {
        let cases = [
            ("device", V4l2Config::new("")),
            ("device", V4l2Config::new("/dev/vid\0eo0")),
            (
                "width",
                V4l2Config {
                    width: 0,
                    ..V4l2Config::new("/dev/video0")
                },
            ),
            (
                "height",
                V4l2Config {
                    height: 0,
                    ..V4l2Config::new("/dev/video0")
                },
            ),
            (
                "fps",
                V4l2Config {
                    fps: Some(0),
                    ..V4l2Config::new("/dev/video0")
                },
            ),
            (
                "buffers",
                V4l2Config {
                    buffers: 1,
                    ..V4l2Config::new("/dev/video0")
                },
            ),
            (
                "buffers",
                V4l2Config {
                    buffers: 33,
                    ..V4l2Config::new("/dev/video0")
                },
            ),
        ];

        for (expected, config) in cases {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, V4l2Error::InvalidConfig { setting, .. } if setting == expected),
                "{config:?}"
            );
        }
        assert!(V4l2Config::new("/dev/video0").validate().is_ok());
    }

    #[test]
    fn format_names_parse_in_any_case() {
        assert_eq!("mjpeg".parse::<V4l2Format>().unwrap(), V4l2Format::Mjpeg);
        assert_eq!("MJPG".parse::<V4l2Format>().unwrap(), V4l2Format::Mjpeg);
        assert_eq!("YUYV".parse::<V4l2Format>().unwrap(), V4l2Format::Yuyv);
        let err = "h264".parse::<V4l2Format>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid V4L2 pixel format \"h264\": expected mjpeg or yuyv"
        );
    }
}
