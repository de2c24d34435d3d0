//! Finds the classifier's final linear layer by inspecting the ONNX graph.
//!
//! The head is the node that produces a graph output and computes `A·Bᵀ·α + C·β` (`Gemm`),
//! `A·B + C` (`MatMul` then `Add`) or `A·B` (`MatMul`), with constant weights, where `A`
//! comes from global pooling. Weights may be plain initializers, `Constant` nodes, or the
//! output of a `DequantizeLinear` of constants (per-tensor or per-axis), as onnxruntime's QDQ
//! quantizer writes them. Node names play no part: exporters name nodes differently.

use super::ModelError;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

/// Operators that pass a tensor on without changing its values, or only its shape, between
/// global pooling and the head.
const PASS_THROUGH: [&str; 6] = [
    "Identity",
    "Flatten",
    "Reshape",
    "Squeeze",
    "QuantizeLinear",
    "DequantizeLinear",
];

/// Operators that count as global pooling.
const POOLING: [&str; 3] = ["GlobalAveragePool", "GlobalMaxPool", "ReduceMean"];

/// The head as found in the file.
#[derive(Debug, Clone)]
pub struct HeadSpec {
    /// W in row-major order, C rows of D values, with Gemm's α folded in.
    pub weights: Vec<f32>,
    /// b, C values, with Gemm's β folded in (zeros when the head has no bias).
    pub bias: Vec<f32>,
    /// D.
    pub feature_dim: usize,
    /// Name of the float tensor holding the pooled features the head reads (before any
    /// quantize/dequantize pair), where the backbone is cut.
    pub features: String,
    /// Name of the graph output the head produces.
    pub logits: String,
    /// Operator and node name of the head, for logs and errors.
    pub description: String,
    /// True when the weights were stored quantized and dequantized here.
    pub dequantized: bool,
}

/// A constant's values as `f32`, its shape, and whether it was stored quantized.
type Constant = (Vec<f32>, Vec<usize>, bool);

struct GraphIndex<'a> {
    producers: HashMap<&'a str, &'a NodeProto>,
    initializers: HashMap<&'a str, &'a TensorProto>,
    path: &'a Path,
}

/// Locates the head among the graph outputs and loads its weights.
pub fn find_head(graph: &GraphProto, path: &Path) -> Result<HeadSpec, ModelError> {
    let mut index = GraphIndex {
        producers: HashMap::new(),
        initializers: HashMap::new(),
        path,
    };
    for node in &graph.node {
        for output in &node.output {
            index.producers.insert(output.as_str(), node);
        }
    }
    for tensor in &graph.initializer {
        index.initializers.insert(tensor.name.as_str(), tensor);
    }

    // Try each graph output; remember what produced the ones that are not a linear head.
    let mut found = Vec::new();
    for output in &graph.output {
        let producer = index.skip_identity(&output.name);
        match producer {
            Some(node) if matches!(node.op_type.as_str(), "Gemm" | "MatMul" | "Add") => {
                if let Some(head) = index.linear_head(node, &output.name)? {
                    return Ok(head);
                }
                found.push(format!("'{}' from {}", output.name, node.op_type));
            }
            Some(node) => found.push(format!("'{}' from {}", output.name, node.op_type)),
            None => found.push(format!("'{}' from no node", output.name)),
        }
    }
    Err(ModelError::NoLinearHead {
        path: path.to_path_buf(),
        outputs: found.join(", "),
    })
}

impl<'a> GraphIndex<'a> {
    fn skip_identity(&self, mut name: &'a str) -> Option<&'a NodeProto> {
        loop {
            let node = *self.producers.get(name)?;
            if node.op_type != "Identity" {
                return Some(node);
            }
            name = node.input.first()?.as_str();
        }
    }

    fn unsupported(&self, reason: String) -> ModelError {
        ModelError::UnsupportedHead {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// Reads a linear head rooted at `node`, or returns `None` when `node` is not one.
    fn linear_head(
        &self,
        node: &'a NodeProto,
        logits: &str,
    ) -> Result<Option<HeadSpec>, ModelError> {
        let (matmul, bias_name, alpha, beta, trans_b) = match node.op_type.as_str() {
            "Gemm" => {
                let attr = |name: &str, default: f32| -> Result<f32, ModelError> {
                    node.get_attr_opt::<f32>(name)
                        .map(|v| v.unwrap_or(default))
                        .map_err(|e| self.unsupported(format!("Gemm attribute {name}: {e}")))
                };
                let flag = |name: &str| -> Result<i64, ModelError> {
                    node.get_attr_opt::<i64>(name)
                        .map(|v| v.unwrap_or(0))
                        .map_err(|e| self.unsupported(format!("Gemm attribute {name}: {e}")))
                };
                if flag("transA")? != 0 {
                    return Err(self.unsupported(format!(
                        "Gemm node '{}' transposes its input (transA = 1); expected features as a row",
                        node.name
                    )));
                }
                let bias = node
                    .input
                    .get(2)
                    .filter(|name| !name.is_empty())
                    .map(String::as_str);
                (
                    node,
                    bias,
                    attr("alpha", 1.0)?,
                    attr("beta", 1.0)?,
                    flag("transB")? != 0,
                )
            }
            "MatMul" => (node, None, 1.0, 1.0, false),
            "Add" => {
                // One side is the MatMul, the other a constant bias.
                let sides: Vec<_> = node.input.iter().map(|i| self.skip_identity(i)).collect();
                let Some(m) = sides
                    .iter()
                    .position(|s| s.is_some_and(|n| n.op_type == "MatMul"))
                else {
                    return Ok(None);
                };
                let other = node.input.get(1 - m).map(String::as_str);
                (sides[m].expect("checked above"), other, 1.0, 1.0, false)
            }
            _ => return Ok(None),
        };

        // Weights: constant, shaped [D, C] for MatMul and Gemm without transB, [C, D] with it.
        let Some(weight_name) = matmul.input.get(1) else {
            return Ok(None);
        };
        let Some((raw, shape, quantized)) = self.constant(weight_name)? else {
            return Ok(None);
        };
        if shape.len() != 2 {
            return Err(self.unsupported(format!(
                "weights '{weight_name}' have shape {shape:?}; expected a matrix"
            )));
        }
        let (classes, features) = if trans_b {
            (shape[0], shape[1])
        } else {
            (shape[1], shape[0])
        };
        let mut weights = vec![0f32; classes * features];
        for c in 0..classes {
            for d in 0..features {
                let value = if trans_b {
                    raw[c * features + d]
                } else {
                    raw[d * classes + c]
                };
                weights[c * features + d] = value * alpha;
            }
        }

        let bias = match bias_name {
            None => vec![0.0; classes],
            Some(name) => {
                let Some((values, _, _)) = self.constant(name)? else {
                    return Err(self.unsupported(format!("bias '{name}' is not a constant")));
                };
                match values.len() {
                    1 => vec![values[0] * beta; classes],
                    n if n == classes => values.iter().map(|v| v * beta).collect(),
                    n => {
                        return Err(self.unsupported(format!(
                            "bias '{name}' has {n} values; expected {classes} (one per class)"
                        )))
                    }
                }
            }
        };

        // The features must come from global pooling.
        let input = matmul.input.first().map(String::as_str).unwrap_or_default();
        let features_name = self.float_source(input);
        self.check_pooled(features_name, matmul)?;

        Ok(Some(HeadSpec {
            weights,
            bias,
            feature_dim: features,
            features: features_name.to_string(),
            logits: logits.to_string(),
            description: format!("{} node '{}'", node.op_type, node.name),
            dequantized: quantized,
        }))
    }

    /// Follows a `DequantizeLinear` ← `QuantizeLinear` pair back to the float tensor.
    fn float_source(&self, name: &'a str) -> &'a str {
        let Some(dq) = self
            .producers
            .get(name)
            .filter(|n| n.op_type == "DequantizeLinear")
        else {
            return name;
        };
        match dq
            .input
            .first()
            .and_then(|i| self.producers.get(i.as_str()))
        {
            Some(q) if q.op_type == "QuantizeLinear" => {
                q.input.first().map_or(name, String::as_str)
            }
            _ => name,
        }
    }

    fn check_pooled(&self, features: &str, head: &NodeProto) -> Result<(), ModelError> {
        let mut name = features;
        for _ in 0..8 {
            let Some(node) = self.producers.get(name) else {
                break;
            };
            if POOLING.contains(&node.op_type.as_str()) {
                return Ok(());
            }
            if !PASS_THROUGH.contains(&node.op_type.as_str()) {
                return Err(ModelError::HeadNotPooled {
                    path: self.path.to_path_buf(),
                    head: format!("{} node '{}'", head.op_type, head.name),
                    found: node.op_type.clone(),
                });
            }
            let Some(input) = node.input.first() else {
                break;
            };
            name = input;
        }
        Err(ModelError::HeadNotPooled {
            path: self.path.to_path_buf(),
            head: format!("{} node '{}'", head.op_type, head.name),
            found: format!("no pooling node before '{features}'"),
        })
    }

    /// Loads a constant as `f32` values with its shape, dequantizing if needed. Returns
    /// `None` when `name` is computed at run time.
    fn constant(&self, name: &str) -> Result<Option<Constant>, ModelError> {
        if let Some(tensor) = self.initializers.get(name) {
            return self.load(tensor).map(|(v, s)| Some((v, s, false)));
        }
        let Some(node) = self.producers.get(name) else {
            return Ok(None);
        };
        match node.op_type.as_str() {
            "Constant" => {
                let Some(tensor) = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                else {
                    return Ok(None);
                };
                self.load(tensor).map(|(v, s)| Some((v, s, false)))
            }
            "Identity" => self.constant(node.input.first().map(String::as_str).unwrap_or_default()),
            "DequantizeLinear" => self.dequantize(node),
            _ => Ok(None),
        }
    }

    fn dequantize(&self, node: &NodeProto) -> Result<Option<Constant>, ModelError> {
        let input = |i: usize| {
            node.input
                .get(i)
                .map(String::as_str)
                .filter(|n| !n.is_empty())
        };
        let Some((values, shape, _)) = input(0).map(|n| self.constant(n)).transpose()?.flatten()
        else {
            return Ok(None);
        };
        let Some((scale, _, _)) = input(1).map(|n| self.constant(n)).transpose()?.flatten() else {
            return Ok(None);
        };
        let zero_point = match input(2) {
            Some(n) => match self.constant(n)? {
                Some((zp, _, _)) => zp,
                None => return Ok(None),
            },
            None => vec![0.0],
        };
        let axis = node
            .get_attr_opt::<i64>("axis")
            .map_err(|e| self.unsupported(format!("DequantizeLinear attribute axis: {e}")))?
            .unwrap_or(1);

        // Per-tensor when scale has one value; otherwise per-axis along `axis`.
        let rank = shape.len() as i64;
        let axis = if axis < 0 { axis + rank } else { axis };
        let (stride, extent) = if scale.len() == 1 || shape.is_empty() {
            (1usize, 1usize)
        } else {
            let axis = usize::try_from(axis)
                .ok()
                .filter(|&a| a < shape.len())
                .ok_or_else(|| {
                    self.unsupported(format!(
                        "DequantizeLinear axis {axis} out of range for {shape:?}"
                    ))
                })?;
            (shape[axis + 1..].iter().product(), shape[axis])
        };
        if scale.len() != 1 && scale.len() != extent {
            return Err(self.unsupported(format!(
                "DequantizeLinear scale has {} values for an axis of {extent}",
                scale.len()
            )));
        }
        let dequantized = values
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let channel = if scale.len() == 1 {
                    0
                } else {
                    (i / stride) % extent
                };
                let zp = zero_point
                    .get(channel)
                    .or(zero_point.first())
                    .copied()
                    .unwrap_or(0.0);
                (q - zp) * scale[channel]
            })
            .collect();
        Ok(Some((dequantized, shape, true)))
    }

    fn load(&self, tensor: &TensorProto) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let dir = self.path.parent().and_then(Path::to_str);
        let loaded = tract_onnx::tensor::load_tensor(&*onnx().provider, tensor, dir)
            .and_then(|t| Ok(t.cast_to::<f32>()?.into_owned()))
            .map_err(|e| {
                self.unsupported(format!("cannot load constant '{}': {e}", tensor.name))
            })?;
        let shape = loaded.shape().to_vec();
        let values = loaded
            .try_as_plain_ram()
            .and_then(|view| Ok(view.as_slice::<f32>()?.to_vec()))
            .map_err(|e| self.unsupported(format!("constant '{}': {e}", tensor.name)))?;
        Ok((values, shape))
    }
}
