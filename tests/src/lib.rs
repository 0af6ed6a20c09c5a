//! Shared helpers for Kiln's integration tests: where the ONNX node suite
//! and the shared models are, and a small builder for ONNX graphs written
//! inside tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_compiler::onnx::proto;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The ONNX backend node tests: `../shared/onnx-backend-node` beside the
/// repository, `$KILN_NODE_SUITE`, or fetched from the onnx 1.17.0 wheel by
/// `tests/fetch-node-suite.sh` into a cache (a fresh clone elsewhere).
pub fn node_suite_dir() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_NODE_SUITE") {
        return PathBuf::from(p);
    }
    let shared = repo_root().join("../shared/onnx-backend-node");
    if shared.is_dir() {
        return shared;
    }
    let script = repo_root().join("tests/fetch-node-suite.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run tests/fetch-node-suite.sh");
    assert!(
        out.status.success(),
        "fetch-node-suite.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

/// Every test folder of the node suite, sorted.
pub fn node_tests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(node_suite_dir())
        .expect("read the node suite folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    v.sort();
    v
}

/// The model folders (holding `model.onnx`) under `dir`, sorted; empty
/// when it is absent.
fn model_folders(dir: PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("model.onnx").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The shared real models (`../shared/models/*`), sorted; empty when the
/// shared folder is absent.
pub fn shared_models() -> Vec<PathBuf> {
    model_folders(repo_root().join("../shared/models"))
}

/// The zoo's prebuilt models (`../shared/zoo/models/*`), sorted; empty
/// when the shared folder is absent.
pub fn zoo_models() -> Vec<PathBuf> {
    model_folders(repo_root().join("../shared/zoo/models"))
}

/// The names a list file of the repository holds (`tests/conformance/
/// *.txt`): one per line, `#` starts a comment.
pub fn listed(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(file)).expect("read list");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Builds small ONNX models in tests.
pub struct OnnxBuilder {
    graph: proto::GraphProto,
    opset: i64,
}

pub fn tensor_type(elem: i32, dims: &[&str]) -> proto::TypeProto {
    use proto::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d.parse::<i64>() {
                Ok(n) => Value::DimValue(n),
                Err(_) => Value::DimParam(d.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    proto::TypeProto {
        value: Some(proto::type_proto::Value::TensorType(
            proto::type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(proto::TensorShapeProto { dim }),
            },
        )),
        ..Default::default()
    }
}

pub const F32: i32 = 1;
pub const I64: i32 = 7;
pub const BOOL: i32 = 9;

pub fn attr_int(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(2),
        ..Default::default()
    }
}
pub fn attr_float(name: &str, v: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(1),
        ..Default::default()
    }
}
pub fn attr_ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(7),
        ..Default::default()
    }
}
pub fn attr_string(name: &str, v: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(3),
        ..Default::default()
    }
}
pub fn attr_graph(name: &str, g: proto::GraphProto) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        g: Some(g),
        r#type: Some(5),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32),
        float_data: values.to_vec(),
        ..Default::default()
    }
}
pub fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I64),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

impl OnnxBuilder {
    pub fn new(name: &str, opset: i64) -> OnnxBuilder {
        OnnxBuilder {
            graph: proto::GraphProto {
                name: Some(name.into()),
                ..Default::default()
            },
            opset,
        }
    }

    pub fn input(mut self, name: &str, ty: proto::TypeProto) -> Self {
        self.graph.input.push(proto::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(ty),
            ..Default::default()
        });
        self
    }

    pub fn output(mut self, name: &str, ty: proto::TypeProto) -> Self {
        self.graph.output.push(proto::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(ty),
            ..Default::default()
        });
        self
    }

    pub fn initializer(mut self, t: proto::TensorProto) -> Self {
        self.graph.initializer.push(t);
        self
    }

    pub fn node(self, op: &str, inputs: &[&str], outputs: &[&str]) -> Self {
        self.node_with(op, inputs, outputs, vec![])
    }

    pub fn node_with(
        mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<proto::AttributeProto>,
    ) -> Self {
        self.graph.node.push(proto::NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    pub fn graph(self) -> proto::GraphProto {
        self.graph
    }

    pub fn model(self) -> proto::ModelProto {
        proto::ModelProto {
            ir_version: Some(8),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            graph: Some(self.graph),
            ..Default::default()
        }
    }

    pub fn bytes(self) -> Vec<u8> {
        prost::Message::encode_to_vec(&self.model())
    }
}

/// Seeded weights in [-scale, scale) (an LCG: reproducible everywhere,
/// no dependency).
pub fn seeded_weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let step = |s: u64| {
        s.wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
    };
    let mut s = step(seed);
    (0..n)
        .map(|_| {
            s = step(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
