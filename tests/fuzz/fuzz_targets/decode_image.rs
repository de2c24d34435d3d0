//! Decodes the input as a JPEG, PNG or WebP image with small limits, checking that no input
//! makes a decoder panic or write past the preallocated frame buffer.

#![no_main]

use gradgate::frame::{FrameBuf, FrameLimits};
use gradgate::source::decode_into;
use libfuzzer_sys::fuzz_target;

/// Limits far below the defaults, so that headers declaring large images are rejected
/// before decoding and each run stays fast.
const LIMITS: FrameLimits = FrameLimits {
    max_side_px: 512,
    max_pixels: 256 * 256,
    max_file_bytes: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let mut frame = FrameBuf::new(LIMITS.pixel_buffer_bytes());
    if decode_into(data, &LIMITS, &mut frame).is_ok() {
        let (width, height) = (frame.width(), frame.height());
        assert!(width >= 1, "width {width}");
        assert!(width <= LIMITS.max_side_px, "width {width}");
        assert!(height >= 1, "height {height}");
        assert!(height <= LIMITS.max_side_px, "height {height}");
        let expected = width as usize * height as usize * frame.format().bytes_per_pixel();
        assert_eq!(frame.pixels().len(), expected);
    }
});
