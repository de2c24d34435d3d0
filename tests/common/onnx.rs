//! Builds small ONNX models in memory, for model-loading tests that need a graph of a given
//! shape (no head, a quantized head, a NaN-producing op) without shipping more files.
#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Input side of every test model: `input`, float, 1 × 3 × 4 × 4.
pub const SIDE: usize = 4;

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn floats(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn int8s(name: &str, dims: &[i64], values: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int8 as i32,
        int32_data: values.iter().map(|&v| i32::from(v)).collect(),
        ..Default::default()
    }
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: format!("{op}_{}", outputs[0]),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn with_int(mut node: NodeProto, name: &str, value: i64) -> NodeProto {
    node.attribute.push(AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    });
    node
}

/// Encodes a model over `input` with the given nodes, initializers and outputs (name, dims), and
/// gradgate metadata for a 4 × 4 input with no crop, mean 0, std 1 and `labels`.
pub fn model(
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    outputs: &[(&str, &[i64])],
    labels: &[&str],
) -> Vec<u8> {
    let graph = GraphProto {
        name: "test".into(),
        node: nodes,
        initializer: initializers,
        input: vec![value_info("input", &[1, 3, SIDE as i64, SIDE as i64])],
        output: outputs
            .iter()
            .map(|(name, dims)| value_info(name, dims))
            .collect(),
        ..Default::default()
    };
    let preprocess = format!(
        r#"{{"size": {SIDE}, "crop_fraction": 1.0, "resize": "pil_bilinear", "mean": [0, 0, 0], "std": [1, 1, 1], "alpha_background": 255, "channel_order": "RGB", "layout": "NCHW"}}"#
    );
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "gradgate-tests".into(),
        graph: Some(graph),
        metadata_props: vec![
            StringStringEntryProto {
                key: "gradgate.preprocess".into(),
                value: preprocess,
            },
            StringStringEntryProto {
                key: "gradgate.labels".into(),
                value: serde_json::to_string(labels).unwrap(),
            },
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

/// `GlobalAveragePool → Flatten` into `features` (1 × 3), the backbone of most test models.
pub fn pooled_features() -> Vec<NodeProto> {
    vec![
        node("GlobalAveragePool", &["input"], &["pooled"]),
        with_int(node("Flatten", &["pooled"], &["features"]), "axis", 1),
    ]
}
