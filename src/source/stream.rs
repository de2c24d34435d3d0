//! Frames from a byte stream: stdin (`-`), a FIFO or a file.
//!
//! Two stream layouts are read, both as [`FrameSource`]s that copy one frame at a time into
//! the caller's buffer:
//!
//! - [`MjpegStream`]: concatenated JPEG images, what `ffmpeg … -f mjpeg -` and GStreamer's
//!   `jpegenc ! fdsink` write. Frames are found by walking the JPEG marker structure, not by
//!   searching for byte pairs, so an EXIF thumbnail's markers stay inside its frame.
//! - [`RawStream`]: back-to-back raw frames of one size and [`RawFormat`], what
//!   `ffmpeg … -f rawvideo -pix_fmt yuyv422 -` writes.
//!
//! ```no_run
//! use gradgate::source::stream::MjpegStream;
//! use gradgate::source::{FrameSource, Next};
//!
//! let max_frame_bytes = 8 << 20;
//! let mut source = MjpegStream::new(std::io::stdin(), "-".to_string(), max_frame_bytes);
//! let mut frame = Vec::with_capacity(max_frame_bytes);
//! loop {
//!     match source.next_into(&mut frame) {
//!         Next::Frame(_) => println!("JPEG of {} bytes", frame.len()),
//!         Next::Skipped(reason) => eprintln!("skipped: {reason}"),
//!         Next::End(_) => break,
//!     }
//! }
//! ```
//!
//! # Important notes
//! - The caller's buffer must have the capacity it reserved at start-up: frames larger than
//!   `min(max_frame_bytes, capacity)` are skipped rather than grown into.
//! - A reader that blocks (a FIFO with no writer yet) blocks `next_into`; run the source on
//!   its own thread.

use super::raw::{parse_raw_format, RawError, RawFormat, SizeErrorKind, UnknownFormatError};
use super::{Captured, Encoding, FrameSource, Next};
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::time::SystemTime;

/// Size of the read buffer of an [`MjpegStream`], in bytes: one read can take a whole pipe
/// buffer (64 KiB by default on Linux).
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Layout of the frames on a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamFormat {
    /// Concatenated JPEG images.
    Mjpeg,
    /// Back-to-back raw frames of one size.
    Raw(RawFormat),
}

impl fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamFormat::Mjpeg => f.write_str("mjpeg"),
            StreamFormat::Raw(format) => fmt::Display::fmt(format, f),
        }
    }
}

impl FromStr for StreamFormat {
    type Err = UnknownFormatError;

    /// Parses `mjpeg` or a raw format name (see [`RawFormat`]), ignoring ASCII case.
    fn from_str(input: &str) -> Result<StreamFormat, UnknownFormatError> {
        if input.eq_ignore_ascii_case("mjpeg") {
            return Ok(StreamFormat::Mjpeg);
        }
        parse_raw_format(input)
            .map(StreamFormat::Raw)
            .ok_or_else(|| UnknownFormatError {
                input: input.to_string(),
                accepted: STREAM_FORMAT_NAMES,
            })
    }
}

/// Names accepted by [`StreamFormat::from_str`], for messages.
const STREAM_FORMAT_NAMES: &str = "mjpeg, rgb24, bgr24, yuyv (or yuyv422), nv12";

/// Error from setting up a stream source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The frame size is invalid for the raw format (zero, or odd where chroma is shared).
    #[error(transparent)]
    InvalidSize(RawError),
    /// One raw frame would be larger than the frame buffer limit.
    #[error(
        "raw {width}×{height} {format} frames are {bytes} bytes each, above the frame limit \
         of {max_frame_bytes} bytes; lower the frame size or raise --max-pixels and \
         --max-file-bytes"
    )]
    FrameTooLarge {
        /// The pixel layout.
        format: RawFormat,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Bytes of one frame.
        bytes: u128,
        /// The limit in force, in bytes.
        max_frame_bytes: usize,
    },
}

/// Why a stream ended early; returned in [`Next::End`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The reader failed with an error other than `Interrupted`.
    #[error("reading stream '{name}' failed after {offset} bytes: {error}")]
    Read {
        /// The source name.
        name: String,
        /// Bytes read from the stream before the error.
        offset: u64,
        /// The reader's error.
        error: io::Error,
    },
    /// The stream ended inside a raw frame.
    #[error(
        "stream ended with {bytes} bytes, not a whole {width}×{height} {format} frame of \
         {frame_bytes} bytes"
    )]
    PartialRawFrame {
        /// Bytes of the incomplete frame.
        bytes: usize,
        /// The pixel layout.
        format: RawFormat,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Bytes of one whole frame.
        frame_bytes: usize,
    },
    /// The caller's buffer cannot hold one raw frame without growing.
    #[error(
        "frame buffer capacity is {capacity} bytes, less than one {width}×{height} {format} \
         frame of {frame_bytes} bytes; allocate it with max_frame_bytes of capacity"
    )]
    BufferTooSmall {
        /// Capacity of the caller's buffer in bytes.
        capacity: usize,
        /// The pixel layout.
        format: RawFormat,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Bytes of one frame.
        frame_bytes: usize,
    },
}

/// Input an [`MjpegStream`] skipped; returned in [`Next::Skipped`].
///
/// Offsets count bytes from the start of the stream; `bytes` is the length of what was
/// skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MjpegSkip {
    /// Bytes outside any frame: before the first start-of-image marker, between frames, after
    /// the last one, or after a frame found invalid.
    #[error(
        "skipped {bytes} bytes at stream offset {offset} that are not part of a JPEG frame; \
         check that the producer writes MJPEG (ffmpeg -f mjpeg)"
    )]
    Garbage {
        /// Stream offset of the first skipped byte.
        offset: u64,
        /// Bytes skipped.
        bytes: u64,
    },
    /// A start-of-image marker (FF D8) came before the frame's end-of-image marker.
    #[error(
        "skipped a truncated JPEG frame of {bytes} bytes at stream offset {offset}: a new \
         start-of-image marker (FF D8) came before its end-of-image marker (FF D9)"
    )]
    Truncated {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// Bytes of the frame before the new start-of-image marker.
        bytes: u64,
    },
    /// The stream ended inside a frame.
    #[error(
        "skipped a truncated JPEG frame of {bytes} bytes at stream offset {offset}: the \
         stream ended before its end-of-image marker (FF D9)"
    )]
    EndOfStream {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// Bytes of the frame before the end of the stream.
        bytes: u64,
    },
    /// A marker that cannot appear at its place in a frame.
    #[error(
        "skipped an invalid JPEG frame at stream offset {offset}: marker FF {marker:02X} at \
         byte {at} of the frame cannot appear {}; resynchronizing at the next start-of-image \
         marker",
        if *.after_scan { "after a scan" } else { "before the first scan" }
    )]
    InvalidMarker {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// The marker code (the byte after FF).
        marker: u8,
        /// Offset of the marker code within the frame.
        at: u64,
        /// True when the marker follows entropy-coded data.
        after_scan: bool,
    },
    /// A byte other than FF where a marker must start.
    #[error(
        "skipped an invalid JPEG frame at stream offset {offset}: byte {byte:02X} at byte \
         {at} of the frame where a marker (FF xx) must start; resynchronizing at the next \
         start-of-image marker"
    )]
    ExpectedMarker {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// The byte found.
        byte: u8,
        /// Its offset within the frame.
        at: u64,
    },
    /// A marker segment whose length field is below its own 2 bytes.
    #[error(
        "skipped an invalid JPEG frame at stream offset {offset}: segment FF {marker:02X} \
         at byte {at} of the frame declares length {length}, below the minimum of 2"
    )]
    InvalidLength {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// The segment's marker code.
        marker: u8,
        /// Offset of the length's last byte within the frame.
        at: u64,
        /// The declared length.
        length: u16,
    },
    /// An end-of-image marker before any start-of-scan marker: a frame with no image data.
    #[error(
        "skipped a JPEG frame of {bytes} bytes at stream offset {offset} with no image data: \
         its end-of-image marker (FF D9) came before any start-of-scan marker (FF DA)"
    )]
    NoScan {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// Bytes of the frame.
        bytes: u64,
    },
    /// The frame outgrew the frame buffer limit. The rest of it is read and dropped.
    #[error(
        "skipped a JPEG frame at stream offset {offset}: {bytes} bytes read so far, above \
         the frame limit of {limit} bytes; raise --max-file-bytes if frames this large are \
         expected"
    )]
    TooLarge {
        /// Stream offset of the frame's start-of-image marker.
        offset: u64,
        /// Bytes of the frame read when the limit was crossed: more than `limit`, by up to
        /// the rest of the read that crossed it.
        bytes: u64,
        /// The limit in force, in bytes.
        limit: usize,
    },
}

/// Concatenated JPEG frames read from a byte stream.
///
/// Each frame runs from a start-of-image marker (SOI, FF D8) to its end-of-image marker
/// (EOI, FF D9). Marker segments are skipped by their length fields, so an EXIF thumbnail
/// with its own SOI and EOI inside APP1 stays part of the frame. In entropy-coded data FF 00
/// is a stuffed byte and FF D0–D7 are restart markers; any other marker ends the scan.
///
/// Bad input is reported once as [`Next::Skipped`] with an [`MjpegSkip`], and parsing
/// resynchronizes at the next SOI. Bad input is: bytes outside frames, a frame cut by a new
/// SOI or by the end of the stream, a marker that cannot appear where it is, and a frame
/// larger than the limit. Reads that fail with `Interrupted` are retried; other read errors
/// end the stream with [`StreamEnd::Read`].
///
/// Allocation: the 64 KiB read buffer is allocated in [`MjpegStream::new`]. `next_into`
/// allocates only the [`MjpegSkip`] box of a skip.
///
/// NOTE: a frame cut inside a marker segment (rather than in its entropy-coded data, where
/// most of a frame's bytes are) can hide the next frame's SOI inside the segment's length,
/// so the next frame is lost too.
pub struct MjpegStream<R: Read + Send> {
    reader: R,
    name: String,
    max_frame_bytes: usize,
    /// Bytes `buf[pos..end]` are read from `reader` but not yet parsed.
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// True once the reader returned end of file or an error; it is not read again.
    reader_done: bool,
    parser: MjpegParser,
}

impl<R: Read + Send> MjpegStream<R> {
    /// Creates a source reading JPEG frames of at most `max_frame_bytes` from `reader`.
    /// `name` names the source in messages (`-` for stdin, or a path).
    pub fn new(reader: R, name: String, max_frame_bytes: usize) -> MjpegStream<R> {
        log::debug!("{name}: reading MJPEG frames of up to {max_frame_bytes} bytes");
        MjpegStream {
            reader,
            name,
            max_frame_bytes,
            buf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            end: 0,
            reader_done: false,
            parser: MjpegParser::new(),
        }
    }

    /// Refills the read buffer. Returns false at end of file; a read error is returned.
    fn fill(&mut self) -> Result<bool, io::Error> {
        loop {
            match self.reader.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    // A reader that reports more bytes than the buffer's length breaks the
                    // `Read` contract. Clamp the count instead of panicking on the slice.
                    self.pos = 0;
                    self.end = n.min(self.buf.len());
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

impl<R: Read + Send> fmt::Debug for MjpegStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MjpegStream")
            .field("name", &self.name)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("offset", &self.parser.offset)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Send> FrameSource for MjpegStream<R> {
    fn next_into(&mut self, out: &mut Vec<u8>) -> Next {
        out.clear();
        let limit = self.max_frame_bytes.min(out.capacity());
        if let Some(event) = self.parser.start_call(out, limit) {
            return event.into_next();
        }

        loop {
            if self.pos == self.end {
                if self.reader_done {
                    return match self.parser.finish() {
                        Some(skip) => Next::Skipped(Box::new(skip)),
                        None => Next::End(None),
                    };
                }
                match self.fill() {
                    Ok(true) => {}
                    Ok(false) => self.reader_done = true,
                    Err(error) => {
                        self.reader_done = true;
                        self.parser.abandon();
                        return Next::End(Some(Box::new(StreamEnd::Read {
                            name: self.name.clone(),
                            offset: self.parser.offset,
                            error,
                        })));
                    }
                }
                continue;
            }

            let (consumed, event) = self.parser.feed(&self.buf[self.pos..self.end], out, limit);
            self.pos += consumed;
            if let Some(event) = event {
                return event.into_next();
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

// JPEG marker codes (ITU-T T.81, table B.1), the byte after FF.
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;
const STUFFED_ZERO: u8 = 0x00;
const FILL: u8 = 0xFF;

/// Returns true for markers followed by a 2-byte length that may appear in a frame at this
/// point: before the first scan any segment marker (C0–CF, DA–FE), after a scan only those
/// allowed between scans (DHT, DAC, SOS, DQT, DNL, DRI, APPn, COM).
fn is_segment_marker(code: u8, after_scan: bool) -> bool {
    if after_scan {
        matches!(code, 0xC4 | 0xCC | 0xDA..=0xDD | 0xE0..=0xEF | 0xFE)
    } else {
        matches!(code, 0xC0..=0xCF | 0xDA..=0xFE)
    }
}

/// Parser position in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between frames, looking for an SOI.
    Seek,
    /// An SOI was consumed just before a skip was returned; the next call starts its frame.
    FrameStart,
    /// Inside a frame.
    Frame(Part),
}

/// Parser position inside a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Expecting the FF that starts the next marker.
    MarkerStart,
    /// After one or more FF bytes, expecting the marker code.
    MarkerCode,
    /// Expecting the high byte of the segment length of `marker`.
    LengthHigh { marker: u8 },
    /// Expecting the low byte of the segment length of `marker`.
    LengthLow { marker: u8, high: u8 },
    /// Inside the body of the segment of `marker`, with `remaining` bytes to go (at least 1).
    Body { marker: u8, remaining: u16 },
    /// Entropy-coded data after a scan header; `after_ff` when the last byte was FF.
    Entropy { after_ff: bool },
}

/// Result of parsing up to a frame or a skip.
#[derive(Debug)]
enum Event {
    /// A whole frame is in the output buffer.
    Frame,
    /// Input was skipped.
    Skip(MjpegSkip),
}

impl Event {
    fn into_next(self) -> Next {
        match self {
            Event::Frame => Next::Frame(Captured {
                time: SystemTime::now(),
                encoding: Encoding::Jpeg,
            }),
            Event::Skip(skip) => Next::Skipped(Box::new(skip)),
        }
    }
}

/// A push parser that splits concatenated JPEGs, independent of any reader.
///
/// Invariants between calls of [`MjpegStream::next_into`]: the phase is `Seek`,
/// `FrameStart`, or `Frame` with `discarding` set, because a frame that is still being
/// copied only stops the parse when it completes or is skipped.
#[derive(Debug)]
struct MjpegParser {
    phase: Phase,
    /// Bytes consumed from the stream so far.
    offset: u64,
    /// Stream offset where the current search for an SOI began; bytes from here to the next
    /// SOI are garbage.
    seek_start: u64,
    /// True when the last byte seen while seeking was FF, which may start an SOI.
    pending_ff: bool,
    /// Stream offset of the current frame's SOI.
    frame_start: u64,
    /// Bytes of the current frame consumed so far, copied or not.
    frame_len: u64,
    /// True once the current frame crossed the limit: its bytes are counted, not copied,
    /// and its end is silent because the skip was already returned.
    discarding: bool,
    /// True once the current frame's first scan header was read.
    after_scan: bool,
}

impl MjpegParser {
    fn new() -> MjpegParser {
        MjpegParser {
            phase: Phase::Seek,
            offset: 0,
            seek_start: 0,
            pending_ff: false,
            frame_start: 0,
            frame_len: 0,
            discarding: false,
            after_scan: false,
        }
    }

    /// Starts a frame whose SOI was consumed before the previous call returned a skip.
    fn start_call(&mut self, out: &mut Vec<u8>, limit: usize) -> Option<Event> {
        debug_assert!(!matches!(self.phase, Phase::Frame(_)) || self.discarding);
        if self.phase == Phase::FrameStart {
            return self.begin_frame(out, limit);
        }
        None
    }

    /// Parses `input` until an event or its end. Returns the bytes consumed and the event.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> (usize, Option<Event>) {
        let mut consumed = 0;
        while consumed < input.len() {
            let (step, event) = self.step(&input[consumed..], out, limit);
            debug_assert!(step > 0);
            consumed += step;
            self.offset += step as u64;
            if event.is_some() {
                return (consumed, event);
            }
        }
        (consumed, None)
    }

    /// Ends the stream: reports trailing garbage or a frame cut by the end, once.
    fn finish(&mut self) -> Option<MjpegSkip> {
        match self.phase {
            Phase::Seek => {
                let skip = MjpegSkip::Garbage {
                    offset: self.seek_start,
                    bytes: self.offset - self.seek_start,
                };
                self.abandon();
                match skip {
                    MjpegSkip::Garbage { bytes: 0, .. } => None,
                    skip => Some(skip),
                }
            }
            Phase::FrameStart => {
                // Only reachable if `start_call` was skipped: the frame is its SOI alone.
                self.abandon();
                Some(MjpegSkip::EndOfStream {
                    offset: self.frame_start,
                    bytes: 2,
                })
            }
            Phase::Frame(_) => {
                let skip = (!self.discarding).then_some(MjpegSkip::EndOfStream {
                    offset: self.frame_start,
                    bytes: self.frame_len,
                });
                self.abandon();
                skip
            }
        }
    }

    /// Drops any frame in progress after a read error; nothing more is reported.
    fn abandon(&mut self) {
        self.phase = Phase::Seek;
        self.seek_start = self.offset;
        self.pending_ff = false;
    }

    /// Consumes at least one byte of `input` (which is not empty).
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> (usize, Option<Event>) {
        let byte = input[0];
        let part = match self.phase {
            Phase::Seek => return (1, self.seek(byte, out, limit)),
            // `start_call` moves on from `FrameStart` before any input is fed.
            Phase::FrameStart => unreachable!("frame start is handled before parsing input"),
            Phase::Frame(part) => part,
        };

        match part {
            Part::MarkerStart => {
                if byte != 0xFF {
                    let skip = MjpegSkip::ExpectedMarker {
                        offset: self.frame_start,
                        byte,
                        at: self.frame_len,
                    };
                    return (1, self.reject(1, skip));
                }
                self.phase = Phase::Frame(Part::MarkerCode);
                (1, self.append(&input[..1], out, limit))
            }
            Part::MarkerCode => (1, self.marker(byte, out, limit)),
            Part::LengthHigh { marker } => {
                self.phase = Phase::Frame(Part::LengthLow { marker, high: byte });
                (1, self.append(&input[..1], out, limit))
            }
            Part::LengthLow { marker, high } => {
                let length = u16::from_be_bytes([high, byte]);
                if length < 2 {
                    let skip = MjpegSkip::InvalidLength {
                        offset: self.frame_start,
                        marker,
                        at: self.frame_len,
                        length,
                    };
                    return (1, self.reject(1, skip));
                }
                if length == 2 {
                    self.end_segment(marker);
                } else {
                    let remaining = length - 2;
                    self.phase = Phase::Frame(Part::Body { marker, remaining });
                }
                (1, self.append(&input[..1], out, limit))
            }
            Part::Body { marker, remaining } => {
                let n = input.len().min(usize::from(remaining));
                // `n` is at most `remaining`, a u16.
                let left = remaining - n as u16;
                if left == 0 {
                    self.end_segment(marker);
                } else {
                    self.phase = Phase::Frame(Part::Body {
                        marker,
                        remaining: left,
                    });
                }
                (n, self.append(&input[..n], out, limit))
            }
            Part::Entropy { after_ff: false } => {
                // Copy the run of data bytes up to the next FF in one go.
                let n = match input.iter().position(|&b| b == 0xFF) {
                    Some(0) => {
                        self.phase = Phase::Frame(Part::Entropy { after_ff: true });
                        1
                    }
                    Some(run) => run,
                    None => input.len(),
                };
                (n, self.append(&input[..n], out, limit))
            }
            Part::Entropy { after_ff: true } => match byte {
                // A stuffed zero or a restart marker: the scan goes on.
                STUFFED_ZERO | 0xD0..=0xD7 => {
                    self.phase = Phase::Frame(Part::Entropy { after_ff: false });
                    (1, self.append(&input[..1], out, limit))
                }
                _ => (1, self.marker(byte, out, limit)),
            },
        }
    }

    /// Looks for an SOI between frames.
    fn seek(&mut self, byte: u8, out: &mut Vec<u8>, limit: usize) -> Option<Event> {
        if !(self.pending_ff && byte == SOI) {
            self.pending_ff = byte == 0xFF;
            return None;
        }

        self.pending_ff = false;
        // `self.offset` is the offset of this byte, so the SOI starts one byte earlier.
        let soi = self.offset - 1;
        self.frame_start = soi;
        let garbage = soi - self.seek_start;
        if garbage > 0 {
            self.phase = Phase::FrameStart;
            return Some(Event::Skip(MjpegSkip::Garbage {
                offset: self.seek_start,
                bytes: garbage,
            }));
        }
        self.begin_frame(out, limit)
    }

    /// Handles the marker code `code` that follows FF inside a frame, either between
    /// segments or at the end of entropy-coded data.
    fn marker(&mut self, code: u8, out: &mut Vec<u8>, limit: usize) -> Option<Event> {
        let byte = [code];
        match code {
            FILL => {
                // Fill bytes may precede any marker; stay where we are.
                self.append(&byte, out, limit)
            }
            SOI => {
                // A new frame starts at the FF before this byte, which was counted in the
                // old frame.
                let old_frame_bytes = self.frame_len - 1;
                let skip = (!self.discarding).then_some(MjpegSkip::Truncated {
                    offset: self.frame_start,
                    bytes: old_frame_bytes,
                });
                self.frame_start = self.offset - 1;
                match skip {
                    Some(skip) => {
                        self.phase = Phase::FrameStart;
                        Some(Event::Skip(skip))
                    }
                    None => self.begin_frame(out, limit),
                }
            }
            EOI if !self.after_scan => {
                let skip = MjpegSkip::NoScan {
                    offset: self.frame_start,
                    bytes: self.frame_len + 1,
                };
                self.reject(1, skip)
            }
            EOI => {
                let overflow = self.append(&byte, out, limit);
                self.phase = Phase::Seek;
                self.seek_start = self.offset + 1;
                if overflow.is_some() || self.discarding {
                    return overflow;
                }
                Some(Event::Frame)
            }
            TEM => {
                // A standalone marker with no segment.
                self.phase = Phase::Frame(Part::MarkerStart);
                self.append(&byte, out, limit)
            }
            code if is_segment_marker(code, self.after_scan) => {
                self.phase = Phase::Frame(Part::LengthHigh { marker: code });
                self.append(&byte, out, limit)
            }
            code => {
                let skip = MjpegSkip::InvalidMarker {
                    offset: self.frame_start,
                    marker: code,
                    at: self.frame_len,
                    after_scan: self.after_scan,
                };
                self.reject(1, skip)
            }
        }
    }

    /// Moves on after the last byte of the segment of `marker`.
    fn end_segment(&mut self, marker: u8) {
        if marker == SOS {
            self.after_scan = true;
            self.phase = Phase::Frame(Part::Entropy { after_ff: false });
        } else {
            self.phase = Phase::Frame(Part::MarkerStart);
        }
    }

    /// Starts a frame whose SOI (at `frame_start`) was just consumed.
    fn begin_frame(&mut self, out: &mut Vec<u8>, limit: usize) -> Option<Event> {
        out.clear();
        self.phase = Phase::Frame(Part::MarkerStart);
        self.frame_len = 0;
        self.discarding = false;
        self.after_scan = false;
        self.append(&[0xFF, SOI], out, limit)
    }

    /// Drops the current frame at a byte that cannot appear there. The `consumed` bytes
    /// (this step's) count as part of the frame; the search for an SOI starts after them.
    fn reject(&mut self, consumed: usize, skip: MjpegSkip) -> Option<Event> {
        self.frame_len += consumed as u64;
        self.phase = Phase::Seek;
        self.seek_start = self.offset + consumed as u64;
        self.pending_ff = false;
        (!self.discarding).then_some(Event::Skip(skip))
    }

    /// Adds `bytes` of the current frame to `out`, or starts discarding the frame when
    /// `out` would grow past `limit`; `out` never grows past `limit`.
    fn append(&mut self, bytes: &[u8], out: &mut Vec<u8>, limit: usize) -> Option<Event> {
        self.frame_len += bytes.len() as u64;
        if self.discarding {
            return None;
        }
        if out.len() + bytes.len() > limit {
            self.discarding = true;
            return Some(Event::Skip(MjpegSkip::TooLarge {
                offset: self.frame_start,
                bytes: self.frame_len,
                limit,
            }));
        }
        out.extend_from_slice(bytes);
        None
    }
}

/// Back-to-back raw frames of one size and format read from a byte stream.
///
/// Each call of `next_into` reads exactly one frame, retrying short reads (normal on pipes)
/// and `Interrupted` errors. The stream ends cleanly at a frame boundary; leftover bytes at
/// the end are reported in [`Next::End`] as [`StreamEnd::PartialRawFrame`]. Nothing is
/// allocated after [`RawStream::new`], except the box of an end reason.
pub struct RawStream<R: Read + Send> {
    reader: R,
    name: String,
    format: RawFormat,
    width: u32,
    height: u32,
    /// Bytes of one frame, at most the `max_frame_bytes` given to `new`.
    frame_bytes: usize,
    /// Bytes read from the stream so far.
    offset: u64,
    /// True once the stream ended; later calls return `End(None)`.
    done: bool,
}

impl<R: Read + Send> RawStream<R> {
    /// Creates a source reading `width × height` frames of `format` from `reader`.
    ///
    /// Fails when the size is invalid for the format (see [`RawFormat::check_size`]) or one
    /// frame is larger than `max_frame_bytes`; nothing is allocated or read before that.
    pub fn new(
        reader: R,
        name: String,
        format: RawFormat,
        width: u32,
        height: u32,
        max_frame_bytes: usize,
    ) -> Result<RawStream<R>, StreamError> {
        let too_large = StreamError::FrameTooLarge {
            format,
            width,
            height,
            bytes: format.frame_bytes_wide(width, height),
            max_frame_bytes,
        };
        let frame_bytes = match format.check_size(width, height) {
            Ok(bytes) if bytes <= max_frame_bytes => bytes,
            Ok(_) => return Err(too_large),
            Err(RawError::InvalidSize {
                kind: SizeErrorKind::Overflow,
                ..
            }) => return Err(too_large),
            Err(err) => return Err(StreamError::InvalidSize(err)),
        };
        log::debug!("{name}: reading raw {width}×{height} {format} frames of {frame_bytes} bytes");
        Ok(RawStream {
            reader,
            name,
            format,
            width,
            height,
            frame_bytes,
            offset: 0,
            done: false,
        })
    }

    /// Returns the bytes of one frame.
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// Reads into `frame` until it is full or the stream ends; returns the bytes read.
    fn read_frame(&mut self, frame: &mut [u8]) -> Result<usize, io::Error> {
        let mut filled = 0;
        while filled < frame.len() {
            match self.reader.read(&mut frame[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n.min(frame.len() - filled),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.offset += filled as u64;
                    return Err(err);
                }
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }
}

impl<R: Read + Send> fmt::Debug for RawStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStream")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("frame_bytes", &self.frame_bytes)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Send> FrameSource for RawStream<R> {
    fn next_into(&mut self, out: &mut Vec<u8>) -> Next {
        out.clear();
        if self.done {
            return Next::End(None);
        }
        if out.capacity() < self.frame_bytes {
            self.done = true;
            return Next::End(Some(Box::new(StreamEnd::BufferTooSmall {
                capacity: out.capacity(),
                format: self.format,
                width: self.width,
                height: self.height,
                frame_bytes: self.frame_bytes,
            })));
        }

        // Zero-filling costs a memset per frame but needs no unsafe code for the spare
        // capacity; the capacity check above means this does not reallocate.
        out.resize(self.frame_bytes, 0);
        let filled = match self.read_frame(out) {
            Ok(filled) => filled,
            Err(error) => {
                self.done = true;
                out.clear();
                return Next::End(Some(Box::new(StreamEnd::Read {
                    name: self.name.clone(),
                    offset: self.offset,
                    error,
                })));
            }
        };
        if filled == self.frame_bytes {
            return Next::Frame(Captured {
                time: SystemTime::now(),
                encoding: Encoding::Raw {
                    format: self.format,
                    width: self.width,
                    height: self.height,
                },
            });
        }

        self.done = true;
        out.clear();
        if filled == 0 {
            return Next::End(None);
        }
        Next::End(Some(Box::new(StreamEnd::PartialRawFrame {
            bytes: filled,
            format: self.format,
            width: self.width,
            height: self.height,
            frame_bytes: self.frame_bytes,
        })))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::path::Path;

    const LIMIT: usize = 1 << 20;

    fn read(path: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    /// Reads a 13 943-byte baseline JPEG: APP0, DQT, SOF0, DHT, one scan.
    fn screwdriver() -> Vec<u8> {
        read("tests/data/id/screwdriver-phillips.jpg")
    }

    /// Reads a 16 156-byte baseline JPEG.
    fn frying_pan() -> Vec<u8> {
        read("tests/data/id/frying-pan-cast-iron.jpg")
    }

    /// Reads the two frames of ffmpeg's MJPEG fixture, 830 and 836 bytes.
    fn ffmpeg_frames() -> (Vec<u8>, Vec<u8>) {
        let stream = read("tests/fixtures/raw/two-frames-64x36.mjpeg");
        let (first, second) = stream.split_at(830);
        (first.to_vec(), second.to_vec())
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// One result of `next_into`, in a form that compares and prints briefly.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Frame { bytes: usize },
        Skip(String),
        End(Option<String>),
    }

    fn skip_label(reason: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
        match reason.downcast_ref::<MjpegSkip>() {
            Some(MjpegSkip::Garbage { offset, bytes }) => format!("garbage {bytes} at {offset}"),
            Some(MjpegSkip::Truncated { offset, bytes }) => {
                format!("truncated {bytes} at {offset}")
            }
            Some(MjpegSkip::EndOfStream { offset, bytes }) => {
                format!("cut by end {bytes} at {offset}")
            }
            Some(MjpegSkip::TooLarge { offset, limit, .. }) => {
                format!("too large, limit {limit}, at {offset}")
            }
            Some(MjpegSkip::InvalidMarker { offset, marker, .. }) => {
                format!("invalid marker {marker:02X} at {offset}")
            }
            Some(MjpegSkip::NoScan { offset, bytes }) => format!("no scan {bytes} at {offset}"),
            _ => reason.to_string(),
        }
    }

    /// Runs `source` to its end (at most 100 results), keeping every frame's bytes.
    fn run(source: &mut dyn FrameSource, capacity: usize) -> (Vec<Outcome>, Vec<Vec<u8>>) {
        let mut out = Vec::with_capacity(capacity);
        let capacity = out.capacity();
        let mut outcomes = Vec::new();
        let mut frames = Vec::new();
        for _ in 0..100 {
            let next = source.next_into(&mut out);
            assert_eq!(out.capacity(), capacity, "the frame buffer grew");
            match next {
                Next::Frame(_) => {
                    outcomes.push(Outcome::Frame { bytes: out.len() });
                    frames.push(out.clone());
                }
                Next::Skipped(reason) => outcomes.push(Outcome::Skip(skip_label(&*reason))),
                Next::End(reason) => {
                    outcomes.push(Outcome::End(reason.map(|r| r.to_string())));
                    break;
                }
            }
        }
        (outcomes, frames)
    }

    fn run_mjpeg(stream: Vec<u8>, max_frame_bytes: usize) -> (Vec<Outcome>, Vec<Vec<u8>>) {
        let mut source = MjpegStream::new(Cursor::new(stream), "test".into(), max_frame_bytes);
        run(&mut source, max_frame_bytes)
    }

    fn skip(label: &str) -> Outcome {
        Outcome::Skip(label.to_string())
    }

    /// A reader that returns at most one byte per call.
    struct OneByte<R>(R);

    impl<R: Read> Read for OneByte<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let len = buf.len().min(1);
            self.0.read(&mut buf[..len])
        }
    }

    /// A reader that fails with `Interrupted` before every successful read.
    struct Interrupting<R> {
        inner: R,
        interrupt_next: bool,
    }

    impl<R: Read> Read for Interrupting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if self.interrupt_next {
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.inner.read(buf)
        }
    }

    /// A reader that returns `data`, then fails.
    struct FailingAfter(Cursor<Vec<u8>>);

    impl Read for FailingAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other("device unplugged")),
                n => Ok(n),
            }
        }
    }

    /// Builds an APP1 segment whose body contains a complete tiny JPEG (SOI … EOI), as
    /// an EXIF thumbnail does.
    fn exif_app1_with_thumbnail() -> Vec<u8> {
        let mut body = b"Exif\0\0".to_vec();
        body.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x04, 0x00, 0x01]);
        body.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9]);
        let length = u16::try_from(body.len() + 2).unwrap();
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&length.to_be_bytes());
        segment.extend_from_slice(&body);
        segment
    }

    #[test]
    fn stream_format_parses_every_name() {
        let parsed: Vec<_> = ["mjpeg", "rgb24", "bgr24", "yuyv", "yuyv422", "NV12"]
            .iter()
            .map(|name| name.parse::<StreamFormat>())
            .collect();
        let expected = [
            StreamFormat::Mjpeg,
            StreamFormat::Raw(RawFormat::Rgb24),
            StreamFormat::Raw(RawFormat::Bgr24),
            StreamFormat::Raw(RawFormat::Yuyv),
            StreamFormat::Raw(RawFormat::Yuyv),
            StreamFormat::Raw(RawFormat::Nv12),
        ]
        .map(Ok);
        assert_eq!(parsed, expected);
    }

    #[test]
    fn stream_format_displays_its_name() {
        assert_eq!(StreamFormat::Raw(RawFormat::Yuyv).to_string(), "yuyv");
        assert_eq!(StreamFormat::Mjpeg.to_string(), "mjpeg");
    }

    #[test]
    fn unknown_stream_format_lists_accepted_names() {
        let err = "h264".parse::<StreamFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown frame format 'h264': expected one of mjpeg, rgb24, bgr24, yuyv (or \
             yuyv422), nv12"
        );
    }

    #[test]
    fn two_concatenated_jpegs_split_into_the_originals() {
        let (first, second) = (screwdriver(), frying_pan());
        let (outcomes, frames) = run_mjpeg(concat(&[&first, &second]), LIMIT);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 13_943 },
                Outcome::Frame { bytes: 16_156 },
                Outcome::End(None)
            ]
        );
        assert!(frames[0] == first);
        assert!(frames[1] == second);
    }

    #[test]
    fn ffmpeg_mjpeg_frames_decode() {
        let (first, second) = ffmpeg_frames();
        let (_, frames) = run_mjpeg(concat(&[&first, &second]), LIMIT);
        let limits = crate::frame::FrameLimits::default();
        let mut frame = crate::frame::FrameBuf::new(64 * 36 * 3);
        for jpeg in &frames {
            crate::source::decode_into(jpeg, &limits, &mut frame).unwrap();
            assert_eq!((frame.width(), frame.height()), (64, 36));
        }
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn exif_thumbnail_stays_in_one_frame() {
        let original = screwdriver();
        let jpeg = concat(&[&original[..2], &exif_app1_with_thumbnail(), &original[2..]]);
        let (outcomes, frames) = run_mjpeg(jpeg.clone(), LIMIT);
        assert_eq!(
            outcomes,
            [Outcome::Frame { bytes: jpeg.len() }, Outcome::End(None)]
        );
        assert!(frames[0] == jpeg);
    }

    #[test]
    fn progressive_jpeg_with_many_scans_stays_one_frame() {
        let jpeg = read("tests/data/formats/progressive-castle.jpg");
        let (outcomes, _) = run_mjpeg(jpeg, LIMIT);
        assert_eq!(
            outcomes,
            [Outcome::Frame { bytes: 55_809 }, Outcome::End(None)]
        );
    }

    #[test]
    fn restart_markers_stay_in_scan() {
        let jpeg = [
            0xFF, 0xD8, // SOI
            0xFF, 0xDA, 0x00, 0x03, 0x01, // SOS with a 1-byte body
            0x11, 0xFF, 0x00, // data, a stuffed zero
            0x22, 0xFF, 0xD0, 0x33, 0xFF, 0xD7, 0x44, // data with RST0 and RST7
            0xFF, 0xFF, 0xD9, // fill byte, EOI
        ];
        let (outcomes, _) = run_mjpeg(jpeg.to_vec(), LIMIT);
        assert_eq!(
            outcomes,
            [Outcome::Frame { bytes: jpeg.len() }, Outcome::End(None)]
        );
    }

    #[test]
    fn garbage_around_frames_is_skipped_and_reported() {
        let (first, second) = ffmpeg_frames();
        let stream = concat(&[b"xy", &first, b"garbage", &second, b"tail"]);
        let (outcomes, frames) = run_mjpeg(stream, LIMIT);
        assert_eq!(
            outcomes,
            [
                skip("garbage 2 at 0"),
                Outcome::Frame { bytes: 830 },
                skip("garbage 7 at 832"),
                Outcome::Frame { bytes: 836 },
                skip("garbage 4 at 1675"),
                Outcome::End(None),
            ]
        );
        assert!(frames[0] == first);
        assert!(frames[1] == second);
    }

    #[test]
    fn stray_ff_bytes_count_as_garbage() {
        let (first, _) = ffmpeg_frames();
        let (outcomes, _) = run_mjpeg(concat(&[&[0xFF, 0xFF, 0x00, 0xFF], &first]), LIMIT);
        assert_eq!(
            outcomes,
            [
                skip("garbage 4 at 0"),
                Outcome::Frame { bytes: 830 },
                Outcome::End(None)
            ]
        );
    }

    #[test]
    fn truncated_frame_is_skipped_before_the_next_frame() {
        let (first, second) = (screwdriver(), frying_pan());
        // Cut in the middle of the entropy-coded data.
        let cut = &first[..7_000];
        let (outcomes, frames) = run_mjpeg(concat(&[cut, &second]), LIMIT);
        assert_eq!(
            outcomes,
            [
                skip("truncated 7000 at 0"),
                Outcome::Frame { bytes: 16_156 },
                Outcome::End(None),
            ]
        );
        assert!(frames[0] == second);
    }

    #[test]
    fn frame_cut_by_eof_is_skipped() {
        let (first, second) = ffmpeg_frames();
        let (outcomes, _) = run_mjpeg(concat(&[&first, &second[..500]]), LIMIT);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 830 },
                skip("cut by end 500 at 830"),
                Outcome::End(None),
            ]
        );
    }

    #[test]
    fn oversized_frame_is_skipped_without_growing_the_buffer() {
        // `run` asserts after every call that the buffer's capacity is unchanged.
        let (small, _) = ffmpeg_frames();
        let stream = concat(&[&small, &screwdriver(), &small]);
        let (outcomes, frames) = run_mjpeg(stream, 4096);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 830 },
                skip("too large, limit 4096, at 830"),
                Outcome::Frame { bytes: 830 },
                Outcome::End(None),
            ]
        );
        assert!(frames[1] == small);
    }

    /// The count is of whole runs copied: here the entropy-coded run that crosses 4096 ends
    /// at the file's first FF after it, at byte 4504.
    #[test]
    fn too_large_reports_bytes_over_the_limit() {
        let mut source = MjpegStream::new(Cursor::new(screwdriver()), "test".into(), 4096);
        let mut out = Vec::with_capacity(4096);
        let reason = match source.next_into(&mut out) {
            Next::Skipped(reason) => reason.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(
            reason,
            "skipped a JPEG frame at stream offset 0: 4504 bytes read so far, above the frame \
             limit of 4096 bytes; raise --max-file-bytes if frames this large are expected"
        );
    }

    #[test]
    fn small_buffer_capacity_limits_frames() {
        let (small, _) = ffmpeg_frames();
        let mut source = MjpegStream::new(Cursor::new(small), "test".into(), LIMIT);
        let (outcomes, _) = run(&mut source, 512);
        assert_eq!(
            outcomes,
            [skip("too large, limit 512, at 0"), Outcome::End(None)]
        );
    }

    #[test]
    fn one_byte_reads_give_the_same_results() {
        let (first, second) = ffmpeg_frames();
        let stream = concat(&[b"xy", &first, b"garbage", &second[..400], &first, b"tail"]);
        let expected = run_mjpeg(stream.clone(), LIMIT);
        let mut source = MjpegStream::new(OneByte(Cursor::new(stream)), "test".into(), LIMIT);
        assert_eq!(run(&mut source, LIMIT), expected);
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let (first, second) = ffmpeg_frames();
        let reader = Interrupting {
            inner: OneByte(Cursor::new(concat(&[&first, &second]))),
            interrupt_next: false,
        };
        let mut source = MjpegStream::new(reader, "test".into(), LIMIT);
        let (outcomes, _) = run(&mut source, LIMIT);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 830 },
                Outcome::Frame { bytes: 836 },
                Outcome::End(None)
            ]
        );
    }

    #[test]
    fn read_error_ends_the_stream_with_the_error() {
        let (first, second) = ffmpeg_frames();
        let reader = FailingAfter(Cursor::new(concat(&[&first, &second[..100]])));
        let mut source = MjpegStream::new(reader, "/dev/video9".into(), LIMIT);
        let (outcomes, _) = run(&mut source, LIMIT);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 830 },
                Outcome::End(Some(
                    "reading stream '/dev/video9' failed after 930 bytes: device unplugged"
                        .to_string()
                )),
            ]
        );
    }

    #[test]
    fn calls_after_the_end_keep_returning_end() {
        let mut source = MjpegStream::new(Cursor::new(Vec::new()), "test".into(), LIMIT);
        let mut out = Vec::with_capacity(16);
        assert!(matches!(source.next_into(&mut out), Next::End(None)));
        assert!(matches!(source.next_into(&mut out), Next::End(None)));
    }

    #[test]
    fn reserved_marker_resyncs_at_next_soi() {
        let (first, _) = ffmpeg_frames();
        // SOI, then marker FF 05 (reserved), then a good frame.
        let stream = concat(&[&[0xFF, 0xD8, 0xFF, 0x05, 0x00, 0x04], &first]);
        let (outcomes, _) = run_mjpeg(stream, LIMIT);
        assert_eq!(
            outcomes,
            [
                skip("invalid marker 05 at 0"),
                skip("garbage 2 at 4"),
                Outcome::Frame { bytes: 830 },
                Outcome::End(None),
            ]
        );
    }

    #[test]
    fn frame_header_after_a_scan_is_invalid() {
        let stream = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x11, // SOI, SOS, one data byte
            0xFF, 0xC0, 0x00, 0x02, 0xFF, 0xD9, // SOF0 where only DHT, SOS, EOI… may be
        ];
        let (outcomes, _) = run_mjpeg(stream.to_vec(), LIMIT);
        assert_eq!(
            outcomes,
            [
                skip("invalid marker C0 at 0"),
                skip("garbage 4 at 9"),
                Outcome::End(None)
            ]
        );
    }

    #[test]
    fn end_of_image_before_any_scan_is_skipped() {
        let (first, _) = ffmpeg_frames();
        let stream = concat(&[&[0xFF, 0xD8, 0xFF, 0xD9], &first]);
        let (outcomes, _) = run_mjpeg(stream, LIMIT);
        assert_eq!(
            outcomes,
            [
                skip("no scan 4 at 0"),
                Outcome::Frame { bytes: 830 },
                Outcome::End(None),
            ]
        );
    }

    #[test]
    fn segment_length_below_two_is_invalid() {
        let stream = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01];
        let mut source = MjpegStream::new(Cursor::new(stream.to_vec()), "test".into(), LIMIT);
        let mut out = Vec::with_capacity(LIMIT);
        let reason = match source.next_into(&mut out) {
            Next::Skipped(reason) => reason.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(
            reason,
            "skipped an invalid JPEG frame at stream offset 0: segment FF E0 at byte 5 of the \
             frame declares length 1, below the minimum of 2"
        );
    }

    #[test]
    fn frame_timestamp_is_taken_when_the_frame_ends() {
        let (first, _) = ffmpeg_frames();
        let before = SystemTime::now();
        let mut source = MjpegStream::new(Cursor::new(first), "test".into(), LIMIT);
        let mut out = Vec::with_capacity(LIMIT);
        let captured = match source.next_into(&mut out) {
            Next::Frame(captured) => captured,
            other => panic!("expected a frame, got {other:?}"),
        };
        assert!(captured.time >= before);
        assert_eq!(captured.encoding, Encoding::Jpeg);
    }

    // Raw streams.

    fn yuyv_frames(count: u8) -> Vec<u8> {
        // 4×2 YUYV frames of 16 bytes, each filled with its own index.
        (0..count).flat_map(|i| [i; 16]).collect()
    }

    fn raw_yuyv_4x2(reader: impl Read + Send + 'static) -> RawStream<Box<dyn Read + Send>> {
        let reader: Box<dyn Read + Send> = Box::new(reader);
        RawStream::new(reader, "test".into(), RawFormat::Yuyv, 4, 2, 64).unwrap()
    }

    #[test]
    fn raw_stream_reads_exact_frames() {
        let mut source = raw_yuyv_4x2(Cursor::new(yuyv_frames(2)));
        let (outcomes, frames) = run(&mut source, 64);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 16 },
                Outcome::Frame { bytes: 16 },
                Outcome::End(None)
            ]
        );
        assert_eq!(frames, [[0u8; 16], [1u8; 16]]);
    }

    #[test]
    fn raw_stream_reads_frames_from_one_byte_reads() {
        let mut source = raw_yuyv_4x2(OneByte(Cursor::new(yuyv_frames(2))));
        let (_, frames) = run(&mut source, 64);
        assert_eq!(frames, [[0u8; 16], [1u8; 16]]);
    }

    #[test]
    fn raw_stream_reports_leftover_bytes() {
        let mut stream = yuyv_frames(2);
        stream.extend_from_slice(&[9; 5]);
        let mut source = raw_yuyv_4x2(Cursor::new(stream));
        let (outcomes, _) = run(&mut source, 64);
        assert_eq!(
            outcomes,
            [
                Outcome::Frame { bytes: 16 },
                Outcome::Frame { bytes: 16 },
                Outcome::End(Some(
                    "stream ended with 5 bytes, not a whole 4×2 yuyv frame of 16 bytes".to_string()
                )),
            ]
        );
    }

    #[test]
    fn raw_leftover_message_names_the_frame_size() {
        let stream = vec![0; 1234];
        let mut source = RawStream::new(
            Cursor::new(stream),
            "-".into(),
            RawFormat::Yuyv,
            320,
            180,
            LIMIT,
        )
        .unwrap();
        let (outcomes, _) = run(&mut source, LIMIT);
        assert_eq!(
            outcomes,
            [Outcome::End(Some(
                "stream ended with 1234 bytes, not a whole 320×180 yuyv frame of 115200 bytes"
                    .to_string()
            ))]
        );
    }

    #[test]
    fn raw_frame_carries_its_format_and_size() {
        let mut source = raw_yuyv_4x2(Cursor::new(yuyv_frames(1)));
        let mut out = Vec::with_capacity(64);
        let encoding = match source.next_into(&mut out) {
            Next::Frame(captured) => Some(captured.encoding),
            _ => None,
        };
        assert_eq!(
            encoding,
            Some(Encoding::Raw {
                format: RawFormat::Yuyv,
                width: 4,
                height: 2
            })
        );
    }

    #[test]
    fn raw_oversized_frame_rejected_at_new() {
        let result = RawStream::new(io::empty(), "-".into(), RawFormat::Rgb24, 4000, 3000, LIMIT);
        let err = result.err().unwrap();
        assert_eq!(
            err.to_string(),
            "raw 4000×3000 rgb24 frames are 36000000 bytes each, above the frame limit of \
             1048576 bytes; lower the frame size or raise --max-pixels and --max-file-bytes"
        );
    }

    #[test]
    fn raw_size_overflow_is_too_large() {
        let result = RawStream::new(
            io::empty(),
            "-".into(),
            RawFormat::Rgb24,
            u32::MAX,
            u32::MAX,
            usize::MAX,
        );
        assert!(matches!(result, Err(StreamError::FrameTooLarge { .. })));
    }

    #[test]
    fn raw_yuyv_with_odd_width_is_rejected() {
        let result = RawStream::new(io::empty(), "-".into(), RawFormat::Yuyv, 321, 180, LIMIT);
        let err = result.err().unwrap();
        assert_eq!(
            err.to_string(),
            "invalid yuyv frame size 321×180: yuyv shares chroma between pixel pairs, so the \
             width must be even; crop or scale the source to an even width"
        );
    }

    #[test]
    fn raw_frame_with_zero_side_is_rejected() {
        let result = RawStream::new(io::empty(), "-".into(), RawFormat::Rgb24, 0, 180, LIMIT);
        assert!(matches!(result, Err(StreamError::InvalidSize(_))));
    }

    #[test]
    fn raw_stream_rejects_small_buffer() {
        let mut source = raw_yuyv_4x2(Cursor::new(yuyv_frames(1)));
        let (outcomes, _) = run(&mut source, 8);
        assert_eq!(
            outcomes,
            [Outcome::End(Some(
                "frame buffer capacity is 8 bytes, less than one 4×2 yuyv frame of 16 bytes; \
                 allocate it with max_frame_bytes of capacity"
                    .to_string()
            ))]
        );
    }
}
