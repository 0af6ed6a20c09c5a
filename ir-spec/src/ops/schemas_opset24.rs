//! The ai.onnx ops added in opsets 23 and 24 (onnx 1.18 and 1.19) that
//! exporters write (Attention, RMSNormalization, RotaryEmbedding, Swish,
//! TensorScatter), written
//! by hand from the onnx 1.23 schemas, because the generated table
//! (`schemas.rs`) comes from onnx 1.17 and stops at opset 22. Exporters
//! write these now: PyTorch's dynamo exporter at opset 23 turns
//! `scaled_dot_product_attention` into `Attention` and `RMSNorm` into
//! `RMSNormalization`; without these entries such models failed to import
//! (`unknown op`). When the generator moves to a newer onnx, these entries
//! move into its output and this file goes.
//!
//! Attention is declared at version 24 (version 23 without the last
//! input, `nonpad_kv_seqlen`); version 25's sliding-window attributes are
//! not accepted (`left_window_size`, `right_window_size`).

use super::schema::{AttrSpec, ParamOption, RawSchema};
use crate::attr::AttrKind;

const fn attr(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec {
        name,
        kind,
        required: false,
    }
}

pub(super) static OPSET24_SCHEMAS: &[RawSchema] = &[
    RawSchema {
        name: "Attention",
        domain: "",
        since_version: 24,
        deprecated: false,
        min_inputs: 3,
        max_inputs: 7,
        min_outputs: 1,
        max_outputs: 4,
        input_names: &[
            "Q",
            "K",
            "V",
            "attn_mask",
            "past_key",
            "past_value",
            "nonpad_kv_seqlen",
        ],
        input_options: &[
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Optional,
            ParamOption::Optional,
            ParamOption::Optional,
            ParamOption::Optional,
        ],
        output_names: &["Y", "present_key", "present_value", "qk_matmul_output"],
        attrs: &[
            attr("is_causal", AttrKind::Int),
            attr("kv_num_heads", AttrKind::Int),
            attr("q_num_heads", AttrKind::Int),
            attr("qk_matmul_output_mode", AttrKind::Int),
            attr("scale", AttrKind::Float),
            attr("softcap", AttrKind::Float),
            attr("softmax_precision", AttrKind::Int),
        ],
        summary: "Scaled dot-product attention of query, key and value tensors (multi-head, grouped-query or multi-query), with an optional mask, causal masking, softcap and key/value cache.",
    },
    RawSchema {
        name: "RMSNormalization",
        domain: "",
        since_version: 23,
        deprecated: false,
        min_inputs: 2,
        max_inputs: 2,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["X", "scale"],
        input_options: &[ParamOption::Single, ParamOption::Single],
        output_names: &["Y"],
        attrs: &[
            attr("axis", AttrKind::Int),
            attr("epsilon", AttrKind::Float),
            attr("stash_type", AttrKind::Int),
        ],
        summary: "RMS normalization: X divided by the root mean square of its trailing axes (from `axis`), times scale.",
    },
    RawSchema {
        name: "RotaryEmbedding",
        domain: "",
        since_version: 23,
        deprecated: false,
        min_inputs: 3,
        max_inputs: 4,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["X", "cos_cache", "sin_cache", "position_ids"],
        input_options: &[
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Optional,
        ],
        output_names: &["Y"],
        attrs: &[
            attr("interleaved", AttrKind::Int),
            attr("num_heads", AttrKind::Int),
            attr("rotary_embedding_dim", AttrKind::Int),
        ],
        summary: "Rotary positional embedding (RoPE): pairs of features rotated by angles read from cos/sin caches at each token's position.",
    },
    RawSchema {
        name: "TensorScatter",
        domain: "",
        since_version: 24,
        deprecated: false,
        min_inputs: 2,
        max_inputs: 3,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["past_cache", "update", "write_indices"],
        input_options: &[
            ParamOption::Single,
            ParamOption::Single,
            ParamOption::Optional,
        ],
        output_names: &["present_cache"],
        attrs: &[attr("axis", AttrKind::Int), attr("mode", AttrKind::String)],
        summary: "A key/value cache update: past_cache with update written along the sequence axis from each batch's write index (linear or circular).",
    },
    RawSchema {
        name: "Swish",
        domain: "",
        since_version: 24,
        deprecated: false,
        min_inputs: 1,
        max_inputs: 1,
        min_outputs: 1,
        max_outputs: 1,
        input_names: &["X"],
        input_options: &[ParamOption::Single],
        output_names: &["Y"],
        attrs: &[attr("alpha", AttrKind::Float)],
        summary: "Swish: x * sigmoid(alpha * x), elementwise.",
    },
];
