//! ONNX export of a trained model: the network from preprocessed features
//! to the probability of the positive class, for runtimes outside Cohort
//! (onnxruntime, ONNX-aware serving).
//!
//! Only the handful of ONNX protobuf messages a feed-forward graph needs are
//! declared here (field numbers from onnx/onnx.proto3, IR version 8, opset
//! 13) rather than compiling the whole onnx.proto: the graph is one `Gemm`
//! per layer, `Relu` between hidden layers and a final `Sigmoid`. Weights
//! are stored as the card's `[fan_in, fan_out]` tensors, which is exactly
//! `Gemm`'s `B` without transposition.

use prost::Message;

use crate::{ModelCard, ModelError, ModelSpec, check_parameters, parameter_layout};

/// The graph's input: `[batch, n_features]` float32, features preprocessed
/// as the card's `preprocessing` says, in `feature_names` order.
pub const ONNX_INPUT: &str = "features";
/// The graph's output: `[batch, 1]` float32 probabilities.
pub const ONNX_OUTPUT: &str = "probability";

const IR_VERSION: i64 = 8;
const OPSET: i64 = 13;
const FLOAT: i32 = 1;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    /// Little-endian float32 values, row-major.
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    value: Option<DimensionValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum DimensionValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

fn float_matrix(name: &str, columns: i64) -> ValueInfoProto {
    let dims = [
        DimensionValue::DimParam("batch".to_string()),
        DimensionValue::DimValue(columns),
    ];
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| Dimension { value: Some(d) })
                        .collect(),
                }),
            }),
        }),
    }
}

fn node(op_type: &str, name: String, input: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        input,
        output: vec![output],
        name,
        op_type: op_type.to_string(),
    }
}

/// The model described by `card` with flat parameters `params` as an ONNX
/// file (serialized `ModelProto`).
pub fn to_onnx(card: &ModelCard, params: &[f32]) -> Result<Vec<u8>, ModelError> {
    check_parameters(&card.model, card.n_features, params)?;
    let layout = parameter_layout(&card.model, card.n_features);
    let mut initializer = Vec::with_capacity(layout.len());
    for info in &layout {
        let count: usize = info.shape.iter().product();
        let values = &params[info.offset..info.offset + count];
        initializer.push(TensorProto {
            dims: info.shape.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: info.name.clone(),
            raw_data: crate::parameters_to_bytes(values),
        });
    }
    let layers = match &card.model {
        ModelSpec::Logistic => 1,
        ModelSpec::Mlp { hidden, .. } => hidden.len() + 1,
    };
    let mut nodes = Vec::new();
    let mut current = ONNX_INPUT.to_string();
    for i in 0..layers {
        let out = format!("layers.{i}.output");
        nodes.push(node(
            "Gemm",
            format!("layers.{i}"),
            vec![
                current,
                format!("layers.{i}.weight"),
                format!("layers.{i}.bias"),
            ],
            out.clone(),
        ));
        current = out;
        if i + 1 < layers {
            let out = format!("layers.{i}.relu");
            nodes.push(node("Relu", out.clone(), vec![current], out.clone()));
            current = out;
        }
    }
    nodes.push(node(
        "Sigmoid",
        "sigmoid".to_string(),
        vec![current],
        ONNX_OUTPUT.to_string(),
    ));
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "cohort".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        doc_string: format!(
            "{} round {} (job {}); input: preprocessed features {:?}",
            card.job_name, card.round, card.job_id, card.feature_names
        ),
        graph: Some(GraphProto {
            node: nodes,
            name: card.job_name.clone(),
            initializer,
            input: vec![float_matrix(ONNX_INPUT, card.n_features as i64)],
            output: vec![float_matrix(ONNX_OUTPUT, 1)],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
    };
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init_parameters;
    use crate::tests::card_for;

    #[test]
    fn graph_is_one_gemm_per_layer_with_relus_between_and_a_sigmoid() {
        let spec = ModelSpec::Mlp {
            hidden: vec![4, 3],
            cut: None,
        };
        let params = init_parameters(&spec, 5, 1);
        let bytes = to_onnx(&card_for(spec, 5, &params), &params).unwrap();
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(model.ir_version, IR_VERSION);
        assert_eq!(model.opset_import[0].version, OPSET);
        let graph = model.graph.unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Sigmoid"]);
        assert_eq!(graph.input[0].name, ONNX_INPUT);
        assert_eq!(graph.node.last().unwrap().output, [ONNX_OUTPUT]);
        // Initializers carry the flat vector's values, tensor by tensor.
        let flat: Vec<f32> = graph
            .initializer
            .iter()
            .flat_map(|t| {
                t.raw_data
                    .chunks(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(flat, params);
        assert_eq!(graph.initializer[0].dims, [5, 4]);
    }

    #[test]
    fn wrong_parameter_count_is_refused() {
        let params = [0.0; 4];
        let card = card_for(ModelSpec::Logistic, 3, &params);
        assert!(to_onnx(&card, &params[..3]).is_err());
    }
}
