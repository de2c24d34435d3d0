//! Faster simulated quantization for QDQ graphs on the CPU.
//!
//! tract 0.23.9 runs an ONNX QDQ graph in `f32`: every quantized activation becomes a
//! `QuantizeLinear` node (f32 → u8, a scalar loop) followed by a `DequantizeLinear` node
//! (u8 → f32, another loop and another buffer). On the bundled int8 model these two took
//! 46% of the backbone's time. A `Pad` between a `DequantizeLinear` and the depthwise
//! convolution it pads took another 7 to 8%, because tract folds a `Pad` only into a
//! convolution right after it (see docs/benchmarks.md).
//!
//! [`fuse`] rewrites the decluttered graph before tract optimizes it:
//! 1. Each `QuantizeLinear` whose only successor is a `DequantizeLinear` with the same zero
//!    point becomes one in-place [`FakeQuant`] op, `x ↦ round(clamp(x / s, lo − z, hi − z)) · s`.
//!    For finite inputs this equals tract's pair bit for bit: rounding is monotone and the
//!    clamp bounds are integers, so clamping before rounding gives the same integer, and
//!    that integer times `s` is the pair's `(q − z) · s`.
//! 2. `FakeQuant → Pad(0) → FakeQuant` with equal parameters loses its second `FakeQuant`
//!    when the first maps every value of its output grid to itself, which
//!    [`FakeQuant::is_idempotent`] checks. The padding zero always maps to itself. The `Pad` then sits right before its convolution, which absorbs it.
//!
//! The scores of a rewritten model equal those of the unmodified graph; tests/qdq.rs checks
//! this on the bundled images. Activations where `|x / s|` reaches 2³¹ differ: tract's
//! pair overflows `i32` there and maps NaN to 0, where [`FakeQuant`] saturates. No finite
//! activation of a working model comes near that, and NaN frames are rejected by the
//! finiteness check anyway.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{DatumType, TypedModelPatch};
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// Simulated quantization in one pass: quantize to the integer grid, clamp, and map back to
/// `f32`. Evaluated in place, so it needs no output buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeQuant {
    /// `1 / s`, as `QuantizeLinear` multiplies by it.
    inv_scale: f32,
    /// `s`, as `DequantizeLinear` multiplies by it.
    scale: f32,
    /// `lo − z` and `hi − z`: the integer range after removing the zero point, as `f32`.
    min: f32,
    max: f32,
}

// The fields are never NaN (scales come from constants checked by `fuse`), so equality is
// reflexive.
impl Eq for FakeQuant {}

impl FakeQuant {
    /// `inv_scale` is the quantizer's multiplier `1 / s`, `zero_point` and `[lo, hi]` its
    /// integer zero point and range, `scale` the dequantizer's `s`.
    pub fn new(inv_scale: f32, scale: f32, zero_point: i32, lo: i32, hi: i32) -> FakeQuant {
        FakeQuant {
            inv_scale,
            scale,
            min: (lo - zero_point) as f32,
            max: (hi - zero_point) as f32,
        }
    }

    /// Returns true when every value on this op's output grid maps to itself, so applying the
    /// op twice equals applying it once. Holds when the quantizer's `1 / s` and the
    /// dequantizer's `s` belong together. A graph may pair a quantizer and a dequantizer of
    /// different scales, and then it fails.
    pub fn is_idempotent(&self) -> bool {
        // min and max are small integers (at most 255 apart), so this is at most 256 values.
        let grid: Vec<f32> = (self.min as i32..=self.max as i32)
            .map(|q| q as f32 * self.scale)
            .collect();
        let mut mapped = grid.clone();
        self.apply(&mut mapped);
        grid.iter()
            .zip(&mapped)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Applies the op to `xs` in place.
    pub fn apply(&self, xs: &mut [f32]) {
        // Adding and subtracting 1.5 · 2²³ rounds any |v| < 2²² to the nearest integer, ties
        // to even, in the default rounding mode, and unlike `round_ties_even` it vectorizes
        // on every target without SSE4.1 or NEON's FRINTN being enabled. |v| ≤ 255 here.
        const ROUND: f32 = 12_582_912.0;
        for x in xs {
            let v = (*x * self.inv_scale).max(self.min).min(self.max);
            *x = ((v + ROUND) - ROUND) * self.scale;
        }
    }
}

impl ElementWiseMiniOp for FakeQuant {
    fn name(&self) -> String {
        "FakeQuant".into()
    }

    fn eval_in_place(&self, t: &mut Tensor, _out_dt: Option<DatumType>) -> TractResult<()> {
        let mut plain = t.try_as_plain_ram_mut()?;
        self.apply(plain.as_slice_mut::<f32>()?);
        Ok(())
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: {} range: [{}, {}]",
            self.scale, self.min, self.max
        )])
    }
}

/// Counts of the rewrites [`fuse`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// `QuantizeLinear → DequantizeLinear` pairs replaced by a [`FakeQuant`].
    pub pairs: usize,
    /// [`FakeQuant`] ops removed after a zero `Pad`.
    pub after_pad: usize,
}

/// Rewrites `model` as the module documentation describes; returns the counts.
pub fn fuse(model: &mut TypedModel) -> TractResult<FuseReport> {
    let mut report = FuseReport::default();
    while let Some((quant, dequant, op)) = next_pair(model)? {
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.node(quant).inputs[0])?;
        let name = model.node(quant).name.clone();
        let fused = patch.wire_node(name, ElementWiseOp(Box::new(op), None), &[input])?[0];
        patch.shunt_outside(model, OutletId::new(dequant, 0), fused)?;
        patch.apply(model)?;
        report.pairs += 1;
    }
    while let Some((pad, second)) = next_requant_after_pad(model)? {
        let mut patch = TypedModelPatch::default();
        let padded = patch.tap_model(model, OutletId::new(pad, 0))?;
        patch.shunt_outside(model, OutletId::new(second, 0), padded)?;
        patch.apply(model)?;
        report.after_pad += 1;
    }
    // Drop the bypassed nodes.
    *model = std::mem::take(model).into_compact()?;
    Ok(report)
}

/// Finds a quantizer whose only successor is a dequantizer with the same zero point, both
/// still wired to the graph.
fn next_pair(model: &TypedModel) -> TractResult<Option<(usize, usize, FakeQuant)>> {
    let outputs = model.output_outlets()?;
    for node in model.eval_order()?.into_iter().map(|id| model.node(id)) {
        let Some(ElementWiseOp(mini, _)) = node.op_as::<ElementWiseOp>() else {
            continue;
        };
        let (inv_scale, zero_point, lo, hi) =
            if let Some(q) = mini.downcast_ref::<QuantizeLinearU8>() {
                (q.scale, i32::from(q.zero_point), 0, 255)
            } else if let Some(q) = mini.downcast_ref::<QuantizeLinearI8>() {
                (q.scale, i32::from(q.zero_point), -128, 127)
            } else {
                continue;
            };
        if outputs.contains(&OutletId::new(node.id, 0)) {
            continue;
        }
        let Some(next) = model.single_succ(node.id)? else {
            continue;
        };
        let Some(dq) = next.op_as::<DequantizeLinearF32>() else {
            continue;
        };
        let usable = |v: f32| v.is_finite() && v > 0.0;
        if dq.zero_point != zero_point || !usable(dq.scale) || !usable(inv_scale) {
            continue;
        }
        let op = FakeQuant::new(inv_scale, dq.scale, zero_point, lo, hi);
        return Ok(Some((node.id, next.id, op)));
    }
    Ok(None)
}

/// Finds `FakeQuant → Pad(0) → FakeQuant` with equal parameters, each the only successor of
/// the one before; returns the `Pad` and the second `FakeQuant`.
fn next_requant_after_pad(model: &TypedModel) -> TractResult<Option<(usize, usize)>> {
    let fake_quant = |node: &TypedNode| -> Option<FakeQuant> {
        let ElementWiseOp(mini, _) = node.op_as::<ElementWiseOp>()?;
        mini.downcast_ref::<FakeQuant>().cloned()
    };
    for node in model.eval_order()?.into_iter().map(|id| model.node(id)) {
        let Some(first) = fake_quant(node) else {
            continue;
        };
        let Some(pad_node) = model.single_succ(node.id)? else {
            continue;
        };
        let Some(pad) = pad_node.op_as::<Pad>() else {
            continue;
        };
        let PadMode::Constant(value) = &pad.mode else {
            continue;
        };
        if value.cast_to_scalar::<f32>()? != 0.0 {
            continue;
        }
        let Some(second_node) = model.single_succ(pad_node.id)? else {
            continue;
        };
        // Dropping the second op is exact only when the first op's outputs are its fixed points.
        if fake_quant(second_node).as_ref() == Some(&first) && first.is_idempotent() {
            return Ok(Some((pad_node.id, second_node.id)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// Quantizes, then dequantizes `x` as tract's u8 pair does.
    fn pair_u8(x: f32, inv_scale: f32, scale: f32, zero_point: i32) -> f32 {
        let q = quantize_linear_f32_u8(x, inv_scale, zero_point);
        (i32::from(q) - zero_point) as f32 * scale
    }

    /// Quantizes, then dequantizes `x` as tract's i8 pair does.
    fn pair_i8(x: f32, inv_scale: f32, scale: f32, zero_point: i32) -> f32 {
        let q = quantize_linear_f32_i8(x, inv_scale, zero_point);
        (i32::from(q) - zero_point) as f32 * scale
    }

    /// Inputs around every rounding tie and both ends of the range, for one scale.
    fn probes(scale: f32) -> Vec<f32> {
        // Far outside the range, but not so far that tract's `round(x / s) + z` overflows
        // `i32` (see the module notes).
        let mut xs = vec![0.0, -0.0, 1e-30, -1e-30, 1e6 * scale, -1e6 * scale];
        for k in -600..=600 {
            let tie = (k as f32 + 0.5) * scale;
            xs.extend([
                tie,
                f32::from_bits(tie.to_bits() + 1),
                f32::from_bits(tie.to_bits().saturating_sub(1)),
                k as f32 * scale,
            ]);
        }
        xs
    }

    #[test]
    fn matches_tract_u8_pair_bit_for_bit() {
        for (scale, zero_point) in [(0.0235, 0), (0.0235, 128), (0.1171875, 17), (3.0, 255)] {
            let inv_scale = 1.0 / scale;
            let op = FakeQuant::new(inv_scale, scale, zero_point, 0, 255);
            let xs = probes(scale);
            let mut ys = xs.clone();
            op.apply(&mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                let expected = pair_u8(*x, inv_scale, scale, zero_point);
                assert_eq!(
                    y.to_bits(),
                    expected.to_bits(),
                    "x = {x:e}, scale {scale}, zero point {zero_point}"
                );
            }
        }
    }

    #[test]
    fn matches_tract_i8_pair_bit_for_bit() {
        for (scale, zero_point) in [(0.0235, 0), (0.05, -128), (0.05, 127), (0.5, -3)] {
            let inv_scale = 1.0 / scale;
            let op = FakeQuant::new(inv_scale, scale, zero_point, -128, 127);
            let xs = probes(scale);
            let mut ys = xs.clone();
            op.apply(&mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                let expected = pair_i8(*x, inv_scale, scale, zero_point);
                assert_eq!(
                    y.to_bits(),
                    expected.to_bits(),
                    "x = {x:e}, scale {scale}, zero point {zero_point}"
                );
            }
        }
    }

    #[test]
    fn is_idempotent() {
        let op = FakeQuant::new(1.0 / 0.0235, 0.0235, 3, 0, 255);
        let mut once = probes(0.0235);
        op.apply(&mut once);
        let mut twice = once.clone();
        op.apply(&mut twice);
        assert_eq!(once, twice);
    }

    #[test]
    fn matching_scales_are_idempotent() {
        for (scale, zero_point) in [(0.0235, 0), (0.1171875, 17), (3.0, 255), (0.05, 128)] {
            let op = FakeQuant::new(1.0 / scale, scale, zero_point, 0, 255);
            assert!(op.is_idempotent(), "scale {scale}, zero point {zero_point}");
        }
    }

    #[test]
    fn mismatched_scales_are_not_idempotent() {
        // Quantizer scale 0.05, dequantizer scale 0.1: a valid graph, but q · 0.1 / 0.05 = 2q.
        let op = FakeQuant::new(1.0 / 0.05, 0.1, 0, 0, 255);
        assert!(!op.is_idempotent());
    }

    #[test]
    fn keeps_zero_for_every_zero_point() {
        for zero_point in [0, 1, 128, 255] {
            let op = FakeQuant::new(10.0, 0.1, zero_point, 0, 255);
            let mut xs = [0.0f32];
            op.apply(&mut xs);
            assert_eq!(xs[0], 0.0, "zero point {zero_point}");
        }
    }
}
