//! Decoded frames in a buffer sized once at start-up.
//!
//! Stage one of the data path (**frame** → tensor → activations → score → gate → signal).
//! A [`FrameBuf`] owns one pixel buffer whose capacity is fixed by [`FrameLimits`]; decoding
//! writes into it and preprocessing reads from it, so frames of any size up to the limits
//! reuse the same memory.

use std::fmt;

/// Size limits for one decoded frame, checked against the image header before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest accepted width or height, in pixels.
    pub max_side_px: u32,
    /// Largest accepted width × height, in pixels.
    pub max_pixels: u64,
    /// Largest accepted encoded file, in bytes.
    pub max_file_bytes: u64,
}

impl Default for FrameLimits {
    /// 8192 px per side, 16.8 Mpx (4096 × 4096) and 64 MiB per file: above any camera frame
    /// gradgate targets, while the preallocated buffers stay under 160 MiB of virtual memory.
    fn default() -> FrameLimits {
        FrameLimits {
            max_side_px: 8192,
            max_pixels: 4096 * 4096,
            max_file_bytes: 64 << 20,
        }
    }
}

impl FrameLimits {
    /// Bytes the decoded-pixel buffer needs: four bytes (RGBA8) per pixel at the pixel limit.
    /// Frames in 16-bit formats fit only if they use at most this many bytes.
    pub fn pixel_buffer_bytes(&self) -> usize {
        usize::try_from(self.max_pixels.saturating_mul(4)).unwrap_or(usize::MAX)
    }
}

/// Pixel layout of a decoded frame, interleaved, rows top to bottom without padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 8-bit grey.
    L8,
    /// 8-bit grey with alpha.
    La8,
    /// 8-bit RGB.
    Rgb8,
    /// 8-bit RGB with alpha.
    Rgba8,
    /// 16-bit grey, native endian.
    L16,
    /// 16-bit grey with alpha, native endian.
    La16,
    /// 16-bit RGB, native endian.
    Rgb16,
    /// 16-bit RGB with alpha, native endian.
    Rgba16,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::L8 => 1,
            PixelFormat::La8 | PixelFormat::L16 => 2,
            PixelFormat::Rgb8 => 3,
            PixelFormat::Rgba8 | PixelFormat::La16 => 4,
            PixelFormat::Rgb16 => 6,
            PixelFormat::Rgba16 => 8,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One decoded frame in a reusable buffer.
///
/// Invariant: `len == width × height × format.bytes_per_pixel() ≤ data.len()`, and
/// `data.len()` never changes after [`FrameBuf::new`].
pub struct FrameBuf {
    data: Box<[u8]>,
    len: usize,
    width: u32,
    height: u32,
    format: PixelFormat,
}

impl FrameBuf {
    /// Allocates a zeroed buffer of `capacity_bytes`. Nothing else allocates later.
    pub fn new(capacity_bytes: usize) -> FrameBuf {
        FrameBuf {
            data: vec![0; capacity_bytes].into_boxed_slice(),
            len: 0,
            width: 0,
            height: 0,
            format: PixelFormat::Rgb8,
        }
    }

    /// Capacity in bytes, fixed at construction.
    pub fn capacity_bytes(&self) -> usize {
        self.data.len()
    }

    /// Width in pixels of the current frame (0 before the first frame).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels of the current frame (0 before the first frame).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Pixel layout of the current frame.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Returns the current frame's pixels.
    pub fn pixels(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// Sets the next frame's size and layout and returns its pixel slice to fill, or `None`
    /// (leaving the buffer as it was) when the frame would not fit in the capacity.
    pub fn prepare(&mut self, width: u32, height: u32, format: PixelFormat) -> Option<&mut [u8]> {
        let len = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(format.bytes_per_pixel())?;
        if len > self.data.len() {
            return None;
        }
        self.len = len;
        self.width = width;
        self.height = height;
        self.format = format;
        Some(&mut self.data[..len])
    }
}

impl fmt::Debug for FrameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBuf")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("capacity_bytes", &self.data.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_rejects_frames_over_capacity() {
        let mut buf = FrameBuf::new(12);
        assert!(buf.prepare(2, 2, PixelFormat::Rgba8).is_none());
    }

    #[test]
    fn prepare_sets_length_from_format() {
        let mut buf = FrameBuf::new(12);
        buf.prepare(2, 2, PixelFormat::Rgb8).unwrap();
        assert_eq!(buf.pixels().len(), 12);
    }

    #[test]
    fn failed_prepare_keeps_previous_frame() {
        let mut buf = FrameBuf::new(12);
        buf.prepare(2, 1, PixelFormat::Rgb8).unwrap();
        let _ = buf.prepare(4, 4, PixelFormat::Rgb8);
        assert_eq!((buf.width(), buf.height()), (2, 1));
    }
}
