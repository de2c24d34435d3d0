//! Frame sources: image files, byte streams and cameras.
//!
//! Stage zero of the data path: bytes → **frame** → tensor → activations → score → gate →
//! signal. Two kinds of source feed the pipeline:
//!
//! - Files: [`expand_sources`] turns command-line sources into an ordered list of files once
//!   at start-up; [`FileReader`] reads each file into a buffer allocated once, and
//!   [`decode_into`] decodes it into the caller's [`FrameBuf`].
//! - Streams and cameras: a [`FrameSource`] fills a caller-owned byte buffer with one
//!   encoded (JPEG) or raw frame at a time: concatenated JPEG or raw frames on stdin or a
//!   FIFO ([`stream`]), or a V4L2 device ([`v4l2`], cargo feature `v4l2`). The capture
//!   thread ([`capture`]) runs a source into a ring of preallocated buffers.
//!
//! # Important notes
//! - Limits are checked against the file size and the image header before any pixel is
//!   decoded, so a header that claims 100 000 × 100 000 pixels costs nothing.
//! - EXIF orientation is not applied: frames are scored as stored, the way the reference
//!   preprocessing (PIL without `exif_transpose`) reads them.
//!
//! [`FrameBuf`]: crate::frame::FrameBuf

pub mod capture;
mod decode;
mod files;
pub mod raw;
pub mod stream;
#[cfg(feature = "v4l2")]
pub mod v4l2;

pub use decode::{decode_into, DecodeError};
pub use files::{expand_sources, FileReader, ReadError, SourceError, IMAGE_EXTENSIONS};
pub use raw::RawFormat;
pub use stream::{MjpegStream, RawStream, StreamFormat};

use std::time::SystemTime;

/// Encoding of the bytes of one captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// A complete JPEG image (SOI to EOI).
    Jpeg,
    /// Uncompressed pixels, rows top to bottom without padding.
    Raw {
        /// Pixel layout.
        format: RawFormat,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Metadata of one captured frame, written by the source beside its bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Captured {
    /// The source's timestamp where it has one (V4L2 buffers), else the time the last byte
    /// of the frame was read.
    pub time: SystemTime,
    /// Encoding of the bytes.
    pub encoding: Encoding,
}

/// Reason a source skipped input, carried to the caller, which counts and logs it.
pub type SkipReason = Box<dyn std::error::Error + Send + Sync>;

/// What [`FrameSource::next_into`] produced.
#[derive(Debug)]
pub enum Next {
    /// A frame is in the caller's buffer.
    Frame(Captured),
    /// Input was skipped (a truncated, corrupt or oversized frame, or bytes between frames);
    /// the source resynchronized and can be called again. The buffer content is unspecified.
    Skipped(SkipReason),
    /// The source ended: end of stream, or a device that is gone for good. `None` for a clean
    /// end, else what went wrong (for example leftover bytes that are not a whole frame).
    End(Option<SkipReason>),
}

/// A source of encoded or raw frames: stdin, a FIFO or file stream, a camera.
///
/// Contract: `next_into` clears `out` and writes one frame into it without growing it past
/// the capacity the caller reserved at start-up (its `max_frame_bytes`), so the per-frame
/// path allocates nothing. It blocks until a frame, a skip or the end is available. Device
/// faults that can heal (a camera unplugged) are handled inside, with reconnection and logs,
/// rather than returned.
pub trait FrameSource: Send {
    /// Fills `out` with the next frame.
    fn next_into(&mut self, out: &mut Vec<u8>) -> Next;

    /// Names the source in logs and JSON lines (`-`, a path, `v4l2:///dev/video0`).
    fn name(&self) -> &str;
}

impl<S: FrameSource + ?Sized> FrameSource for Box<S> {
    fn next_into(&mut self, out: &mut Vec<u8>) -> Next {
        (**self).next_into(out)
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}
