//! Errors of the V4L2 source: start-up errors, capture faults and skipped frames.

use std::io;
use std::path::{Path, PathBuf};

// errno values from asm-generic/errno-base.h and errno.h, which x86_64, ARM and AArch64 share.
// gradgate does not depend on the libc crate, and std does not name these codes.
#[cfg(test)]
pub(super) const ENOENT: i32 = 2;
pub(super) const EIO: i32 = 5;
pub(super) const ENXIO: i32 = 6;
#[cfg(test)]
pub(super) const EACCES: i32 = 13;
pub(super) const ENODEV: i32 = 19;
pub(super) const EINVAL: i32 = 22;
pub(super) const ENOTTY: i32 = 25;
pub(super) const ENOSYS: i32 = 38;

/// Errors from configuring and opening a V4L2 camera, and from a capture failure that
/// reconnecting cannot heal.
///
/// Every message names the invalid value or the device and what to do, and already contains
/// its cause: `source()` returns `None`, so printing the chain does not repeat it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum V4l2Error {
    /// A configuration value is out of range.
    #[error("invalid V4L2 setting {setting} = {value}: expected {expected}")]
    InvalidConfig {
        /// The setting's name, as in [`super::V4l2Config`].
        setting: &'static str,
        /// The value as given.
        value: String,
        /// The valid values.
        expected: &'static str,
    },

    /// A pixel format name other than `mjpeg` or `yuyv`.
    #[error("invalid V4L2 pixel format \"{value}\": expected mjpeg or yuyv")]
    InvalidFormat {
        /// The text as given.
        value: String,
    },

    /// The device node does not exist.
    #[error(
        "camera {device} not found: check that the camera is connected and the path is right \
         (v4l2-ctl --list-devices lists the cameras and their nodes), and in a container pass \
         the device in with --device {device}",
        device = .device.display()
    )]
    NotFound {
        /// The device path.
        device: PathBuf,
    },

    /// The process may not open the device node.
    #[error(
        "permission denied opening camera {device}: add the user to the video group (sudo \
         usermod -aG video $USER, then log in again) and check the owner and mode of the \
         device (ls -l {device})",
        device = .device.display()
    )]
    PermissionDenied {
        /// The device path.
        device: PathBuf,
    },

    /// Another program is using the camera.
    #[error(
        "camera {device} is in use by another program: stop that program (fuser -v {device} \
         names it) and start again",
        device = .device.display()
    )]
    Busy {
        /// The device path.
        device: PathBuf,
    },

    /// Opening the device node failed for another reason.
    #[error("failed to open camera {device}: {cause}", device = .device.display())]
    Open {
        /// The device path.
        device: PathBuf,
        /// The operating system's error.
        cause: io::Error,
    },

    /// The path opens, but the V4L2 capability query fails on it (a regular file, another
    /// kind of device).
    #[error(
        "{device} is not a V4L2 device ({cause}): give a video device node such as /dev/video0",
        device = .device.display()
    )]
    NotV4l2 {
        /// The device path.
        device: PathBuf,
        /// The error from the capability query.
        cause: io::Error,
    },

    /// The device cannot capture single-planar video.
    #[error(
        "camera {device} ({card}, driver {driver}) cannot capture video through the \
         single-planar V4L2 API: {hint}",
        device = .device.display(),
        hint = not_capture_hint(.device, *.multiplanar)
    )]
    NotCapture {
        /// The device path.
        device: PathBuf,
        /// The driver's name (`uvcvideo`).
        driver: String,
        /// The card's name, as the driver reports it.
        card: String,
        /// Whether the device offers the multi-planar capture API instead.
        multiplanar: bool,
    },

    /// The device captures video but offers no streaming I/O.
    #[error(
        "camera {device} does not support streaming I/O with memory-mapped buffers: capture \
         through GStreamer's read() mode instead ({pipe})",
        device = .device.display(),
        pipe = gstreamer_hint(.device, " io-mode=rw")
    )]
    NoStreaming {
        /// The device path.
        device: PathBuf,
    },

    /// The device offers neither MJPEG nor YUYV.
    #[error(
        "camera {device} offers neither MJPEG nor YUYV (it offers {offered}): capture through \
         ffmpeg instead ({pipe})",
        device = .device.display(),
        offered = offered_list(.offered),
        pipe = pipe_hint(.device)
    )]
    UnsupportedFormat {
        /// The device path.
        device: PathBuf,
        /// The pixel formats the device lists, as fourcc strings (`GREY`, `Y16 `).
        offered: Vec<String>,
    },

    /// The driver replaced the requested pixel format with another.
    #[error(
        "camera {device} granted pixel format {granted} when {requested} was requested: choose \
         the other format (mjpeg or yuyv) or capture through ffmpeg ({pipe})",
        device = .device.display(),
        pipe = pipe_hint(.device)
    )]
    FormatNotGranted {
        /// The device path.
        device: PathBuf,
        /// The requested fourcc.
        requested: String,
        /// The fourcc the driver granted.
        granted: String,
    },

    /// The driver granted YUYV rows shorter than the width needs.
    #[error(
        "camera {device} granted YUYV rows of {stride} bytes for {width} pixels, which need at \
         least {row_bytes} bytes: request another size",
        device = .device.display(),
        row_bytes = u64::from(*.width) * 2
    )]
    InvalidStride {
        /// The device path.
        device: PathBuf,
        /// The granted width in pixels.
        width: u32,
        /// The granted row length in bytes (bytesperline).
        stride: u32,
    },

    /// A setup step (query, format, buffers, stream start) failed.
    #[error("failed to {step} on camera {device}: {cause}", device = .device.display())]
    Setup {
        /// The device path.
        device: PathBuf,
        /// The failed step, as a verb phrase (`set the pixel format and size`).
        step: &'static str,
        /// The operating system's error.
        cause: io::Error,
    },

    /// The v4l crate panicked while opening the device.
    #[error(
        "the v4l crate panicked while opening camera {device}: {message}",
        device = .device.display()
    )]
    Panicked {
        /// The device path.
        device: PathBuf,
        /// The panic message.
        message: String,
    },

    /// Capture failed with an error that reopening the device is not expected to heal.
    #[error("capture from {name} failed: {cause}; the camera source has stopped")]
    Capture {
        /// The source's name (`v4l2:///dev/video0`).
        name: String,
        /// The operating system's error.
        cause: io::Error,
    },
}

/// Maps an error from opening the device node to the variant whose message gives the fix.
pub(super) fn open_error(device: &Path, cause: io::Error) -> V4l2Error {
    let device = device.to_path_buf();
    match cause.kind() {
        io::ErrorKind::NotFound => V4l2Error::NotFound { device },
        io::ErrorKind::PermissionDenied => V4l2Error::PermissionDenied { device },
        io::ErrorKind::ResourceBusy => V4l2Error::Busy { device },
        _ => V4l2Error::Open { device, cause },
    }
}

/// Reason for skipping one camera frame. The stream goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameSkip {
    /// The frame does not fit in the caller's buffer, which is never grown.
    #[error(
        "frame {sequence} of {frame_bytes} bytes is larger than the frame buffer of {capacity} \
         bytes: raise the frame buffer size (max_frame_bytes) to at least {frame_bytes} bytes"
    )]
    Oversized {
        /// The driver's frame sequence number.
        sequence: u32,
        /// The frame's size in bytes.
        frame_bytes: usize,
        /// The capacity of the caller's buffer in bytes.
        capacity: usize,
    },

    /// The driver flagged the buffer as corrupt (`V4L2_BUF_FLAG_ERROR`).
    #[error("frame {sequence} is marked corrupt by the camera driver")]
    Corrupt {
        /// The driver's frame sequence number.
        sequence: u32,
    },

    /// The buffer came back with no bytes.
    #[error("frame {sequence} is empty")]
    Empty {
        /// The driver's frame sequence number.
        sequence: u32,
    },

    /// A raw frame contains fewer bytes than its size needs.
    #[error(
        "frame {sequence} contains {bytes_used} bytes, fewer than the {expected} bytes of a \
         {width}x{height} raw frame"
    )]
    Truncated {
        /// The driver's frame sequence number.
        sequence: u32,
        /// The bytes the driver filled.
        bytes_used: usize,
        /// The bytes the frame needs.
        expected: usize,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Failure of [`super::CameraDevice::dequeue_into`] to deliver a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CameraFault {
    /// The camera vanished or stalled (ENODEV, EIO or ENXIO, or no frame for a while): the
    /// source closes it and reconnects.
    #[error("camera lost: {0}")]
    Gone(io::Error),
    /// One frame is unusable; the stream goes on.
    #[error("frame skipped: {0}")]
    Skipped(FrameSkip),
    /// Capture failed in a way that reopening is not expected to heal: the source ends.
    #[error("capture failed: {0}")]
    Failed(io::Error),
}

impl CameraFault {
    /// Sorts an error from polling or dequeuing into [`CameraFault::Gone`] (ENODEV, EIO,
    /// ENXIO, a timeout) or [`CameraFault::Failed`] (anything else).
    pub fn from_io(err: io::Error) -> CameraFault {
        // An unplugged USB camera fails with EIO while the driver still has the queue (vb2
        // marks the queue as errored) and with ENODEV once the video node is unregistered.
        let vanished = matches!(err.raw_os_error(), Some(ENODEV | EIO | ENXIO))
            || err.kind() == io::ErrorKind::TimedOut;
        if vanished {
            CameraFault::Gone(err)
        } else {
            CameraFault::Failed(err)
        }
    }
}

/// Returns the ffmpeg pipe that replaces direct capture for cameras whose formats this source
/// cannot use. ffmpeg's v4l2 input needs streaming I/O, like this source.
fn pipe_hint(device: &Path) -> String {
    format!(
        "ffmpeg -f v4l2 -i {} -f mjpeg - | gradgate run -",
        device.display()
    )
}

/// Returns the GStreamer pipe for cameras without the single-planar API or streaming I/O. `-q` keeps gst-launch's status lines off stdout, which carries the frames.
fn gstreamer_hint(device: &Path, source_options: &str) -> String {
    format!(
        "gst-launch-1.0 -q v4l2src device={}{source_options} ! videoconvert ! jpegenc ! fdsink \
         | gradgate run -",
        device.display()
    )
}

fn offered_list(offered: &[String]) -> String {
    if offered.is_empty() {
        String::from("no format")
    } else {
        offered.join(", ")
    }
}

fn not_capture_hint(device: &Path, multiplanar: bool) -> String {
    if multiplanar {
        format!(
            "it offers only the multi-planar API, which this source does not support; capture \
             through GStreamer instead ({})",
            gstreamer_hint(device, "")
        )
    } else {
        String::from(
            "uvcvideo creates a second node for metadata for each USB camera, so try the \
             camera's other /dev/videoN (v4l2-ctl --list-devices lists them)",
        )
    }
}
