//! Preprocessing: a decoded frame becomes the model's input tensor.
//!
//! Stage two of the data path (frame → **tensor** → activations → score → gate → signal).
//! [`Preprocessor`] reproduces, bit for bit, the preprocessing the bundled model was exported
//! and calibrated with (see `models/MODEL_CARD.md`):
//!
//! 1. alpha is composited over a fixed background, grey is replicated to RGB;
//! 2. a centred square covering `crop_fraction` of the shorter side is resampled to
//!    `size_px × size_px` in one step, with the antialiased bilinear (triangle) filter of
//!    Pillow's `Image.resize(size, Image.BILINEAR, box=…)`, including its 8-bit fixed-point
//!    arithmetic and its rounding of the intermediate image to 8 bits;
//! 3. each channel becomes `(value − mean) / std`, written planar (NCHW, RGB order).
//!
//! # Important notes
//! - [`Preprocessor::new`] sizes every scratch buffer for the largest frame the
//!   [`FrameLimits`] accept; [`Preprocessor::fill`] allocates nothing.
//! - Matching Pillow exactly matters: the thresholds shipped with the model were calibrated on
//!   tensors made this way, and a one-level pixel difference moves scores measurably.

use crate::frame::{FrameBuf, FrameLimits, PixelFormat};

/// Fixed-point fraction bits of Pillow's 8-bit resampler (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// How to turn a frame into the model's input, as stored in the model file's metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreprocessSpec {
    /// Side of the square input, in pixels.
    pub size_px: u32,
    /// Fraction of the shorter side that the centred square crop covers, in (0, 1].
    pub crop_fraction: f64,
    /// Per-channel mean (R, G, B) on the 0–255 scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) on the 0–255 scale, all positive.
    pub std: [f32; 3],
    /// Grey level (0–255) that transparent pixels are composited over.
    pub alpha_background: u8,
}

/// The model input: one image, planar RGB, `3 × size_px × size_px` values, normalised.
#[derive(Clone, Debug)]
pub struct InputTensor {
    data: Box<[f32]>,
    size_px: usize,
}

impl InputTensor {
    /// Allocates a zeroed tensor for a `size_px × size_px` input.
    pub fn new(size_px: u32) -> InputTensor {
        let size_px = size_px as usize;
        InputTensor {
            data: vec![0.0; 3 * size_px * size_px].into_boxed_slice(),
            size_px,
        }
    }

    /// Shape as `[batch, channels, height, width]`.
    pub fn shape(&self) -> [usize; 4] {
        [1, 3, self.size_px, self.size_px]
    }

    /// Returns the values in NCHW order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Returns the values in NCHW order, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Normalizes an image that already has the input size: `rgb` contains `size_px × size_px`
    /// RGB pixels, 8 bits each, row-major. Allocates nothing.
    ///
    /// # Panics
    /// If `rgb` does not contain exactly `3 × size_px²` bytes.
    pub fn fill_from_rgb8(&mut self, rgb: &[u8], spec: &PreprocessSpec) {
        let plane = self.size_px * self.size_px;
        assert_eq!(rgb.len(), 3 * plane, "expected {} RGB bytes", 3 * plane);
        for (pixel, chunk) in rgb.chunks_exact(3).enumerate() {
            for (channel, &level) in chunk.iter().enumerate() {
                self.data[channel * plane + pixel] = normalize(level, channel, spec);
            }
        }
    }
}

/// `(level − mean) / std` for one channel, in `f32`.
fn normalize(level: u8, channel: usize, spec: &PreprocessSpec) -> f32 {
    (f32::from(level) - spec.mean[channel]) / spec.std[channel]
}

/// Filter taps of one resampling pass: for each output pixel, the first input index and the
/// fixed-point weights of the inputs it reads.
///
/// Invariant after [`Taps::compute`]: for every output `o < outputs`, `start[o] + count[o]` is
/// at most the input size and `count[o] ≤ stride`, and `weights[o * stride..][..count[o]]` contains
/// its weights scaled by 2²².
struct Taps {
    start: Box<[usize]>,
    count: Box<[usize]>,
    weights: Box<[i32]>,
    /// Scratch for one output's weights before rounding to fixed point.
    scratch: Box<[f64]>,
    stride: usize,
}

impl Taps {
    fn new(outputs: usize, max_taps: usize) -> Taps {
        Taps {
            start: vec![0; outputs].into_boxed_slice(),
            count: vec![0; outputs].into_boxed_slice(),
            weights: vec![0; outputs * max_taps].into_boxed_slice(),
            scratch: vec![0.0; max_taps].into_boxed_slice(),
            stride: 0,
        }
    }

    /// Computes the taps mapping the input interval `[in0, in1)` onto `outputs` pixels, the way
    /// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` do, including their casts.
    fn compute(&mut self, in_size: usize, in0: f32, in1: f32) {
        let outputs = self.start.len();
        // Pillow subtracts in single precision, then divides in double precision.
        let scale = f64::from(in1 - in0) / outputs as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // The triangle filter's support is 1 input pixel.
        let stride = support.ceil() as usize * 2 + 1;
        assert!(
            stride <= self.scratch.len(),
            "frame exceeds the limits the taps were sized for"
        );
        self.stride = stride;

        for out in 0..outputs {
            let center = f64::from(in0) + (out as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, like C's `(int)` cast in Pillow.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = end.saturating_sub(first);

            let mut total = 0.0;
            for (tap, weight) in self.scratch[..count].iter_mut().enumerate() {
                let x = ((tap + first) as f64 - center + 0.5) / filter_scale;
                *weight = (1.0 - x.abs()).max(0.0);
                total += *weight;
            }
            let fixed = &mut self.weights[out * stride..][..stride];
            for (tap, slot) in fixed.iter_mut().enumerate() {
                *slot = if tap < count {
                    let weight = if total != 0.0 {
                        self.scratch[tap] / total
                    } else {
                        self.scratch[tap]
                    };
                    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
                    // Round half away from zero, then truncate, as Pillow does.
                    if scaled < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                } else {
                    0
                };
            }
            self.start[out] = first;
            self.count[out] = count;
        }
    }

    fn weights(&self, out: usize) -> &[i32] {
        &self.weights[out * self.stride..][..self.count[out]]
    }
}

/// Rounds a fixed-point accumulator to 8 bits and clamps it, like Pillow's `clip8`.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Turns frames into input tensors with scratch space sized once.
pub struct Preprocessor {
    spec: PreprocessSpec,
    horizontal: Taps,
    vertical: Taps,
    /// Rows of the horizontally resampled crop: up to `max_side_px` rows of `size_px` RGB
    /// pixels, 8 bits each.
    rows: Box<[u8]>,
}

impl Preprocessor {
    /// Allocates scratch space for every frame `limits` accepts.
    pub fn new(spec: PreprocessSpec, limits: &FrameLimits) -> Preprocessor {
        let size = spec.size_px as usize;
        let max_side = limits.max_side_px as usize;
        // A downscale by s reads ⌈s⌉·2 + 1 inputs per output; s ≤ max_side / size.
        let max_taps = max_side.div_ceil(size).max(1) * 2 + 1;
        Preprocessor {
            spec,
            horizontal: Taps::new(size, max_taps),
            vertical: Taps::new(size, max_taps),
            rows: vec![0; max_side * size * 3].into_boxed_slice(),
        }
    }

    /// Returns the specification in use.
    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// Writes the model input for `frame` into `out`. Allocates nothing.
    ///
    /// # Panics
    /// If the frame is empty, exceeds the limits given to [`Preprocessor::new`], or `out` was
    /// not made for this spec's size. Frames from [`decode_into`](crate::source::decode_into)
    /// with the same limits never do.
    pub fn fill(&mut self, frame: &FrameBuf, out: &mut InputTensor) {
        assert!(
            frame.width() > 0 && frame.height() > 0,
            "cannot preprocess an empty frame"
        );
        assert_eq!(
            out.size_px, self.spec.size_px as usize,
            "input tensor has the wrong size"
        );

        // The crop box, computed in double precision and passed as single precision, as a
        // Python caller of Pillow's `resize(box=…)` does.
        let (width, height) = (f64::from(frame.width()), f64::from(frame.height()));
        let crop = width.min(height) * self.spec.crop_fraction;
        let left = ((width - crop) / 2.0) as f32;
        let right = ((width + crop) / 2.0) as f32;
        let top = ((height - crop) / 2.0) as f32;
        let bottom = ((height + crop) / 2.0) as f32;
        self.horizontal.compute(frame.width() as usize, left, right);
        self.vertical.compute(frame.height() as usize, top, bottom);

        // Only the input rows the vertical pass reads go through the horizontal pass.
        let size = self.spec.size_px as usize;
        let first_row = self.vertical.start[0];
        let end_row = self.vertical.start[size - 1] + self.vertical.count[size - 1];
        let background = u32::from(self.spec.alpha_background);
        match frame.format() {
            PixelFormat::L8 => self.resample_rows(frame, first_row, end_row, |p| [p[0]; 3]),
            PixelFormat::La8 => self.resample_rows(frame, first_row, end_row, |p| {
                [over(p[0], p[1], background); 3]
            }),
            PixelFormat::Rgb8 => {
                self.resample_rows(frame, first_row, end_row, |p| [p[0], p[1], p[2]])
            }
            PixelFormat::Rgba8 => self.resample_rows(frame, first_row, end_row, |p| {
                [
                    over(p[0], p[3], background),
                    over(p[1], p[3], background),
                    over(p[2], p[3], background),
                ]
            }),
            PixelFormat::L16 => {
                self.resample_rows(frame, first_row, end_row, |p| [high_byte(p, 0); 3])
            }
            PixelFormat::La16 => self.resample_rows(frame, first_row, end_row, |p| {
                [over(high_byte(p, 0), high_byte(p, 1), background); 3]
            }),
            PixelFormat::Rgb16 => self.resample_rows(frame, first_row, end_row, |p| {
                [high_byte(p, 0), high_byte(p, 1), high_byte(p, 2)]
            }),
            PixelFormat::Rgba16 => self.resample_rows(frame, first_row, end_row, |p| {
                let alpha = high_byte(p, 3);
                [
                    over(high_byte(p, 0), alpha, background),
                    over(high_byte(p, 1), alpha, background),
                    over(high_byte(p, 2), alpha, background),
                ]
            }),
        }

        self.resample_columns_into(first_row, out);
    }

    /// Horizontal pass over input rows `first_row..end_row` into `self.rows`, converting each
    /// source pixel to RGB with `to_rgb` first.
    fn resample_rows(
        &mut self,
        frame: &FrameBuf,
        first_row: usize,
        end_row: usize,
        to_rgb: impl Fn(&[u8]) -> [u8; 3],
    ) {
        let size = self.spec.size_px as usize;
        let bytes_per_pixel = frame.format().bytes_per_pixel();
        let row_bytes = frame.width() as usize * bytes_per_pixel;
        let pixels = frame.pixels();
        for row in first_row..end_row {
            let source = &pixels[row * row_bytes..][..row_bytes];
            let target = &mut self.rows[(row - first_row) * size * 3..][..size * 3];
            for out in 0..size {
                let first = self.horizontal.start[out];
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (tap, &weight) in self.horizontal.weights(out).iter().enumerate() {
                    let rgb = to_rgb(&source[(first + tap) * bytes_per_pixel..][..bytes_per_pixel]);
                    for channel in 0..3 {
                        acc[channel] += i32::from(rgb[channel]) * weight;
                    }
                }
                for channel in 0..3 {
                    target[out * 3 + channel] = clip8(acc[channel]);
                }
            }
        }
    }

    /// Vertical pass from `self.rows` into the normalised planar tensor.
    fn resample_columns_into(&self, first_row: usize, out: &mut InputTensor) {
        let size = self.spec.size_px as usize;
        let plane = size * size;
        let values = out.as_mut_slice();
        for out_row in 0..size {
            let first = self.vertical.start[out_row] - first_row;
            let weights = self.vertical.weights(out_row);
            for column in 0..size {
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (tap, &weight) in weights.iter().enumerate() {
                    let pixel = &self.rows[((first + tap) * size + column) * 3..][..3];
                    for channel in 0..3 {
                        acc[channel] += i32::from(pixel[channel]) * weight;
                    }
                }
                for channel in 0..3 {
                    values[channel * plane + out_row * size + column] =
                        normalize(clip8(acc[channel]), channel, &self.spec);
                }
            }
        }
    }
}

/// Composites one 8-bit channel with alpha over a grey background, rounding to nearest.
fn over(channel: u8, alpha: u8, background: u32) -> u8 {
    let (channel, alpha) = (u32::from(channel), u32::from(alpha));
    ((channel * alpha + background * (255 - alpha) + 127) / 255) as u8
}

/// Returns the high byte of the 16-bit native-endian sample at `index`.
fn high_byte(pixel: &[u8], index: usize) -> u8 {
    (u16::from_ne_bytes([pixel[index * 2], pixel[index * 2 + 1]]) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_spec(size_px: u32) -> PreprocessSpec {
        PreprocessSpec {
            size_px,
            crop_fraction: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            alpha_background: 255,
        }
    }

    fn limits() -> FrameLimits {
        FrameLimits {
            max_side_px: 64,
            max_pixels: 64 * 64,
            max_file_bytes: 1 << 16,
        }
    }

    #[test]
    fn same_size_frame_passes_through() {
        let mut frame = FrameBuf::new(4 * 4 * 3);
        let pixels = frame.prepare(4, 4, PixelFormat::Rgb8).unwrap();
        for (i, p) in pixels.iter_mut().enumerate() {
            *p = (i * 5) as u8;
        }
        let mut pre = Preprocessor::new(identity_spec(4), &limits());
        let mut input = InputTensor::new(4);
        pre.fill(&frame, &mut input);
        // Red plane, row 1, column 2 comes from byte (1·4 + 2)·3 = 18.
        assert_eq!(input.as_slice()[4 + 2], 90.0);
    }

    #[test]
    fn transparent_pixel_becomes_background() {
        let mut frame = FrameBuf::new(4);
        frame
            .prepare(1, 1, PixelFormat::Rgba8)
            .unwrap()
            .copy_from_slice(&[10, 20, 30, 0]);
        let mut pre = Preprocessor::new(identity_spec(1), &limits());
        let mut input = InputTensor::new(1);
        pre.fill(&frame, &mut input);
        assert_eq!(input.as_slice(), &[255.0, 255.0, 255.0]);
    }

    #[test]
    fn half_transparent_pixel_rounds_to_nearest() {
        assert_eq!(over(0, 128, 255), 127);
    }

    #[test]
    fn grey_frame_is_replicated() {
        let mut frame = FrameBuf::new(1);
        frame
            .prepare(1, 1, PixelFormat::L8)
            .unwrap()
            .copy_from_slice(&[77]);
        let mut pre = Preprocessor::new(identity_spec(1), &limits());
        let mut input = InputTensor::new(1);
        pre.fill(&frame, &mut input);
        assert_eq!(input.as_slice(), &[77.0, 77.0, 77.0]);
    }

    #[test]
    fn downscale_by_two_uses_pillow_weights() {
        // Scale 2 widens the triangle to ±2 inputs around the centre 1.0: inputs 0, 1, 2 get
        // raw weights 0.75, 0.75, 0.25, normalized to 3/7, 3/7, 1/7 and scaled by 2²².
        let mut taps = Taps::new(2, 9);
        taps.compute(4, 0.0, 4.0);
        assert_eq!(taps.weights(0), &[1_797_559, 1_797_559, 599_186]);
    }
}
