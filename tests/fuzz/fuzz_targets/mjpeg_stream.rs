//! Splits the input as an MJPEG stream, checking that no input makes the parser panic, loop,
//! grow the caller's buffer or depend on how the reads are cut.

#![no_main]

use gradgate::source::stream::{MjpegSkip, MjpegStream};
use gradgate::source::{FrameSource, Next};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read};

/// Frame limits each input runs with, in bytes: 64 KiB is above every seed, and 1 KiB is
/// below most seed frames, so the oversized-frame path runs too.
const LIMITS: [usize; 2] = [64 << 10, 1 << 10];

/// A reader that returns at most 7 bytes per call, so markers and lengths straddle reads.
struct ShortReads<'a>(Cursor<&'a [u8]>);

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = buf.len().min(7);
        self.0.read(&mut buf[..len])
    }
}

/// One result of `next_into`.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Frame(Vec<u8>),
    Skip(String),
    End,
}

/// Runs `source` to its end and returns every result.
fn split(mut source: impl FrameSource, data_len: usize, limit: usize) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(limit);
    let capacity = out.capacity();
    let mut outcomes = Vec::new();
    // Every result but the last consumes at least one byte, and each byte ends at most one
    // skip and one frame (a new SOI both ends a truncated frame and starts a frame).
    let max_results = 2 * data_len + 2;
    loop {
        assert!(
            outcomes.len() <= max_results,
            "no end after {max_results} results"
        );
        let next = source.next_into(&mut out);
        assert_eq!(out.capacity(), capacity, "the frame buffer was reallocated");
        assert!(
            out.len() <= limit,
            "frame of {} bytes above the limit",
            out.len()
        );
        match next {
            Next::Frame(_) => {
                assert!(out.starts_with(&[0xFF, 0xD8]), "frame without SOI");
                assert!(out.ends_with(&[0xFF, 0xD9]), "frame without EOI");
                outcomes.push(Outcome::Frame(out.clone()));
            }
            Next::Skipped(reason) => outcomes.push(Outcome::Skip(label(&*reason))),
            Next::End(reason) => {
                assert!(reason.is_none(), "a cursor cannot fail: {reason:?}");
                outcomes.push(Outcome::End);
                return outcomes;
            }
        }
    }
}

/// Describes a skip. An oversized frame's byte count depends on where the reads were cut,
/// so it is left out.
fn label(reason: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    match reason.downcast_ref::<MjpegSkip>() {
        Some(MjpegSkip::TooLarge { offset, limit, .. }) => {
            format!("too large at {offset}, limit {limit}")
        }
        Some(skip) => format!("{skip:?}"),
        None => panic!("unexpected skip reason: {reason}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for limit in LIMITS {
        let whole = split(
            MjpegStream::new(Cursor::new(data), "fuzz".into(), limit),
            data.len(),
            limit,
        );
        let short = split(
            MjpegStream::new(ShortReads(Cursor::new(data)), "fuzz".into(), limit),
            data.len(),
            limit,
        );
        assert_eq!(whole, short, "results depend on read sizes");
    }
});
