//! gradgate's keys in the ONNX file's `metadata_props`.
//!
//! `models/export.py` writes two keys into every bundled model, so that a model file carries
//! what the runtime needs to feed it and to name its classes:
//!
//! - `gradgate.preprocess`: JSON object with `size`, `crop_fraction`, `resize`
//!   (`"pil_bilinear"`), `mean`, `std`, `alpha_background`, `channel_order` (`"RGB"`) and
//!   `layout` (`"NCHW"`);
//! - `gradgate.labels`: JSON array with one class name per logit.

use super::ModelError;
use crate::tensor::PreprocessSpec;
use serde::Deserialize;
use std::path::Path;
use tract_onnx::pb::ModelProto;

/// Metadata key of the preprocessing description.
pub const PREPROCESS_KEY: &str = "gradgate.preprocess";
/// Largest input side accepted from metadata, in pixels. Image classifiers take 224 to 600;
/// the bound stops a typo from sizing a tensor of many gigabytes.
const MAX_INPUT_SIZE_PX: u32 = 4096;

/// Metadata key of the class names.
pub const LABELS_KEY: &str = "gradgate.labels";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreprocessMetadata {
    size: u32,
    crop_fraction: f64,
    resize: String,
    mean: [f32; 3],
    std: [f32; 3],
    alpha_background: u8,
    channel_order: String,
    layout: String,
}

fn entry<'a>(proto: &'a ModelProto, key: &str) -> Option<&'a str> {
    proto
        .metadata_props
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

fn bad(path: &Path, key: &'static str, reason: String) -> ModelError {
    ModelError::BadMetadata {
        path: path.to_path_buf(),
        key,
        reason,
    }
}

/// Reads the preprocessing description, or `None` when the file has none.
pub fn preprocess(proto: &ModelProto, path: &Path) -> Result<Option<PreprocessSpec>, ModelError> {
    let Some(json) = entry(proto, PREPROCESS_KEY) else {
        return Ok(None);
    };
    let meta: PreprocessMetadata =
        serde_json::from_str(json).map_err(|e| bad(path, PREPROCESS_KEY, e.to_string()))?;
    if meta.resize != "pil_bilinear" {
        return Err(bad(
            path,
            PREPROCESS_KEY,
            format!(
                "resize '{}' is not supported; expected pil_bilinear",
                meta.resize
            ),
        ));
    }
    if meta.channel_order != "RGB" || meta.layout != "NCHW" {
        return Err(bad(
            path,
            PREPROCESS_KEY,
            format!(
                "channel order {} and layout {} are not supported; expected RGB and NCHW",
                meta.channel_order, meta.layout
            ),
        ));
    }
    if meta.size == 0
        || meta.size > MAX_INPUT_SIZE_PX
        || !(meta.crop_fraction > 0.0 && meta.crop_fraction <= 1.0)
    {
        return Err(bad(
            path,
            PREPROCESS_KEY,
            format!(
                "size {} and crop_fraction {} are out of range; expected 0 < size ≤ {MAX_INPUT_SIZE_PX} and 0 < crop_fraction ≤ 1",
                meta.size, meta.crop_fraction
            ),
        ));
    }
    if meta.std.iter().any(|s| s.is_nan() || *s <= 0.0) || meta.mean.iter().any(|m| !m.is_finite())
    {
        return Err(bad(
            path,
            PREPROCESS_KEY,
            format!(
                "mean {:?} and std {:?} must be finite and std positive",
                meta.mean, meta.std
            ),
        ));
    }
    Ok(Some(PreprocessSpec {
        size_px: meta.size,
        crop_fraction: meta.crop_fraction,
        mean: meta.mean,
        std: meta.std,
        alpha_background: meta.alpha_background,
    }))
}

/// Reads the class names, or `None` when the file has none.
pub fn labels(proto: &ModelProto, path: &Path) -> Result<Option<Vec<String>>, ModelError> {
    let Some(json) = entry(proto, LABELS_KEY) else {
        return Ok(None);
    };
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| bad(path, LABELS_KEY, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::StringStringEntryProto;

    fn proto_with_preprocess(json: &str) -> ModelProto {
        ModelProto {
            metadata_props: vec![StringStringEntryProto {
                key: PREPROCESS_KEY.into(),
                value: json.into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn huge_input_size_is_rejected() {
        let proto = proto_with_preprocess(
            r#"{"size": 100000, "crop_fraction": 1.0, "resize": "pil_bilinear", "mean": [0, 0, 0], "std": [1, 1, 1], "alpha_background": 255, "channel_order": "RGB", "layout": "NCHW"}"#,
        );
        let err = preprocess(&proto, Path::new("m.onnx")).unwrap_err();
        assert!(
            err.to_string().contains("expected 0 < size ≤ 4096"),
            "{err}"
        );
    }

    #[test]
    fn unknown_resize_filter_is_rejected() {
        let proto = proto_with_preprocess(
            r#"{"size": 224, "crop_fraction": 1.0, "resize": "bicubic", "mean": [0, 0, 0], "std": [1, 1, 1], "alpha_background": 255, "channel_order": "RGB", "layout": "NCHW"}"#,
        );
        let err = preprocess(&proto, Path::new("m.onnx")).unwrap_err();
        assert!(
            err.to_string()
                .contains("resize 'bicubic' is not supported"),
            "{err}"
        );
    }
}
