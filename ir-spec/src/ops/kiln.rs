//! Kiln's own ops (domain `kiln`): hand-written schemas and inference rules,
//! kept apart from the generated ONNX table (`schemas.rs`) so regenerating
//! that table cannot lose them. SPEC.md documents them (section 5.4, from
//! the end of `spec/intro.md`).

use super::schema::{AttrSpec, InferCtx, InferError, ParamOption, RawSchema};
use crate::attr::AttrKind;
use crate::types::Type;

/// The activations a `kiln.FusedConv` may apply to its result.
pub const FUSED_CONV_ACTIVATIONS: &[&str] = &["Relu", "Clip", "Swish", "HardSwish"];

/// The `kind`s a `kiln.Fusion` may have.
pub const FUSION_KINDS: &[&str] = &["elementwise", "reduction", "epilogue"];

pub(super) static KILN_SCHEMAS: &[RawSchema] = &[
    RawSchema {
    name: "kiln.Fusion",
    domain: "kiln",
    since_version: 1,
    deprecated: false,
    min_inputs: 0,
    max_inputs: usize::MAX,
    min_outputs: 1,
    max_outputs: usize::MAX,
    input_names: &["inputs"],
    input_options: &[ParamOption::Variadic],
    output_names: &["outputs"],
    attrs: &[
        AttrSpec {
            name: "body",
            kind: AttrKind::Graph,
            required: true,
        },
        AttrSpec {
            name: "kind",
            kind: AttrKind::String,
            required: true,
        },
    ],
    summary:
        "A group of ops fused into one kernel: runs `body` on the operands and returns its outputs.",
    },
    RawSchema {
        name: "kiln.DequantMatMul",
        domain: "kiln",
        since_version: 1,
        deprecated: false,
        min_inputs: 3,
        max_inputs: 4,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["A", "W", "W_scale", "W_zero_point"],
        input_options: &[
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Optional,
        ],
        output_names: &["Y"],
        attrs: &[
            AttrSpec {
                name: "axis",
                kind: AttrKind::Int,
                required: false,
            },
            AttrSpec {
                name: "block_size",
                kind: AttrKind::Int,
                required: false,
            },
        ],
        summary: "A MatMul whose right operand stays quantized: Y = MatMul(A, DequantizeLinear(W, W_scale, W_zero_point; axis, block_size)).",
    },
    RawSchema {
        name: "kiln.DequantLSTM",
        domain: "kiln",
        since_version: 1,
        deprecated: false,
        min_inputs: 12,
        max_inputs: 12,
        min_outputs: 0,
        max_outputs: 3,
        input_names: &[
            "X",
            "W",
            "R",
            "B",
            "sequence_lens",
            "initial_h",
            "initial_c",
            "P",
            "W_scale",
            "W_zero_point",
            "R_scale",
            "R_zero_point",
        ],
        input_options: &[
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Optional,
            ParamOption::Optional,
            ParamOption::Optional,
            ParamOption::Optional,
            ParamOption::Optional,
            ParamOption::Single,
            ParamOption::Optional,
            ParamOption::Single,
            ParamOption::Optional,
        ],
        output_names: &["Y", "Y_h", "Y_c"],
        attrs: &[
            AttrSpec {
                name: "activation_alpha",
                kind: AttrKind::Floats,
                required: false,
            },
            AttrSpec {
                name: "activation_beta",
                kind: AttrKind::Floats,
                required: false,
            },
            AttrSpec {
                name: "activations",
                kind: AttrKind::Strings,
                required: false,
            },
            AttrSpec {
                name: "clip",
                kind: AttrKind::Float,
                required: false,
            },
            AttrSpec {
                name: "direction",
                kind: AttrKind::String,
                required: false,
            },
            AttrSpec {
                name: "hidden_size",
                kind: AttrKind::Int,
                required: false,
            },
            AttrSpec {
                name: "input_forget",
                kind: AttrKind::Int,
                required: false,
            },
            AttrSpec {
                name: "layout",
                kind: AttrKind::Int,
                required: false,
            },
        ],
        summary: "An LSTM whose W and R stay quantized: LSTM(X, DequantizeLinear(W, W_scale, W_zero_point), DequantizeLinear(R, R_scale, R_zero_point), B, sequence_lens, initial_h, initial_c, P), W and R in LSTM's layout, scales and zero points per direction ([D]) or per direction and gate row ([D, 4*hidden, 1]).",
    },
    RawSchema {
        name: "kiln.FusedConv",
        domain: "kiln",
        since_version: 1,
        deprecated: false,
        min_inputs: 2,
        max_inputs: 4,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["X", "W", "B", "Z"],
        input_options: &[
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Optional,
            ParamOption::Optional,
        ],
        output_names: &["Y"],
        attrs: &[
            AttrSpec {
                name: "activation",
                kind: AttrKind::String,
                required: false,
            },
            AttrSpec {
                name: "auto_pad",
                kind: AttrKind::String,
                required: false,
            },
            AttrSpec {
                name: "dilations",
                kind: AttrKind::Ints,
                required: false,
            },
            AttrSpec {
                name: "group",
                kind: AttrKind::Int,
                required: false,
            },
            AttrSpec {
                name: "kernel_shape",
                kind: AttrKind::Ints,
                required: false,
            },
            AttrSpec {
                name: "max",
                kind: AttrKind::Float,
                required: false,
            },
            AttrSpec {
                name: "min",
                kind: AttrKind::Float,
                required: false,
            },
            AttrSpec {
                name: "pads",
                kind: AttrKind::Ints,
                required: false,
            },
            AttrSpec {
                name: "strides",
                kind: AttrKind::Ints,
                required: false,
            },
        ],
        summary: "A Conv whose epilogue rides on its tiles: Y = activation(Conv(X, W, B) + Z), Z (the residual) optional, activation `Relu`, `Clip` (bounds `min`, `max`) or none.",
    },
    RawSchema {
        name: "kiln.Lookup",
        domain: "kiln",
        since_version: 1,
        deprecated: false,
        min_inputs: 2,
        max_inputs: 2,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["X", "Table"],
        input_options: &[ParamOption::Single, ParamOption::Single],
        output_names: &["Y"],
        attrs: &[],
        summary: "A function of 8-bit values by table: Y[i] = Table[X[i] - lowest value of X's type].",
    },
];

/// `kiln.Lookup`: X's shape, the table's element type; X and the table
/// are 8-bit, the table a vector of 256 values.
pub(super) fn lookup(c: &InferCtx) -> Result<Vec<Type>, InferError> {
    let invalid = |msg: String| InferError::Invalid(msg);
    let (Some(Type::Tensor(x)), Some(Type::Tensor(table))) = (c.input(0), c.input(1)) else {
        return Err(invalid("kiln.Lookup takes two tensors".into()));
    };
    let byte = |e: crate::ElemType| matches!(e, crate::ElemType::U8 | crate::ElemType::I8);
    if !byte(x.elem) || !byte(table.elem) {
        return Err(invalid(format!(
            "X and Table must be u8 or i8, not {} and {}",
            x.elem, table.elem
        )));
    }
    if let Some(dims) = table.static_shape() {
        if dims != [256] {
            return Err(invalid(format!(
                "Table must have shape [256], not {dims:?}"
            )));
        }
    }
    Ok(vec![Type::Tensor(crate::TensorType {
        elem: table.elem,
        quant: None,
        ..x.clone()
    })])
}

/// `kiln.Fusion`: the results have the types of the body's outputs.
pub(super) fn fusion(c: &InferCtx) -> Result<Vec<Type>, InferError> {
    let Some(outs) = c.region("body") else {
        return Err(InferError::Invalid(
            "kiln.Fusion needs a `body` graph".into(),
        ));
    };
    if outs.len() != c.num_outputs {
        return Err(InferError::Invalid(format!(
            "body has {} outputs, the node {} results",
            outs.len(),
            c.num_outputs
        )));
    }
    if let Some(k) = c.attr_str("kind") {
        if !FUSION_KINDS.contains(&k) {
            return Err(InferError::BadAttr {
                name: "kind".into(),
                msg: format!("`{k}` is not one of {}", FUSION_KINDS.join(", ")),
            });
        }
    }
    Ok(outs.to_vec())
}
