//! [`V4l2Camera`]: the real [`CameraDevice`], on the v4l crate (0.14) with memory-mapped
//! buffers.

use std::any::Any;
use std::fmt;
use std::io;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use v4l::buffer::{Flags as BufferFlags, Metadata, Type as BufferType};
use v4l::capability::Flags as CapabilityFlags;
use v4l::device::Handle;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::parameters::Capabilities as ParameterCapabilities;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC, Fraction};

use super::copy::{copy_frame, copy_rows, RowLayout};
use super::error::{open_error, EINVAL, ENODEV, ENOSYS, ENOTTY};
use super::timestamp::WallClockMapper;
use super::{CameraDevice, CameraFault, FrameSkip, Granted, V4l2Config, V4l2Error, V4l2Format};
use crate::source::{Captured, Encoding, RawFormat};

/// `POLLIN` from asm-generic/poll.h, the same on every Linux architecture.
const POLLIN: i16 = 0x0001;

/// Maximum time a streaming camera may deliver no frame before it counts as stalled and is
/// reopened. Long enough for the first frame after the stream starts and for a camera that
/// slows to a few frames per second under auto exposure in the dark.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit on the v4l crate's own poll inside `next()`. That poll runs only after
/// [`V4l2Camera::dequeue_into`]'s poll reported a frame ready, so it returns at once unless
/// the driver misbehaves. Running into the limit counts as a stall.
const INNER_POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// A V4L2 capture device: the real [`CameraDevice`].
///
/// [`open`](CameraDevice::open) checks the capabilities, negotiates format, size and frame
/// rate, maps the buffers and starts streaming; [`dequeue_into`](CameraDevice::dequeue_into)
/// copies one buffer into the caller's and hands the buffer back to the driver.
pub struct V4l2Camera {
    config: V4l2Config,
    /// The streaming device; `None` while closed.
    open: Option<OpenCamera>,
    /// Outlives reopening, because the wall-clock offset does not depend on the device.
    timestamps: WallClockMapper,
}

/// A device between a successful open and its close.
struct OpenCamera {
    stream: MmapStream<'static>,
    /// The device's file handle, polled with a timeout before each dequeue.
    handle: Arc<Handle>,
    /// Keeps the device open; the stream shares its file handle.
    _device: Device,
    encoding: Encoding,
    /// Row layout of YUYV frames, which are packed when copied; `None` for MJPEG.
    rows: Option<RowLayout>,
    /// When the last frame was dequeued, or streaming started: the stall clock.
    last_frame: Instant,
    /// Whether the timestamp type of this stream's buffers has been logged, once per open.
    timestamps_logged: bool,
}

impl V4l2Camera {
    /// Checks the configuration; opens nothing.
    pub fn new(config: V4l2Config) -> Result<V4l2Camera, V4l2Error> {
        config.validate()?;
        Ok(V4l2Camera {
            config,
            open: None,
            timestamps: WallClockMapper::default(),
        })
    }
}

impl CameraDevice for V4l2Camera {
    fn open(&mut self) -> Result<Granted, V4l2Error> {
        self.close();
        // NOTE: the v4l crate 0.14 unwraps driver data (non-UTF-8 card names, unknown
        // colorspace codes), so a panic is turned into an error here rather than ending the
        // capture thread during a reconnect. It still aborts the process if the stream's own
        // Drop panics while unwinding.
        let config = &self.config;
        let opened = panic::catch_unwind(AssertUnwindSafe(|| open_camera(config)));
        let (open, granted) = match opened {
            Ok(result) => result?,
            Err(payload) => {
                return Err(V4l2Error::Panicked {
                    device: self.config.device.clone(),
                    message: panic_message(payload.as_ref()),
                })
            }
        };
        self.open = Some(open);
        Ok(granted)
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take() {
            release(open, &self.config.device);
            log::debug!("camera {} closed", self.config.device.display());
        }
    }

    fn dequeue_into(
        &mut self,
        out: &mut Vec<u8>,
        wait: Duration,
    ) -> Result<Option<Captured>, CameraFault> {
        let Some(open) = self.open.as_mut() else {
            return Err(CameraFault::Gone(io::Error::new(
                io::ErrorKind::NotConnected,
                "the camera is closed",
            )));
        };

        // Wait for a filled buffer, so that the stop flag is checked at least every `wait`.
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        match open.handle.poll(POLLIN, wait_ms) {
            Ok(0) if open.last_frame.elapsed() >= STALL_TIMEOUT => {
                return Err(CameraFault::Gone(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no frame for {} s", STALL_TIMEOUT.as_secs()),
                )));
            }
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(err) => return Err(CameraFault::from_io(err)),
        }

        // Hand the previous buffer back to the driver and take the filled one. A poll that
        // reported an error (POLLERR) ends here too, with the error from the ioctl.
        let (bytes, meta) = CaptureStream::next(&mut open.stream).map_err(CameraFault::from_io)?;
        let wall_now = SystemTime::now();
        let mono_now = Instant::now();
        open.last_frame = mono_now;
        let meta: Metadata = *meta;
        if !open.timestamps_logged {
            open.timestamps_logged = true;
            log::info!(
                "camera {}: buffer timestamps {}",
                self.config.device.display(),
                timestamp_kind(meta.flags)
            );
        }

        if meta.flags.contains(BufferFlags::ERROR) {
            return Err(CameraFault::Skipped(FrameSkip::Corrupt {
                sequence: meta.sequence,
            }));
        }
        let used = &bytes[..bytes.len().min(meta.bytesused as usize)];
        let copied = match open.rows {
            Some(layout) => copy_rows(used, layout, meta.sequence, out),
            None => copy_frame(used, meta.sequence, out),
        };
        copied.map_err(CameraFault::Skipped)?;

        let time = self
            .timestamps
            .frame_time(monotonic_timestamp(&meta), wall_now, mono_now);
        Ok(Some(Captured {
            time,
            encoding: open.encoding,
        }))
    }
}

impl fmt::Debug for V4l2Camera {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V4l2Camera")
            .field("config", &self.config)
            .field("open", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for V4l2Camera {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens the device and starts streaming: capabilities, format and size, frame rate, buffers.
fn open_camera(config: &V4l2Config) -> Result<(OpenCamera, Granted), V4l2Error> {
    let path = config.device.as_path();
    let device = Device::with_path(path).map_err(|err| open_error(path, err))?;
    check_capabilities(&device, path)?;

    let (format, fourcc, granted) = negotiate_format(&device, config)?;
    let (encoding, rows) = frame_layout(path, format, &granted)?;
    let max_frame_bytes = match rows {
        Some(layout) => layout.packed_bytes(),
        None => match granted.size {
            // NOTE: a driver that leaves sizeimage unset gets the size of the frame as YUYV, an
            // estimate that compressed frames should not exceed. Larger frames are skipped.
            0 => granted.width as usize * granted.height as usize * 2,
            size => size as usize,
        },
    };

    let fps = set_frame_rate(&device, config);

    let (stream, buffers) = start_stream(&device, config)?;
    log::info!(
        "camera {} streaming: {buffers} buffers, frames up to {max_frame_bytes} bytes",
        path.display()
    );

    let open = OpenCamera {
        stream,
        handle: device.handle(),
        _device: device,
        encoding,
        rows,
        last_frame: Instant::now(),
        timestamps_logged: false,
    };
    let granted = Granted {
        format,
        fourcc: fourcc_text(fourcc),
        width: granted.width,
        height: granted.height,
        max_frame_bytes,
        fps,
        buffers,
    };
    Ok((open, granted))
}

/// Returns a closure that wraps an error of the setup step `step` (a verb phrase).
fn setup_error(path: &Path, step: &'static str) -> impl FnOnce(io::Error) -> V4l2Error {
    let device = path.to_path_buf();
    move |cause| V4l2Error::Setup {
        device,
        step,
        cause,
    }
}

/// Checks that the device captures single-planar video with streaming I/O, and logs what
/// it is.
fn check_capabilities(device: &Device, path: &Path) -> Result<(), V4l2Error> {
    let caps = device
        .query_caps()
        .map_err(|cause| match cause.raw_os_error() {
            // The kernel returns ENOTTY for a file without V4L2 ioctls, and qemu-user returns
            // ENOSYS for an ioctl it cannot translate.
            Some(ENOTTY | EINVAL | ENOSYS) => V4l2Error::NotV4l2 {
                device: path.to_path_buf(),
                cause,
            },
            _ => setup_error(path, "query the capabilities")(cause),
        })?;
    if !caps.capabilities.contains(CapabilityFlags::VIDEO_CAPTURE) {
        return Err(V4l2Error::NotCapture {
            device: path.to_path_buf(),
            driver: caps.driver,
            card: caps.card,
            multiplanar: caps
                .capabilities
                .contains(CapabilityFlags::VIDEO_CAPTURE_MPLANE),
        });
    }
    if !caps.capabilities.contains(CapabilityFlags::STREAMING) {
        return Err(V4l2Error::NoStreaming {
            device: path.to_path_buf(),
        });
    }
    log::info!(
        "camera {}: {}, driver {}, bus {}",
        path.display(),
        caps.card,
        caps.driver,
        caps.bus
    );
    Ok(())
}

/// Chooses the pixel format and sets it with the requested size, which the driver may
/// adjust. Returns the format, its fourcc and the driver's granted format.
fn negotiate_format(
    device: &Device,
    config: &V4l2Config,
) -> Result<(V4l2Format, [u8; 4], Format), V4l2Error> {
    let path = config.device.as_path();
    let offered: Vec<[u8; 4]> = device
        .enum_formats()
        .map_err(setup_error(path, "list the pixel formats"))?
        .iter()
        .map(|description| description.fourcc.repr)
        .collect();
    let Some((format, fourcc)) = choose_format(config.format, &offered) else {
        return Err(V4l2Error::UnsupportedFormat {
            device: path.to_path_buf(),
            offered: offered.iter().map(|code| fourcc_text(*code)).collect(),
        });
    };
    if format != config.format {
        log::warn!(
            "camera {} offers no {}; capturing {format} instead",
            path.display(),
            config.format
        );
    }

    let requested = Format::new(config.width, config.height, FourCC::new(&fourcc));
    let granted = device.set_format(&requested).map_err(|cause| {
        if cause.kind() == io::ErrorKind::ResourceBusy {
            V4l2Error::Busy {
                device: path.to_path_buf(),
            }
        } else {
            setup_error(path, "set the pixel format and size")(cause)
        }
    })?;
    if granted.fourcc.repr != fourcc {
        return Err(V4l2Error::FormatNotGranted {
            device: path.to_path_buf(),
            requested: fourcc_text(fourcc),
            granted: fourcc_text(granted.fourcc.repr),
        });
    }
    log::info!(
        "camera {}: requested {}x{} {}, granted {}x{} {}",
        path.display(),
        config.width,
        config.height,
        fourcc_text(fourcc),
        granted.width,
        granted.height,
        fourcc_text(granted.fourcc.repr)
    );
    Ok((format, fourcc, granted))
}

/// Maps the capture buffers, queues them and starts streaming. Returns the stream and the
/// number of buffers taking part.
fn start_stream(
    device: &Device,
    config: &V4l2Config,
) -> Result<(MmapStream<'static>, u32), V4l2Error> {
    let path = config.device.as_path();
    // Design: the v4l crate's `next()` queues the buffer it returned last before it dequeues
    // the next one, starting with index 0, and starts the stream on its first call, blocking
    // without a timeout. Queuing every buffer but 0 and starting the stream here lets every
    // `next()` call follow a poll with a timeout, and no buffer is ever queued twice.
    let mut stream = MmapStream::with_buffers(device, BufferType::VideoCapture, config.buffers)
        .map_err(setup_error(path, "allocate the capture buffers"))?;
    stream.set_timeout(INNER_POLL_TIMEOUT);
    let buffers = queue_all_but_first(&mut stream, config.buffers)
        .map_err(setup_error(path, "queue the capture buffers"))?;
    stream
        .start()
        .map_err(setup_error(path, "start streaming"))?;
    Ok((stream, buffers))
}

/// Picks the pixel format to capture: the requested one if the camera offers it, else the
/// other supported one. MJPEG matches the `MJPG` and the `JPEG` fourcc.
pub(super) fn choose_format(
    requested: V4l2Format,
    offered: &[[u8; 4]],
) -> Option<(V4l2Format, [u8; 4])> {
    let order = match requested {
        V4l2Format::Mjpeg => [V4l2Format::Mjpeg, V4l2Format::Yuyv],
        V4l2Format::Yuyv => [V4l2Format::Yuyv, V4l2Format::Mjpeg],
    };
    order.into_iter().find_map(|format| {
        format
            .fourccs()
            .iter()
            .find(|code| offered.contains(code))
            .map(|code| (format, *code))
    })
}

/// Returns the encoding of captured frames and, for YUYV, the row layout to pack.
fn frame_layout(
    path: &Path,
    format: V4l2Format,
    granted: &Format,
) -> Result<(Encoding, Option<RowLayout>), V4l2Error> {
    match format {
        V4l2Format::Mjpeg => Ok((Encoding::Jpeg, None)),
        V4l2Format::Yuyv => {
            let row_bytes = granted.width as usize * 2;
            let stride = match granted.stride {
                0 => row_bytes,
                stride => stride as usize,
            };
            if stride < row_bytes {
                return Err(V4l2Error::InvalidStride {
                    device: path.to_path_buf(),
                    width: granted.width,
                    stride: granted.stride,
                });
            }
            let encoding = Encoding::Raw {
                format: RawFormat::Yuyv,
                width: granted.width,
                height: granted.height,
            };
            let layout = RowLayout {
                width: granted.width,
                height: granted.height,
                row_bytes,
                stride,
            };
            Ok((encoding, Some(layout)))
        }
    }
}

/// Sets the requested frame rate where the camera supports it, and returns the rate in
/// force in frames per second. A camera that cannot set it keeps capturing at its current
/// rate, with a warning.
fn set_frame_rate(device: &Device, config: &V4l2Config) -> Option<f64> {
    let path = config.device.display();
    let current = match device.params() {
        Ok(params) => params,
        Err(err) => {
            log::warn!("failed to read the frame rate of camera {path}: {err}");
            return None;
        }
    };
    let Some(requested) = config.fps else {
        let fps = frames_per_second(current.interval);
        log::info!("camera {path}: frame rate {}", fps_text(fps));
        return fps;
    };
    if !current
        .capabilities
        .contains(ParameterCapabilities::TIME_PER_FRAME)
    {
        let fps = frames_per_second(current.interval);
        log::warn!(
            "camera {path} cannot set its frame rate: requested {requested} fps, running at {}",
            fps_text(fps)
        );
        return fps;
    }
    match device.set_params(&Parameters::with_fps(requested)) {
        Ok(granted) => {
            let fps = frames_per_second(granted.interval);
            log::info!(
                "camera {path}: requested {requested} fps, granted {}",
                fps_text(fps)
            );
            fps
        }
        Err(err) => {
            let fps = frames_per_second(current.interval);
            log::warn!(
                "failed to set camera {path} to {requested} fps: {err}; running at {}",
                fps_text(fps)
            );
            fps
        }
    }
}

/// Converts a frame interval in seconds to frames per second; `None` for an unset interval.
fn frames_per_second(interval: Fraction) -> Option<f64> {
    if interval.numerator == 0 || interval.denominator == 0 {
        return None;
    }
    Some(f64::from(interval.denominator) / f64::from(interval.numerator))
}

fn fps_text(fps: Option<f64>) -> String {
    match fps {
        Some(fps) => format!("{fps:.2} fps"),
        None => String::from("an unreported frame rate"),
    }
}

/// Queues buffers 1 to `requested − 1` and returns how many buffers take part in capture,
/// buffer 0 included. A driver that allocated fewer buffers than requested rejects the first
/// index past them with EINVAL, which ends the queuing. At least buffers 0 and 1 are needed.
fn queue_all_but_first(stream: &mut MmapStream<'static>, requested: u32) -> io::Result<u32> {
    let mut queued = 0;
    for index in 1..requested as usize {
        match CaptureStream::queue(stream, index) {
            Ok(()) => queued += 1,
            Err(err) if err.raw_os_error() == Some(EINVAL) && queued > 0 => break,
            Err(err) => return Err(err),
        }
    }
    Ok(queued + 1)
}

/// Stops streaming and releases the buffers and the file handle.
fn release(open: OpenCamera, device: &Path) {
    // NOTE: the v4l crate 0.14 panics in the stream's Drop when VIDIOC_STREAMOFF fails with
    // anything but ENODEV. Stopping first finds that case, in which the stream is leaked
    // (its mapped buffers and its reference to the file handle) instead of dropped.
    let OpenCamera { mut stream, .. } = open;
    match stream.stop() {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(ENODEV) => {}
        Err(err) => {
            log::warn!(
                "failed to stop streaming on camera {}: {err}; its buffers stay mapped",
                device.display()
            );
            mem::forget(stream);
        }
    }
}

/// Returns the buffer's timestamp when the driver took it from CLOCK_MONOTONIC, else `None`.
pub(super) fn monotonic_timestamp(meta: &Metadata) -> Option<Duration> {
    if meta.flags & BufferFlags::TIMESTAMP_MASK != BufferFlags::TIMESTAMP_MONOTONIC {
        return None;
    }
    // time_t is i32 on 32-bit ARM and i64 elsewhere, so the conversion is needed on some
    // targets only.
    #[allow(clippy::useless_conversion)]
    let (sec, usec) = (
        i64::from(meta.timestamp.sec),
        i64::from(meta.timestamp.usec),
    );
    let sec = u64::try_from(sec).ok()?;
    let usec = u32::try_from(usec).ok().filter(|usec| *usec < 1_000_000)?;
    let timestamp = Duration::new(sec, usec * 1000);
    (!timestamp.is_zero()).then_some(timestamp)
}

/// Describes the clock and the moment of a buffer's timestamp, from its flags.
fn timestamp_kind(flags: BufferFlags) -> &'static str {
    let monotonic = flags & BufferFlags::TIMESTAMP_MASK == BufferFlags::TIMESTAMP_MONOTONIC;
    let start_of_exposure = flags & BufferFlags::TSTAMP_SRC_MASK == BufferFlags::TSTAMP_SRC_SOE;
    match (monotonic, start_of_exposure) {
        (true, true) => "from the monotonic clock at the start of exposure",
        (true, false) => "from the monotonic clock at the end of the frame",
        (false, _) => "not from the monotonic clock, so frames get the time they are dequeued",
    }
}

/// Formats a fourcc for messages, non-printable bytes as `?`.
fn fourcc_text(code: [u8; 4]) -> String {
    code.iter()
        .map(|&byte| {
            if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '?'
            }
        })
        .collect()
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        String::from("no message")
    }
}

#[cfg(test)]
mod tests {
    use v4l::Timestamp;

    use super::*;

    fn metadata(flags: BufferFlags, timestamp: Timestamp) -> Metadata {
        Metadata {
            flags,
            timestamp,
            ..Metadata::default()
        }
    }

    #[test]
    fn requested_format_is_preferred() {
        let offered = [*b"YUYV", *b"MJPG"];

        let chosen = choose_format(V4l2Format::Yuyv, &offered);

        assert_eq!(chosen, Some((V4l2Format::Yuyv, *b"YUYV")));
    }

    #[test]
    fn jpeg_fourcc_counts_as_mjpeg() {
        let chosen = choose_format(V4l2Format::Mjpeg, &[*b"JPEG"]);

        assert_eq!(chosen, Some((V4l2Format::Mjpeg, *b"JPEG")));
    }

    #[test]
    fn other_supported_format_is_the_fallback() {
        let chosen = choose_format(V4l2Format::Mjpeg, &[*b"GREY", *b"YUYV"]);

        assert_eq!(chosen, Some((V4l2Format::Yuyv, *b"YUYV")));
    }

    #[test]
    fn camera_without_mjpeg_or_yuyv_has_no_format() {
        let chosen = choose_format(V4l2Format::Mjpeg, &[*b"GREY", *b"Y16 ", *b"H264"]);

        assert_eq!(chosen, None);
    }

    #[test]
    fn monotonic_timestamp_is_read() {
        let meta = metadata(
            BufferFlags::TIMESTAMP_MONOTONIC | BufferFlags::TSTAMP_SRC_SOE,
            Timestamp::new(5, 250_000),
        );

        assert_eq!(
            monotonic_timestamp(&meta),
            Some(Duration::from_millis(5_250))
        );
    }

    #[test]
    fn copied_or_invalid_timestamps_are_ignored() {
        let copied = metadata(BufferFlags::TIMESTAMP_COPY, Timestamp::new(5, 0));
        let unknown = metadata(BufferFlags::TIMESTAMP_UNKNOWN, Timestamp::new(5, 0));
        let zero = metadata(BufferFlags::TIMESTAMP_MONOTONIC, Timestamp::new(0, 0));
        let bad_usec = metadata(
            BufferFlags::TIMESTAMP_MONOTONIC,
            Timestamp::new(5, 1_000_000),
        );
        let negative = metadata(BufferFlags::TIMESTAMP_MONOTONIC, Timestamp::new(-1, 0));

        assert_eq!(monotonic_timestamp(&copied), None);
        assert_eq!(monotonic_timestamp(&unknown), None);
        assert_eq!(monotonic_timestamp(&zero), None);
        assert_eq!(monotonic_timestamp(&bad_usec), None);
        assert_eq!(monotonic_timestamp(&negative), None);
    }

    #[test]
    fn fourcc_text_masks_unprintable_bytes() {
        assert_eq!(fourcc_text(*b"Y16 "), "Y16 ");
        assert_eq!(fourcc_text([b'A', 0, 0x80, b'B']), "A??B");
    }
}
