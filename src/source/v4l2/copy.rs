//! Copies a driver buffer into the caller's frame buffer without growing it.

use super::FrameSkip;

/// Layout of a raw frame in the driver's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RowLayout {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes of pixels in one row (width × bytes per pixel).
    pub row_bytes: usize,
    /// Distance between row starts in the driver's buffer, in bytes (bytesperline); at least
    /// `row_bytes`.
    pub stride: usize,
}

impl RowLayout {
    /// Returns the size of the packed frame in bytes: rows without padding.
    pub fn packed_bytes(&self) -> usize {
        self.row_bytes * self.height as usize
    }

    /// Returns the bytes the driver's buffer must hold: every row but the last with its
    /// padding, then the last row.
    pub fn source_bytes(&self) -> usize {
        match self.height as usize {
            0 => 0,
            rows => self.stride * (rows - 1) + self.row_bytes,
        }
    }
}

/// Copies a whole frame (`frame`, the buffer's used bytes) into `out`.
///
/// `out` is cleared first. A frame larger than `out`'s capacity returns
/// [`FrameSkip::Oversized`] and leaves `out` empty and its capacity unchanged.
pub(super) fn copy_frame(frame: &[u8], sequence: u32, out: &mut Vec<u8>) -> Result<(), FrameSkip> {
    out.clear();
    if frame.is_empty() {
        return Err(FrameSkip::Empty { sequence });
    }
    if frame.len() > out.capacity() {
        return Err(FrameSkip::Oversized {
            sequence,
            frame_bytes: frame.len(),
            capacity: out.capacity(),
        });
    }
    out.extend_from_slice(frame);
    Ok(())
}

/// Copies the rows of a raw frame into `out`, packed: the padding the driver adds after each
/// row (a stride above the row length) is dropped, as [`Encoding::Raw`] requires.
///
/// `out` is cleared first. Returns [`FrameSkip::Truncated`] when `frame` is shorter than
/// `layout` needs and [`FrameSkip::Oversized`] when the packed frame exceeds `out`'s
/// capacity. `out`'s capacity is never changed.
///
/// [`Encoding::Raw`]: crate::source::Encoding::Raw
pub(super) fn copy_rows(
    frame: &[u8],
    layout: RowLayout,
    sequence: u32,
    out: &mut Vec<u8>,
) -> Result<(), FrameSkip> {
    out.clear();
    if frame.is_empty() {
        return Err(FrameSkip::Empty { sequence });
    }
    if frame.len() < layout.source_bytes() {
        return Err(FrameSkip::Truncated {
            sequence,
            bytes_used: frame.len(),
            expected: layout.source_bytes(),
            width: layout.width,
            height: layout.height,
        });
    }
    if layout.packed_bytes() > out.capacity() {
        return Err(FrameSkip::Oversized {
            sequence,
            frame_bytes: layout.packed_bytes(),
            capacity: out.capacity(),
        });
    }

    if layout.stride == layout.row_bytes {
        out.extend_from_slice(&frame[..layout.packed_bytes()]);
    } else {
        for row in frame.chunks(layout.stride).take(layout.height as usize) {
            out.extend_from_slice(&row[..layout.row_bytes]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_that_fits_is_copied_whole() {
        let mut out = Vec::with_capacity(16);
        let capacity = out.capacity();

        copy_frame(&[1, 2, 3], 7, &mut out).unwrap();

        assert_eq!(out, [1, 2, 3]);
        assert_eq!(out.capacity(), capacity);
    }

    #[test]
    fn oversized_frame_leaves_buffer_empty_and_unchanged() {
        let mut out = Vec::with_capacity(4);
        out.extend_from_slice(&[9, 9]);
        let capacity = out.capacity();
        let frame = vec![1u8; capacity + 1];

        let err = copy_frame(&frame, 7, &mut out).unwrap_err();

        assert!(matches!(
            err,
            FrameSkip::Oversized { sequence: 7, frame_bytes, capacity: c }
                if frame_bytes == capacity + 1 && c == capacity
        ));
        assert!(out.is_empty());
        assert_eq!(out.capacity(), capacity);
    }

    #[test]
    fn empty_frame_is_skipped() {
        let mut out = Vec::with_capacity(4);

        let err = copy_frame(&[], 3, &mut out).unwrap_err();

        assert!(matches!(err, FrameSkip::Empty { sequence: 3 }));
    }

    #[test]
    fn padded_rows_are_packed() {
        // Two rows of 2 YUYV pixels (4 bytes each), each followed by 2 bytes of padding. The
        // last row's padding is missing, because drivers may omit it.
        let layout = RowLayout {
            width: 2,
            height: 2,
            row_bytes: 4,
            stride: 6,
        };
        let frame = [1, 2, 3, 4, 0, 0, 5, 6, 7, 8];
        let mut out = Vec::with_capacity(8);

        copy_rows(&frame, layout, 0, &mut out).unwrap();

        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn unpadded_rows_are_copied_in_one_piece() {
        let layout = RowLayout {
            width: 1,
            height: 2,
            row_bytes: 2,
            stride: 2,
        };
        let mut out = Vec::with_capacity(4);

        copy_rows(&[1, 2, 3, 4, 5, 6], layout, 0, &mut out).unwrap();

        assert_eq!(out, [1, 2, 3, 4]);
    }

    #[test]
    fn short_raw_frame_is_truncated() {
        let layout = RowLayout {
            width: 2,
            height: 2,
            row_bytes: 4,
            stride: 6,
        };
        let mut out = Vec::with_capacity(8);

        let err = copy_rows(&[1; 9], layout, 5, &mut out).unwrap_err();

        assert!(matches!(
            err,
            FrameSkip::Truncated {
                sequence: 5,
                bytes_used: 9,
                expected: 10,
                ..
            }
        ));
    }

    #[test]
    fn raw_frame_larger_than_buffer_is_oversized() {
        let layout = RowLayout {
            width: 2,
            height: 2,
            row_bytes: 4,
            stride: 4,
        };
        let mut out = Vec::with_capacity(7);
        let capacity = out.capacity();
        assert!(capacity < 8, "test needs a buffer below 8 bytes");

        let err = copy_rows(&[1; 8], layout, 0, &mut out).unwrap_err();

        assert!(matches!(err, FrameSkip::Oversized { frame_bytes: 8, .. }));
        assert_eq!(out.capacity(), capacity);
    }
}
