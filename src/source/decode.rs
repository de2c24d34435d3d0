use crate::frame::{FrameBuf, FrameLimits, PixelFormat};
use image::{ColorType, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::fmt;
use std::io::Cursor;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Memory the image crate's decoders may allocate for their own state, in bytes. Their
/// scratch space is a few rows or blocks of the image, far below this, so the limit only
/// stops pathological files.
const DECODER_SCRATCH_LIMIT_BYTES: u64 = 256 << 20;

/// Error from decoding an encoded image into a frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input has no bytes.
    Empty,
    /// The bytes are not JPEG, PNG or WebP.
    UnsupportedFormat {
        /// Up to the first 8 bytes, for the message.
        magic: [u8; 8],
        /// How many of `magic` are valid.
        magic_len: usize,
    },
    /// The header declares a size above the configured limits.
    TooLarge {
        /// Declared width in pixels.
        width: u32,
        /// Declared height in pixels.
        height: u32,
        /// The limits in force.
        limits: FrameLimits,
    },
    /// The decoded pixels would not fit in the preallocated frame buffer (16-bit formats).
    BufferTooSmall {
        /// Declared width in pixels.
        width: u32,
        /// Declared height in pixels.
        height: u32,
        /// The decoded pixel layout.
        format: PixelFormat,
        /// Capacity of the frame buffer in bytes.
        capacity_bytes: usize,
    },
    /// The header declares an image whose decoder state alone would exceed
    /// the decoder memory limit (256 MiB), before gradgate can read the size.
    DecoderMemory,
    /// A pixel layout gradgate does not convert (for example 32-bit float).
    UnsupportedColor(ColorType),
    /// A JPEG stream that ends before its end-of-image marker. The JPEG decoder would fill
    /// the missing blocks with grey rather than fail, so gradgate checks this itself.
    TruncatedJpeg {
        /// Length of the stream in bytes.
        len: usize,
    },
    /// A JPEG stream whose headers or entropy-coded data are invalid, including scans that
    /// run out of data before the image declared by the header is complete.
    InvalidJpeg(String),
    /// The data is invalid or truncated.
    Invalid(image::ImageError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("file is empty (0 bytes)"),
            DecodeError::UnsupportedFormat { magic, magic_len } => {
                f.write_str("unsupported image format (first bytes")?;
                for byte in &magic[..*magic_len] {
                    write!(f, " {byte:02x}")?;
                }
                f.write_str("): expected JPEG, PNG or WebP")
            }
            DecodeError::TooLarge {
                width,
                height,
                limits,
            } => write!(
                f,
                "image header declares {width}×{height} px, above the limits of {} px per side \
                 and {} px in all; downscale the image or raise --max-side-px/--max-pixels",
                limits.max_side_px, limits.max_pixels
            ),
            DecodeError::BufferTooSmall {
                width,
                height,
                format,
                capacity_bytes,
            } => write!(
                f,
                "decoded {width}×{height} {format} image needs {} bytes, but the frame buffer \
                 holds {capacity_bytes}; raise --max-pixels or convert the image to 8 bits",
                *width as u64 * *height as u64 * format.bytes_per_pixel() as u64
            ),
            DecodeError::DecoderMemory => f.write_str(
                "image header declares a size whose decoding needs more than 256 MiB of decoder \
                 memory; downscale the image",
            ),
            DecodeError::UnsupportedColor(color) => write!(
                f,
                "unsupported pixel layout {color:?}: expected 8- or 16-bit grey, grey with alpha, \
                 RGB or RGBA"
            ),
            DecodeError::TruncatedJpeg { len } => write!(
                f,
                "truncated JPEG: no end-of-image marker after the last scan in {len} bytes"
            ),
            DecodeError::InvalidJpeg(reason) => {
                write!(f, "invalid or truncated JPEG data: {reason}")
            }
            DecodeError::Invalid(err) => {
                // Some decoders end their messages with a newline.
                write!(
                    f,
                    "invalid or truncated image data: {}",
                    err.to_string().trim_end()
                )
            }
        }
    }
}

// No `source()`: every message already contains its cause, and callers that print the
// chain would repeat it.
impl std::error::Error for DecodeError {}

/// Decodes a JPEG, PNG or WebP image from `bytes` into `out`.
///
/// The header is checked against `limits` before any pixel is decoded; on error `out` keeps
/// its previous frame. gradgate's own code allocates nothing here, but the decoders allocate
/// their internal state (Huffman tables, row buffers) on every call. JPEG is decoded in
/// zune-jpeg's strict mode, which rejects markers where scan data belongs.
///
/// NOTE: a JPEG whose scan stops early at an end-of-image marker still decodes, with the
/// missing blocks filled in. Cut files with the marker appended and headers that declare more
/// rows than the scan holds both do, because zune-jpeg 0.5.15 accepts them even in strict mode.
pub fn decode_into(
    bytes: &[u8],
    limits: &FrameLimits,
    out: &mut FrameBuf,
) -> Result<(), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }

    // Guess the format from the magic bytes only: file extensions are often wrong.
    let format = match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => format,
        _ => return Err(unsupported_format(bytes)),
    };
    if format == ImageFormat::Jpeg {
        if !jpeg_has_end_marker(bytes) {
            return Err(DecodeError::TruncatedJpeg { len: bytes.len() });
        }
        return decode_jpeg(bytes, limits, out);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(DECODER_SCRATCH_LIMIT_BYTES);
    reader.limits(decoder_limits);
    let decoder = reader.into_decoder().map_err(|err| match err {
        image::ImageError::Limits(_) => DecodeError::DecoderMemory,
        err => DecodeError::Invalid(err),
    })?;

    // Check the declared size before anything is decoded.
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    let format = pixel_format(decoder.color_type())?;
    let pixels = prepare_frame(out, width, height, format)?;
    decoder.read_image(pixels).map_err(DecodeError::Invalid)
}

/// Sizes `out` for the next frame and returns its pixels to fill.
fn prepare_frame(
    out: &mut FrameBuf,
    width: u32,
    height: u32,
    format: PixelFormat,
) -> Result<&mut [u8], DecodeError> {
    let capacity_bytes = out.capacity_bytes();
    out.prepare(width, height, format)
        .ok_or(DecodeError::BufferTooSmall {
            width,
            height,
            format,
            capacity_bytes,
        })
}

fn check_size(width: u32, height: u32, limits: &FrameLimits) -> Result<(), DecodeError> {
    if width == 0
        || height == 0
        || width > limits.max_side_px
        || height > limits.max_side_px
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(DecodeError::TooLarge {
            width,
            height,
            limits: *limits,
        });
    }
    Ok(())
}

/// Decodes a JPEG with zune-jpeg in strict mode, the decoder the image crate wraps in lenient
/// mode, with the same output colour spaces: grey stays grey, everything else becomes RGB.
fn decode_jpeg(bytes: &[u8], limits: &FrameLimits, out: &mut FrameBuf) -> Result<(), DecodeError> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| DecodeError::InvalidJpeg(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| DecodeError::InvalidJpeg("no frame header".into()))?;
    // A JPEG frame header stores each dimension in 16 bits, so both fit in u32.
    let (width, height) = (width as u32, height as u32);
    check_size(width, height, limits)?;

    let input = decoder
        .input_colorspace()
        .ok_or_else(|| DecodeError::InvalidJpeg("no colour space".into()))?;
    let (colour, format) = match input {
        ColorSpace::Luma => (ColorSpace::Luma, PixelFormat::L8),
        ColorSpace::LumaA => (ColorSpace::LumaA, PixelFormat::La8),
        ColorSpace::RGBA => (ColorSpace::RGBA, PixelFormat::Rgba8),
        _ => (ColorSpace::RGB, PixelFormat::Rgb8),
    };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(colour));
    let pixels = prepare_frame(out, width, height, format)?;
    decoder
        .decode_into(pixels)
        .map_err(|e| DecodeError::InvalidJpeg(e.to_string().trim_end().to_string()))
}

/// Returns true when an end-of-image marker (FF D9) follows the last start-of-scan marker
/// (FF DA). Inside entropy-coded data every FF byte is followed by 00 or a restart marker, so
/// neither marker can occur there by accident. An EXIF thumbnail's markers come before the
/// main image's scans.
///
/// NOTE: a file with bytes appended after its end-of-image marker that happen to contain
/// FF DA is reported as truncated.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|pair| pair == [0xFF, 0xDA]);
    match last_scan {
        Some(start) => bytes[start..].windows(2).any(|pair| pair == [0xFF, 0xD9]),
        None => false,
    }
}

fn unsupported_format(bytes: &[u8]) -> DecodeError {
    let mut magic = [0u8; 8];
    let magic_len = bytes.len().min(magic.len());
    magic[..magic_len].copy_from_slice(&bytes[..magic_len]);
    DecodeError::UnsupportedFormat { magic, magic_len }
}

fn pixel_format(color: ColorType) -> Result<PixelFormat, DecodeError> {
    Ok(match color {
        ColorType::L8 => PixelFormat::L8,
        ColorType::La8 => PixelFormat::La8,
        ColorType::Rgb8 => PixelFormat::Rgb8,
        ColorType::Rgba8 => PixelFormat::Rgba8,
        ColorType::L16 => PixelFormat::L16,
        ColorType::La16 => PixelFormat::La16,
        ColorType::Rgb16 => PixelFormat::Rgb16,
        ColorType::Rgba16 => PixelFormat::Rgba16,
        other => return Err(DecodeError::UnsupportedColor(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_limits() -> FrameLimits {
        FrameLimits {
            max_side_px: 64,
            max_pixels: 64 * 64,
            max_file_bytes: 1 << 20,
        }
    }

    #[test]
    fn empty_input_is_rejected() {
        let mut buf = FrameBuf::new(64);
        let err = decode_into(&[], &small_limits(), &mut buf).unwrap_err();
        assert_eq!(err.to_string(), "file is empty (0 bytes)");
    }

    #[test]
    fn jpeg_without_scan_has_no_end_marker() {
        assert!(!jpeg_has_end_marker(&[0xFF, 0xD8, 0xFF, 0xD9]));
    }

    #[test]
    fn end_marker_after_last_scan_is_found() {
        assert!(jpeg_has_end_marker(&[
            0xFF, 0xD8, 0xFF, 0xDA, 0x12, 0xFF, 0x00, 0xFF, 0xD9
        ]));
    }

    #[test]
    fn scan_cut_before_end_marker_is_truncated() {
        assert!(!jpeg_has_end_marker(&[
            0xFF, 0xD8, 0xFF, 0xDA, 0x12, 0xFF, 0x00, 0x34
        ]));
    }

    #[test]
    fn text_is_an_unsupported_format() {
        let mut buf = FrameBuf::new(64);
        let err = decode_into(b"hello, world", &small_limits(), &mut buf).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported image format (first bytes 68 65 6c 6c 6f 2c 20 77): expected JPEG, PNG or WebP"
        );
    }
}
