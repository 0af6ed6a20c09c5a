//! Hand-written shape and type inference rules, linked to the registry by op
//! name in [`rule_for`]. Rules never guess: what cannot be known becomes
//! `Dim::Unknown` or an unranked tensor.
//!
//! This file is the dispatch table (and the fallback for ops without a
//! rule); the rules live in one module per op family, close to the
//! interpreter's kernel families:
//!
//! - `common`: the helpers every family uses (operand and attribute access,
//!   result-type constructors, shape operands, axis lists, ONNX data-type
//!   codes);
//! - `elementwise`: unary and broadcast ops, Where, casts, Dropout;
//! - `movement`: constants and shape queries, reshapes, concat/split/slice,
//!   pad, gathers, TopK/NonZero/Unique, Range, Col2Im;
//! - `resample`: Resize, Upsample, GridSample, AffineGrid;
//! - `reduce`: Reduce* and ArgMax/ArgMin;
//! - `linalg`: MatMul and its integer/QLinear forms, Gemm, Einsum, Det;
//! - `nn`: conv and pool (with their integer/QLinear forms), normalization,
//!   recurrent layers, losses, detection;
//! - `quant`: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear;
//! - `signal`: window functions, MelWeightMatrix, DFT, STFT, ImageDecoder;
//! - `strings`: StringNormalizer, StringSplit, TfIdfVectorizer;
//! - `random`: RandomNormal, RandomUniform, Multinomial;
//! - `control`: optionals, sequences, If, Loop, Scan;
//! - `ml`: the `ai.onnx.ml` domain;
//! - `training`: the `ai.onnx.preview.training` optimizers.
//!
//! Family modules import from `common` only, never from each other.

mod common;
mod control;
mod elementwise;
mod linalg;
mod ml;
mod movement;
mod nn;
mod quant;
mod random;
mod reduce;
mod resample;
mod signal;
mod strings;
mod training;

use super::schema::{InferCtx, InferError, InferFn};
pub use common::elem_from_onnx;
use common::R;
use control::{
    concat_from_sequence, if_, loop_, optional, optional_get, optional_has, scan, sequence_at,
    sequence_construct, sequence_empty, sequence_insert, sequence_length, sequence_map,
    split_to_sequence,
};
use elementwise::{
    broadcast_bool, broadcast_same, cast, cast_like, dropout, like_with_dtype, same_as_input0,
    unary_bool, where_,
};
use linalg::{dequant_matmul, det, einsum, gemm, matmul, matmul_integer, qlinear_matmul};
use ml::{
    array_feature_extractor, label_encoder, ml_category_mapper, ml_classifier,
    ml_feature_vectorizer, ml_float_same_shape, ml_one_hot_encoder, ml_regressor_n_targets,
    ml_regressor_targets, ml_zip_map, tree_ensemble,
};
use movement::{
    center_crop_pad, col2im, compress, concat, constant, constant_of_shape, depth_to_space, expand,
    flatten, gather, gather_elements, gather_nd, non_zero, one_hot, pad, range, reshape, shape,
    size, slice, space_to_depth, split, squeeze, tile, topk, transpose, unique, unsqueeze,
};
use nn::{
    attention, batch_norm, conv, conv_integer, conv_transpose, fused_conv, global_pool, layer_norm,
    max_pool, max_roi_pool, max_unpool, nll_loss, nms, pool, qlinear_conv, rms_norm, rnn,
    roi_align, sce_loss,
};
use quant::{dequantize_linear, dynamic_quantize_linear, quantize_linear};
use random::{multinomial, random};
use reduce::{arg_reduce, reduce};
use resample::{affine_grid, grid_sample, resize, upsample};
use signal::{dft, image_decoder, mel_weight_matrix, stft, window_fn};
use strings::{string_normalizer, string_split, tfidf};
use training::{adagrad, adam, momentum};

/// The hand-written rule of an op, if any.
pub(crate) fn rule_for(op: &str) -> Option<InferFn> {
    Some(match op {
        // Unary, result type = operand 0 type.
        "Abs"
        | "Acos"
        | "Acosh"
        | "Asin"
        | "Asinh"
        | "Atan"
        | "Atanh"
        | "Ceil"
        | "Celu"
        | "Cos"
        | "Cosh"
        | "Elu"
        | "Erf"
        | "Exp"
        | "Floor"
        | "Gelu"
        | "HardSigmoid"
        | "HardSwish"
        | "Hardmax"
        | "LeakyRelu"
        | "Log"
        | "LogSoftmax"
        | "Mish"
        | "Swish"
        | "RotaryEmbedding"
        | "TensorScatter"
        | "Neg"
        | "Reciprocal"
        | "Relu"
        | "Round"
        | "Selu"
        | "Shrink"
        | "Sigmoid"
        | "Sign"
        | "Sin"
        | "Sinh"
        | "Softmax"
        | "Softplus"
        | "Softsign"
        | "Sqrt"
        | "Tan"
        | "Tanh"
        | "ThresholdedRelu"
        | "BitwiseNot"
        | "Not"
        | "Identity"
        | "CumSum"
        | "Clip"
        | "LRN"
        | "MeanVarianceNormalization"
        | "InstanceNormalization"
        | "Trilu"
        | "ReverseSequence"
        | "LpNormalization"
        | "GroupNormalization"
        | "PRelu"
        | "ScatterElements"
        | "ScatterND"
        | "Scatter"
        | "ai.onnx.ml.Binarizer"
        | "SequenceErase" => same_as_input0,
        "ai.onnx.ml.Normalizer" | "ai.onnx.ml.Scaler" => ml_float_same_shape,
        "ai.onnx.ml.Imputer" => same_as_input0,
        "ai.onnx.ml.LinearRegressor" => ml_regressor_targets,
        "ai.onnx.ml.TreeEnsembleRegressor" => ml_regressor_n_targets,
        "ai.onnx.ml.LinearClassifier"
        | "ai.onnx.ml.SVMClassifier"
        | "ai.onnx.ml.TreeEnsembleClassifier" => ml_classifier,
        "ai.onnx.ml.CategoryMapper" => ml_category_mapper,
        "ai.onnx.ml.OneHotEncoder" => ml_one_hot_encoder,
        "ai.onnx.ml.FeatureVectorizer" => ml_feature_vectorizer,
        "ai.onnx.ml.ZipMap" => ml_zip_map,
        "MaxRoiPool" => max_roi_pool,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "BitShift" | "BitwiseAnd" | "BitwiseOr"
        | "BitwiseXor" | "Max" | "Min" | "Mean" | "Sum" | "StringConcat" => broadcast_same,
        "Equal" | "Greater" | "GreaterOrEqual" | "Less" | "LessOrEqual" | "And" | "Or" | "Xor" => {
            broadcast_bool
        }
        "IsInf" | "IsNaN" | "RegexFullMatch" => unary_bool,
        "Where" => where_,
        "Cast" => cast,
        "CastLike" => cast_like,
        "Constant" => constant,
        "ConstantOfShape" => constant_of_shape,
        "Shape" => shape,
        "Size" => size,
        "Reshape" => reshape,
        "Flatten" => flatten,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        "Transpose" => transpose,
        "Expand" => expand,
        "Tile" => tile,
        "Concat" => concat,
        "Split" => split,
        "Slice" => slice,
        "Gather" => gather,
        "GatherElements" => gather_elements,
        "GatherND" => gather_nd,
        "Compress" => compress,
        "Pad" => pad,
        "CenterCropPad" => center_crop_pad,
        "Resize" => resize,
        "Upsample" => upsample,
        "DepthToSpace" => depth_to_space,
        "SpaceToDepth" => space_to_depth,
        "OneHot" => one_hot,
        "TopK" => topk,
        "ArgMax" | "ArgMin" => arg_reduce,
        "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceMax"
        | "ReduceMean" | "ReduceMin" | "ReduceProd" | "ReduceSum" | "ReduceSumSquare" => reduce,
        "NonZero" => non_zero,
        "Unique" => unique,
        "Range" => range,
        "Einsum" => einsum,
        "MatMul" => matmul,
        "MatMulInteger" => matmul_integer,
        "QLinearMatMul" => qlinear_matmul,
        "Gemm" => gemm,
        "Det" => det,
        "Conv" | "DeformConv" => conv,
        "ConvInteger" => conv_integer,
        "QLinearConv" => qlinear_conv,
        "ConvTranspose" => conv_transpose,
        "AveragePool" | "LpPool" => pool,
        "MaxPool" => max_pool,
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => global_pool,
        "MaxUnpool" => max_unpool,
        "Col2Im" => col2im,
        "BatchNormalization" => batch_norm,
        "LayerNormalization" => layer_norm,
        "RMSNormalization" => rms_norm,
        "Attention" => attention,
        "Dropout" => dropout,
        "RNN" | "GRU" | "LSTM" | "kiln.DequantLSTM" => rnn,
        "QuantizeLinear" => quantize_linear,
        "DequantizeLinear" => dequantize_linear,
        "DynamicQuantizeLinear" => dynamic_quantize_linear,
        "EyeLike" | "RandomUniformLike" | "RandomNormalLike" | "Bernoulli" => like_with_dtype,
        "RandomNormal" | "RandomUniform" => random,
        "Multinomial" => multinomial,
        "BlackmanWindow" | "HammingWindow" | "HannWindow" => window_fn,
        "MelWeightMatrix" => mel_weight_matrix,
        "DFT" => dft,
        "STFT" => stft,
        "AffineGrid" => affine_grid,
        "GridSample" => grid_sample,
        "RoiAlign" => roi_align,
        "NonMaxSuppression" => nms,
        "ImageDecoder" => image_decoder,
        "StringNormalizer" => string_normalizer,
        "StringSplit" => string_split,
        "TfIdfVectorizer" => tfidf,
        "NegativeLogLikelihoodLoss" => nll_loss,
        "SoftmaxCrossEntropyLoss" => sce_loss,
        "Optional" => optional,
        "OptionalGetElement" => optional_get,
        "OptionalHasElement" => optional_has,
        "SequenceAt" => sequence_at,
        "SequenceConstruct" => sequence_construct,
        "SequenceEmpty" => sequence_empty,
        "SequenceInsert" => sequence_insert,
        "SequenceLength" => sequence_length,
        "SequenceMap" => sequence_map,
        "SplitToSequence" => split_to_sequence,
        "ConcatFromSequence" => concat_from_sequence,
        "If" => if_,
        "Loop" => loop_,
        "Scan" => scan,
        "ai.onnx.ml.ArrayFeatureExtractor" => array_feature_extractor,
        "ai.onnx.ml.LabelEncoder" => label_encoder,
        "ai.onnx.ml.TreeEnsemble" => tree_ensemble,
        "ai.onnx.preview.training.Adagrad" => adagrad,
        "ai.onnx.preview.training.Adam" => adam,
        "ai.onnx.preview.training.Momentum" => momentum,
        "kiln.Fusion" => super::kiln::fusion,
        "kiln.FusedConv" => fused_conv,
        "kiln.DequantMatMul" => dequant_matmul,
        "kiln.Lookup" => super::kiln::lookup,
        _ => return None,
    })
}

/// Ops without a hand-written rule keep their declared result types.
pub(crate) fn fallback(c: &InferCtx) -> R {
    (0..c.num_outputs)
        .map(|i| {
            c.declared
                .get(i)
                .copied()
                .flatten()
                .cloned()
                .ok_or_else(|| InferError::Invalid(format!("no inference rule for `{}`", c.op)))
        })
        .collect()
}
