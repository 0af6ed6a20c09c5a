//! Hand-written shape and type inference rules, linked to the registry by op
//! name in [`rule_for`]. Rules never guess: what cannot be known becomes
//! `Dim::Unknown` or an unranked tensor.

use super::dims::*;
use super::geometry::{self, AutoPad};
use super::{InferCtx, InferError};
use crate::attr::Attr;
use crate::types::{dims_product, Dim, ElemType, TensorType, Type};

type R = Result<Vec<Type>, InferError>;

/// ONNX `TensorProto.DataType` code to element type.
pub fn elem_from_onnx(code: i64) -> Option<ElemType> {
    Some(match code {
        1 => ElemType::F32,
        2 => ElemType::U8,
        3 => ElemType::I8,
        4 => ElemType::U16,
        5 => ElemType::I16,
        6 => ElemType::I32,
        7 => ElemType::I64,
        8 => ElemType::String,
        9 => ElemType::Bool,
        10 => ElemType::F16,
        11 => ElemType::F64,
        12 => ElemType::U32,
        13 => ElemType::U64,
        14 => ElemType::C64,
        15 => ElemType::C128,
        16 => ElemType::BF16,
        17 => ElemType::F8E4M3FN,
        18 => ElemType::F8E4M3FNUZ,
        19 => ElemType::F8E5M2,
        20 => ElemType::F8E5M2FNUZ,
        21 => ElemType::U4,
        22 => ElemType::I4,
        _ => return None,
    })
}

/// The hand-written rule of an op, if any.
pub(crate) fn rule_for(op: &str) -> Option<super::InferFn> {
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
        "Dropout" => dropout,
        "RNN" | "GRU" | "LSTM" => rnn,
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

// ---------------------------------------------------------------- helpers

fn err(msg: impl Into<String>) -> InferError {
    InferError::Invalid(msg.into())
}

fn bad_attr(name: &str, msg: impl Into<String>) -> InferError {
    InferError::BadAttr {
        name: name.into(),
        msg: msg.into(),
    }
}

fn ty<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a Type, InferError> {
    c.input(i).ok_or(InferError::MissingInput {
        index: i,
        what: "operand",
    })
}

fn tensor<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a TensorType, InferError> {
    match ty(c, i)? {
        Type::Tensor(t) => Ok(t),
        _ => Err(InferError::BadInput {
            index: i,
            msg: "expected a tensor".into(),
        }),
    }
}

fn elem(c: &InferCtx, i: usize) -> Result<ElemType, InferError> {
    Ok(tensor(c, i)?.elem)
}

fn shape_of<'a>(c: &InferCtx<'a>, i: usize) -> Result<Option<&'a [Dim]>, InferError> {
    Ok(tensor(c, i)?.shape.as_deref())
}

fn t(e: ElemType, shape: Vec<Dim>) -> Type {
    Type::tensor(e, shape)
}

fn t_opt(e: ElemType, shape: Option<Vec<Dim>>) -> Type {
    Type::Tensor(TensorType {
        elem: e,
        shape,
        quant: None,
    })
}

fn unranked(e: ElemType) -> Type {
    Type::Tensor(TensorType::unranked(e))
}

fn unknown_dims(n: usize) -> Vec<Dim> {
    vec![Dim::Unknown; n]
}

fn k(n: u64) -> Dim {
    Dim::Known(n)
}

fn axis_of(c: &InferCtx, name: &str, default: i64, rank: usize) -> Result<usize, InferError> {
    let a = c.attr_int(name, default);
    norm_axis(a, rank)
        .ok_or_else(|| bad_attr(name, format!("axis {a} out of range for rank {rank}")))
}

fn dtype_attr(c: &InferCtx, name: &str) -> Result<Option<ElemType>, InferError> {
    match c.attr(name).and_then(Attr::as_int) {
        None => Ok(None),
        Some(code) => elem_from_onnx(code)
            .map(Some)
            .ok_or_else(|| bad_attr(name, format!("unknown data type {code}"))),
    }
}

/// Keeps the rule's result count equal to the node's: extra optional
/// results get types from `more`.
fn fill(mut v: Vec<Type>, n: usize) -> Vec<Type> {
    v.truncate(n.max(1));
    v
}

/// The scalar value of a constant integer operand.
fn const_scalar(c: &InferCtx, i: usize) -> Option<i64> {
    let v = c.const_ints(i)?;
    (v.len() == 1).then(|| v[0])
}

fn known_u64(v: i64) -> Option<Dim> {
    u64::try_from(v).ok().map(Dim::Known)
}

// ------------------------------------------------------------ elementwise

fn same_as_input0(c: &InferCtx) -> R {
    let t0 = ty(c, 0)?.clone();
    Ok(vec![t0; c.num_outputs.max(1)])
}

fn broadcast_inputs(c: &InferCtx) -> Result<Option<Vec<Dim>>, InferError> {
    let mut shapes = vec![];
    for i in 0..c.inputs.len() {
        match shape_of(c, i)? {
            Some(s) => shapes.push(s),
            None => return Ok(None),
        }
    }
    broadcast_shapes(&shapes).map(Some).map_err(err)
}

fn broadcast_same(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    Ok(vec![t_opt(e, broadcast_inputs(c)?)])
}

fn broadcast_bool(c: &InferCtx) -> R {
    elem(c, 0)?;
    Ok(vec![t_opt(ElemType::Bool, broadcast_inputs(c)?)])
}

fn unary_bool(c: &InferCtx) -> R {
    Ok(vec![t_opt(
        ElemType::Bool,
        shape_of(c, 0)?.map(|s| s.to_vec()),
    )])
}

fn where_(c: &InferCtx) -> R {
    let e = elem(c, 1)?;
    Ok(vec![t_opt(e, broadcast_inputs(c)?)])
}

fn cast(c: &InferCtx) -> R {
    let to = dtype_attr(c, "to")?.ok_or_else(|| bad_attr("to", "required"))?;
    Ok(vec![t_opt(to, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

fn cast_like(c: &InferCtx) -> R {
    Ok(vec![t_opt(
        elem(c, 1)?,
        shape_of(c, 0)?.map(|s| s.to_vec()),
    )])
}

fn like_with_dtype(c: &InferCtx) -> R {
    let e = match dtype_attr(c, "dtype")? {
        Some(e) => e,
        None => elem(c, 0)?,
    };
    Ok(vec![t_opt(e, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

fn random(c: &InferCtx) -> R {
    let e = dtype_attr(c, "dtype")?.unwrap_or(ElemType::F32);
    let s = c
        .attr_ints("shape")
        .ok_or_else(|| bad_attr("shape", "required"))?;
    let dims = s
        .iter()
        .map(|&d| known_u64(d).ok_or_else(|| bad_attr("shape", "negative dim")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![t(e, dims)])
}

fn multinomial(c: &InferCtx) -> R {
    let e = dtype_attr(c, "dtype")?.unwrap_or(ElemType::I32);
    let n = shape_of(c, 0)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let ss = known_u64(c.attr_int("sample_size", 1)).unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n, ss])])
}

// -------------------------------------------------------------- constants

fn constant(c: &InferCtx) -> R {
    let a = c
        .attrs
        .iter()
        .find(|(k, _)| k.starts_with("value") || *k == "sparse_value")
        .map(|(_, a)| a)
        .ok_or_else(|| err("Constant needs one value attribute"))?;
    Ok(vec![match a {
        Attr::Tensor(d) => Type::Tensor(TensorType::known(d.elem, &d.shape)),
        Attr::Float(_) => t(ElemType::F32, vec![]),
        Attr::Int(_) => t(ElemType::I64, vec![]),
        Attr::String(_) => t(ElemType::String, vec![]),
        Attr::Floats(v) => t(ElemType::F32, vec![k(v.len() as u64)]),
        Attr::Ints(v) => t(ElemType::I64, vec![k(v.len() as u64)]),
        Attr::Strings(v) => t(ElemType::String, vec![k(v.len() as u64)]),
        _ => return Err(err("unsupported Constant value attribute")),
    }])
}

/// Dims from a 1-D shape operand whose values are known (constant or
/// propagated); otherwise the rank from the operand's static length.
fn shape_operand(c: &InferCtx, i: usize) -> Result<Option<Vec<Dim>>, InferError> {
    if let Some(v) = c.int_values(i) {
        return v
            .into_iter()
            .map(|d| match d {
                None => Ok(Dim::Unknown),
                Some(e) => match e.as_const() {
                    Some(n) if n < 0 => Err(InferError::BadInput {
                        index: i,
                        msg: format!("negative dim {n}"),
                    }),
                    _ => Ok(Dim::from_expr(e)),
                },
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some);
    }
    Ok(shape_len(c, i).map(unknown_dims))
}

/// Ranks above this are treated as unknown (a shape operand claiming more
/// dims is malformed, and must not make us allocate).
const MAX_RANK: u64 = 1024;

/// The static length of a 1-D operand.
fn shape_len(c: &InferCtx, i: usize) -> Option<usize> {
    let s = c.input(i)?.as_tensor()?.shape.as_ref()?;
    match s.as_slice() {
        [Dim::Known(n)] if *n <= MAX_RANK => usize::try_from(*n).ok(),
        [] => Some(1),
        _ => None,
    }
}

fn constant_of_shape(c: &InferCtx) -> R {
    let e = c
        .attr("value")
        .and_then(Attr::as_tensor)
        .map(|d| d.elem)
        .unwrap_or(ElemType::F32);
    Ok(vec![t_opt(e, shape_operand(c, 0)?)])
}

fn shape(c: &InferCtx) -> R {
    let n = match shape_of(c, 0)? {
        None => Dim::Unknown,
        Some(s) => {
            let r = s.len() as i64;
            let clamp = |v: i64| {
                if v < 0 {
                    (v.saturating_add(r)).max(0)
                } else {
                    v.min(r)
                }
            };
            let start = clamp(c.attr_int("start", 0));
            let end = clamp(c.attr_int("end", r));
            k((end - start).max(0) as u64)
        }
    };
    Ok(vec![t(ElemType::I64, vec![n])])
}

fn size(c: &InferCtx) -> R {
    tensor(c, 0)?;
    Ok(vec![t(ElemType::I64, vec![])])
}

// ---------------------------------------------------------- shape changes

fn reshape(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let input = shape_of(c, 0)?;
    let Some(target) = c.int_values(1) else {
        return Ok(vec![t_opt(e, shape_len(c, 1).map(unknown_dims))]);
    };
    let allowzero = c.attr_int("allowzero", 0) != 0;
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, tv) in target.iter().enumerate() {
        // Symbolic entries are sizes; unknown entries may be 0 or -1.
        let d = match tv.as_ref().map(|x| (x.as_const(), x)) {
            Some((Some(c), _)) => c,
            Some((None, x)) => {
                out.push(Dim::from_expr(x.clone()));
                continue;
            }
            // Could be 0 (copy) or -1 (infer): only the rank is known.
            None => return Ok(vec![t(e, unknown_dims(target.len()))]),
        };
        out.push(match d {
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err(InferError::BadInput {
                        index: 1,
                        msg: "more than one -1".into(),
                    });
                }
                Dim::Unknown
            }
            0 if !allowzero => match input {
                Some(s) => s.get(i).cloned().ok_or_else(|| InferError::BadInput {
                    index: 1,
                    msg: format!("0 at position {i} beyond the input rank {}", s.len()),
                })?,
                None => Dim::Unknown,
            },
            d if d < 0 => {
                return Err(InferError::BadInput {
                    index: 1,
                    msg: format!("invalid dim {d}"),
                })
            }
            d => k(d as u64),
        });
    }
    if let (Some(i), Some(s)) = (infer_at, input) {
        let total = dims_product(s);
        let others: Vec<Dim> = out
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, d)| d.clone())
            .collect();
        let known = dims_product(&others);
        if let (Dim::Known(a), Dim::Known(b)) = (&total, &known) {
            if *b == 0 || a % b != 0 {
                return Err(InferError::BadInput {
                    index: 1,
                    msg: format!("cannot reshape {a} elements into a multiple of {b}"),
                });
            }
        }
        out[i] = div_exact(&total, &known);
    }
    if let (Some(s), None) = (input, infer_at) {
        if let (Dim::Known(a), Dim::Known(b)) = (dims_product(s), dims_product(&out)) {
            if a != b {
                return Err(InferError::BadInput {
                    index: 1,
                    msg: format!("cannot reshape {a} elements into {b}"),
                });
            }
        }
    }
    Ok(vec![t(e, out)])
}

fn flatten(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(2))]);
    };
    let r = s.len();
    let a = c.attr_int("axis", 1);
    let a = if a < 0 { a + r as i64 } else { a };
    if a < 0 || a > r as i64 {
        return Err(bad_attr("axis", format!("{a} out of range for rank {r}")));
    }
    let a = a as usize;
    Ok(vec![t(
        e,
        vec![dims_product(&s[..a]), dims_product(&s[a..])],
    )])
}

fn norm_axes(axes: &[i64], rank: usize, what: &str) -> Result<Vec<usize>, InferError> {
    let mut out = vec![];
    for &a in axes {
        let n = norm_axis(a, rank)
            .ok_or_else(|| err(format!("{what} axis {a} out of range for rank {rank}")))?;
        if out.contains(&n) {
            return Err(err(format!("{what} axis {a} repeated")));
        }
        out.push(n);
    }
    Ok(out)
}

fn squeeze(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    if c.has_input(1) {
        let Some(axes) = c.const_ints(1) else {
            return Ok(vec![t_opt(
                e,
                shape_len(c, 1)
                    .and_then(|n| s.len().checked_sub(n))
                    .map(unknown_dims),
            )]);
        };
        let axes = norm_axes(&axes, s.len(), "squeeze")?;
        for &a in &axes {
            if let Dim::Known(d) = s[a] {
                if d != 1 {
                    return Err(err(format!("cannot squeeze axis {a} of size {d}")));
                }
            }
        }
        let out = s
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, d)| d.clone());
        return Ok(vec![t(e, out.collect())]);
    }
    if s.iter().any(|d| !matches!(d, Dim::Known(_))) {
        return Ok(vec![unranked(e)]);
    }
    Ok(vec![t(
        e,
        s.iter().filter(|d| !d.is_one()).cloned().collect(),
    )])
}

fn unsqueeze(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?;
    let Some(axes) = c.const_ints(1) else {
        let r = s.map(|s| s.len()).zip(shape_len(c, 1)).map(|(a, b)| a + b);
        return Ok(vec![t_opt(e, r.map(unknown_dims))]);
    };
    let Some(s) = s else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len() + axes.len();
    let axes = norm_axes(&axes, r, "unsqueeze")?;
    let mut src = s.iter();
    let out = (0..r)
        .map(|i| {
            if axes.contains(&i) {
                k(1)
            } else {
                src.next().cloned().unwrap_or(Dim::Unknown)
            }
        })
        .collect();
    Ok(vec![t(e, out)])
}

fn transpose(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![t_opt(
            e,
            c.attr_ints("perm").map(|p| unknown_dims(p.len())),
        )]);
    };
    let perm: Vec<i64> = match c.attr_ints("perm") {
        Some(p) => p.to_vec(),
        None => (0..s.len() as i64).rev().collect(),
    };
    if perm.len() != s.len() {
        return Err(bad_attr(
            "perm",
            format!("length {} for rank {}", perm.len(), s.len()),
        ));
    }
    let p = norm_axes(&perm, s.len(), "perm")?;
    Ok(vec![t(e, p.iter().map(|&i| s[i].clone()).collect())])
}

fn expand(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(s), Some(target)) = (shape_of(c, 0)?, shape_operand(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    Ok(vec![t(e, broadcast_shapes(&[s, &target]).map_err(err)?)])
}

fn tile(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let Some(rep) = c.const_ints(1) else {
        return Ok(vec![t(e, unknown_dims(s.len()))]);
    };
    if rep.len() != s.len() {
        return Err(InferError::BadInput {
            index: 1,
            msg: "repeats length must equal the rank".into(),
        });
    }
    let out = s
        .iter()
        .zip(&rep)
        .map(|(d, &r)| {
            u64::try_from(r)
                .map(|r| mul_const(d, r))
                .map_err(|_| err("negative repeat"))
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![t(e, out)])
}

fn concat(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let mut shapes = vec![];
    for i in 0..c.inputs.len() {
        if c.has_input(i) {
            match shape_of(c, i)? {
                Some(s) => shapes.push(s),
                None => return Ok(vec![unranked(e)]),
            }
        }
    }
    let r = shapes
        .first()
        .map(|s| s.len())
        .ok_or_else(|| err("Concat needs an operand"))?;
    if shapes.iter().any(|s| s.len() != r) {
        return Err(err("Concat operands have different ranks"));
    }
    let a = axis_of(c, "axis", 0, r)?;
    let mut out = shapes[0].to_vec();
    for s in &shapes[1..] {
        for i in 0..r {
            out[i] = if i == a {
                out[i].add(&s[i])
            } else {
                merge_dim(&out[i], &s[i]).map_err(err)?
            };
        }
    }
    Ok(vec![t(e, out)])
}

fn split(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let n = c.num_outputs.max(1);
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e); n]);
    };
    let a = axis_of(c, "axis", 0, s.len())?;
    let parts: Vec<Dim> = if c.has_input(1) {
        match c.const_ints(1) {
            Some(v) => {
                if v.len() != n {
                    return Err(InferError::BadInput {
                        index: 1,
                        msg: format!("{} sizes for {n} results", v.len()),
                    });
                }
                if let Some(total) = s[a].as_known() {
                    if v.iter().try_fold(0i64, |acc, &x| acc.checked_add(x))
                        != i64::try_from(total).ok()
                    {
                        return Err(InferError::BadInput {
                            index: 1,
                            msg: format!("sizes do not sum to {total}"),
                        });
                    }
                }
                v.iter()
                    .map(|&x| known_u64(x).ok_or_else(|| err("negative split")))
                    .collect::<Result<_, _>>()?
            }
            None => unknown_dims(n),
        }
    } else {
        let parts = c.attr_int("num_outputs", n as i64);
        if parts != n as i64 {
            return Err(bad_attr(
                "num_outputs",
                format!("{parts} but the node has {n} results"),
            ));
        }
        match &s[a] {
            Dim::Known(d) => {
                let chunk = d.div_ceil(n as u64);
                let mut left = *d;
                (0..n)
                    .map(|_| {
                        let x = chunk.min(left);
                        left -= x;
                        k(x)
                    })
                    .collect()
            }
            d => vec![div_exact(d, &k(n as u64)); n],
        }
    };
    Ok(parts
        .into_iter()
        .map(|p| {
            let mut o = s.to_vec();
            o[a] = p;
            t(e, o)
        })
        .collect())
}

const HUGE: i64 = 1 << 62;

fn slice(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let (Some(starts), Some(ends)) = (c.const_ints(1), c.const_ints(2)) else {
        return Ok(vec![t(e, unknown_dims(r))]);
    };
    if starts.len() != ends.len() {
        return Err(err("starts and ends differ in length"));
    }
    let axes: Vec<i64> = if c.has_input(3) {
        match c.const_ints(3) {
            Some(a) => a,
            None => return Ok(vec![t(e, unknown_dims(r))]),
        }
    } else {
        (0..starts.len() as i64).collect()
    };
    let steps: Vec<i64> = if c.has_input(4) {
        match c.const_ints(4) {
            Some(a) => a,
            None => return Ok(vec![t(e, unknown_dims(r))]),
        }
    } else {
        vec![1; starts.len()]
    };
    if axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(err("starts, ends, axes and steps differ in length"));
    }
    let axes = norm_axes(&axes, r, "slice")?;
    let mut out = s.to_vec();
    for (j, &a) in axes.iter().enumerate() {
        let (st, en, step) = (starts[j], ends[j], steps[j]);
        if step == 0 {
            return Err(err("slice step 0"));
        }
        out[a] = match &s[a] {
            Dim::Known(d) => {
                let d = i64::try_from(*d).unwrap_or(HUGE);
                let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
                let (st, en) = (norm(st), norm(en));
                let (st, en) = if step > 0 {
                    (st.clamp(0, d), en.clamp(0, d))
                } else {
                    (st.clamp(-1, d - 1), en.clamp(-1, d - 1))
                };
                let mag = step.unsigned_abs();
                let len = if step > 0 {
                    if en > st {
                        (en - st - 1) as u64 / mag + 1
                    } else {
                        0
                    }
                } else if st > en {
                    (st - en - 1) as u64 / mag + 1
                } else {
                    0
                };
                k(len)
            }
            d => {
                // Symbolic: only the full-range-from-a-start forward slice.
                // (An end of at least INT_MAX means "to the end".)
                if step == 1 && st >= 0 && en >= i32::MAX as i64 {
                    add_const(d, -st)
                } else {
                    Dim::Unknown
                }
            }
        };
    }
    Ok(vec![t(e, out)])
}

fn gather(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(d), Some(i)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    let a = axis_of(c, "axis", 0, d.len())?;
    let mut out = d[..a].to_vec();
    out.extend(i.iter().cloned());
    out.extend(d[a + 1..].iter().cloned());
    Ok(vec![t(e, out)])
}

fn gather_elements(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    Ok(vec![t_opt(e, shape_of(c, 1)?.map(|s| s.to_vec()))])
}

fn gather_nd(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(d), Some(i)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    let b = usize::try_from(c.attr_int("batch_dims", 0))
        .map_err(|_| bad_attr("batch_dims", "negative"))?;
    let Some(last) = i.last() else {
        return Err(err("GatherND indices must have rank >= 1"));
    };
    let Some(m) = last.as_known().and_then(|m| usize::try_from(m).ok()) else {
        return Ok(vec![unranked(e)]);
    };
    let Some(rest) = b.checked_add(m).filter(|&x| x <= d.len()) else {
        return Err(err("GatherND index depth exceeds the data rank"));
    };
    let mut out = i[..i.len() - 1].to_vec();
    out.extend(d[rest..].iter().cloned());
    Ok(vec![t(e, out)])
}

fn compress(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    match c.attr("axis") {
        None => Ok(vec![t(e, vec![Dim::Unknown])]),
        Some(_) => {
            let Some(s) = shape_of(c, 0)? else {
                return Ok(vec![unranked(e)]);
            };
            let a = axis_of(c, "axis", 0, s.len())?;
            let mut o = s.to_vec();
            o[a] = Dim::Unknown;
            Ok(vec![t(e, o)])
        }
    }
}

fn axes_operand(c: &InferCtx, i: usize, rank: usize) -> Result<Option<Vec<usize>>, InferError> {
    if !c.has_input(i) {
        return Ok(Some((0..rank).collect()));
    }
    match c.const_ints(i) {
        Some(a) => norm_axes(&a, rank, "").map(Some),
        None => Ok(None),
    }
}

fn pad(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let (Some(p), Some(axes)) = (c.const_ints(1), axes_operand(c, 3, r)?) else {
        return Ok(vec![t(e, unknown_dims(r))]);
    };
    if p.len() != 2 * axes.len() {
        return Err(InferError::BadInput {
            index: 1,
            msg: format!("{} pads for {} axes", p.len(), axes.len()),
        });
    }
    let mut out = s.to_vec();
    for (j, &a) in axes.iter().enumerate() {
        let total = p[j]
            .checked_add(p[j + axes.len()])
            .ok_or_else(|| err("pads overflow"))?;
        out[a] = add_const(&s[a], total);
    }
    Ok(vec![t(e, out)])
}

fn center_crop_pad(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let axes = match c.attr_ints("axes") {
        Some(a) => norm_axes(a, r, "")?,
        None => (0..r).collect(),
    };
    let mut out = s.to_vec();
    match c.const_ints(1) {
        Some(v) if v.len() == axes.len() => {
            for (j, &a) in axes.iter().enumerate() {
                out[a] = known_u64(v[j]).ok_or_else(|| err("negative crop size"))?;
            }
        }
        Some(_) => return Err(err("shape length differs from the number of axes")),
        None => axes.iter().for_each(|&a| out[a] = Dim::Unknown),
    }
    Ok(vec![t(e, out)])
}

/// `floor(d * scale)` when it is knowable.
fn scale_dim(d: &Dim, scale: f64) -> Dim {
    if !(scale.is_finite() && scale >= 0.0) {
        return Dim::Unknown;
    }
    match d {
        Dim::Known(n) => k((*n as f64 * scale).floor() as u64),
        _ if scale.fract() == 0.0 && scale < 1e9 => mul_const(d, scale as u64),
        _ => Dim::Unknown,
    }
}

fn resize(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let axes = match c.attr_ints("axes") {
        Some(a) => norm_axes(a, r, "")?,
        None => (0..r).collect(),
    };
    let mut out = s.to_vec();
    if c.has_input(3) {
        let Some(sizes) = c.const_ints(3) else {
            return Ok(vec![t(e, unknown_dims(r))]);
        };
        if sizes.len() != axes.len() {
            return Err(InferError::BadInput {
                index: 3,
                msg: "sizes length differs from axes".into(),
            });
        }
        let policy = c.attr_str("keep_aspect_ratio_policy").unwrap_or("stretch");
        if policy == "stretch" {
            for (j, &a) in axes.iter().enumerate() {
                out[a] = known_u64(sizes[j]).ok_or_else(|| err("negative size"))?;
            }
        } else {
            // One scale for all axes: needs every input size.
            let ins: Option<Vec<u64>> = axes.iter().map(|&a| s[a].as_known()).collect();
            match ins {
                Some(ins) if ins.iter().all(|&x| x > 0) => {
                    let ratios = ins.iter().zip(&sizes).map(|(&i, &o)| o as f64 / i as f64);
                    let sc = if policy == "not_larger" {
                        ratios.fold(f64::INFINITY, f64::min)
                    } else {
                        ratios.fold(0.0, f64::max)
                    };
                    for (j, &a) in axes.iter().enumerate() {
                        out[a] = k((ins[j] as f64 * sc).round() as u64);
                    }
                }
                _ => axes.iter().for_each(|&a| out[a] = Dim::Unknown),
            }
        }
    } else if c.has_input(2) {
        let Some(scales) = c.const_floats(2) else {
            return Ok(vec![t(e, unknown_dims(r))]);
        };
        if scales.is_empty() {
            return Ok(vec![t(e, unknown_dims(r))]);
        }
        if scales.len() != axes.len() {
            return Err(InferError::BadInput {
                index: 2,
                msg: "scales length differs from axes".into(),
            });
        }
        for (j, &a) in axes.iter().enumerate() {
            out[a] = scale_dim(&s[a], scales[j]);
        }
    } else {
        return Err(err("Resize needs scales or sizes"));
    }
    Ok(vec![t(e, out)])
}

fn upsample(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let Some(scales) = c.const_floats(1) else {
        return Ok(vec![t(e, unknown_dims(s.len()))]);
    };
    if scales.len() != s.len() {
        return Err(InferError::BadInput {
            index: 1,
            msg: "scales length differs from rank".into(),
        });
    }
    Ok(vec![t(
        e,
        s.iter()
            .zip(&scales)
            .map(|(d, &x)| scale_dim(d, x))
            .collect(),
    )])
}

fn blocksize(c: &InferCtx) -> Result<u64, InferError> {
    u64::try_from(c.attr_int("blocksize", 0))
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| bad_attr("blocksize", "must be positive"))
}

fn rank4<'a>(c: &InferCtx<'a>, i: usize) -> Result<Option<&'a [Dim]>, InferError> {
    match shape_of(c, i)? {
        Some(s) if s.len() != 4 => Err(InferError::BadInput {
            index: i,
            msg: "expected rank 4".into(),
        }),
        s => Ok(s),
    }
}

fn depth_to_space(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let b = blocksize(c)?;
    let Some(s) = rank4(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(4))]);
    };
    let bb = b.checked_mul(b).ok_or_else(|| err("blocksize overflow"))?;
    Ok(vec![t(
        e,
        vec![
            s[0].clone(),
            div_exact(&s[1], &k(bb)),
            mul_const(&s[2], b),
            mul_const(&s[3], b),
        ],
    )])
}

fn space_to_depth(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let b = blocksize(c)?;
    let Some(s) = rank4(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(4))]);
    };
    let bb = b.checked_mul(b).ok_or_else(|| err("blocksize overflow"))?;
    Ok(vec![t(
        e,
        vec![
            s[0].clone(),
            mul_const(&s[1], bb),
            div_exact(&s[2], &k(b)),
            div_exact(&s[3], &k(b)),
        ],
    )])
}

fn one_hot(c: &InferCtx) -> R {
    let e = elem(c, 2)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len() + 1;
    let a = axis_of(c, "axis", -1, r)?;
    let depth = match c.const_floats(1) {
        Some(v) if v.len() == 1 && v[0] >= 0.0 => k(v[0] as u64),
        Some(_) => {
            return Err(InferError::BadInput {
                index: 1,
                msg: "depth must be a non-negative scalar".into(),
            })
        }
        None => Dim::Unknown,
    };
    let mut out = s.to_vec();
    out.insert(a, depth);
    Ok(vec![t(e, out)])
}

fn topk(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e), unranked(ElemType::I64)]);
    };
    let a = axis_of(c, "axis", -1, s.len())?;
    let mut out = s.to_vec();
    out[a] = match const_scalar(c, 1) {
        Some(kv) => {
            let kd = known_u64(kv).ok_or_else(|| err("negative k"))?;
            if let (Dim::Known(n), Dim::Known(kk)) = (&s[a], &kd) {
                if kk > n {
                    return Err(err(format!("k = {kk} exceeds the axis size {n}")));
                }
            }
            kd
        }
        None => Dim::Unknown,
    };
    Ok(vec![t(e, out.clone()), t(ElemType::I64, out)])
}

fn reduce_shape(s: &[Dim], axes: &[usize], keep: bool) -> Vec<Dim> {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                keep.then(|| k(1))
            } else {
                Some(d.clone())
            }
        })
        .collect()
}

fn arg_reduce(c: &InferCtx) -> R {
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(ElemType::I64)]);
    };
    let a = axis_of(c, "axis", 0, s.len())?;
    Ok(vec![t(
        ElemType::I64,
        reduce_shape(s, &[a], c.attr_int("keepdims", 1) != 0),
    )])
}

fn reduce(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let keep = c.attr_int("keepdims", 1) != 0;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let axes: Vec<usize> = if c.has_input(1) {
        match c.const_ints(1) {
            Some(a) if a.is_empty() => {
                if c.attr_int("noop_with_empty_axes", 0) != 0 {
                    return Ok(vec![t(e, s.to_vec())]);
                }
                (0..r).collect()
            }
            Some(a) => norm_axes(&a, r, "reduce")?,
            None => return Ok(vec![t_opt(e, keep.then(|| unknown_dims(r)))]),
        }
    } else if let Some(a) = c.attr_ints("axes") {
        // Older forms keep axes as an attribute; accept it.
        norm_axes(a, r, "reduce")?
    } else if c.attr_int("noop_with_empty_axes", 0) != 0 {
        return Ok(vec![t(e, s.to_vec())]);
    } else {
        (0..r).collect()
    };
    Ok(vec![t(e, reduce_shape(s, &axes, keep))])
}

fn non_zero(c: &InferCtx) -> R {
    let r = shape_of(c, 0)?
        .map(|s| k(s.len() as u64))
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::I64, vec![r, Dim::Unknown])])
}

fn unique(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?;
    let (y, inv) = match (c.attr("axis"), s) {
        (None, s) => (
            vec![Dim::Unknown],
            vec![s.map(dims_product).unwrap_or(Dim::Unknown)],
        ),
        (Some(_), Some(s)) => {
            let a = axis_of(c, "axis", 0, s.len())?;
            let mut o = s.to_vec();
            o[a] = Dim::Unknown;
            (o, vec![s[a].clone()])
        }
        (Some(_), None) => {
            return Ok(fill(
                vec![
                    unranked(e),
                    t(ElemType::I64, vec![Dim::Unknown]),
                    t(ElemType::I64, vec![Dim::Unknown]),
                    t(ElemType::I64, vec![Dim::Unknown]),
                ],
                c.num_outputs,
            ))
        }
    };
    let v = vec![
        t(e, y),
        t(ElemType::I64, vec![Dim::Unknown]),
        t(ElemType::I64, inv),
        t(ElemType::I64, vec![Dim::Unknown]),
    ];
    Ok(fill(v, c.num_outputs))
}

fn range(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let n = match (c.const_floats(0), c.const_floats(1), c.const_floats(2)) {
        (Some(a), Some(b), Some(d)) if a.len() == 1 && b.len() == 1 && d.len() == 1 => {
            if d[0] == 0.0 {
                return Err(InferError::BadInput {
                    index: 2,
                    msg: "delta is zero".into(),
                });
            }
            let n = ((b[0] - a[0]) / d[0]).ceil();
            if n.is_finite() {
                k(n.max(0.0) as u64)
            } else {
                Dim::Unknown
            }
        }
        _ => Dim::Unknown,
    };
    Ok(vec![t(e, vec![n])])
}

fn einsum(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let eq: String = c
        .attr_str("equation")
        .ok_or_else(|| bad_attr("equation", "required"))?
        .chars()
        .filter(|ch| !ch.is_whitespace())
        .collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != c.inputs.len() {
        return Err(bad_attr(
            "equation",
            format!("{} terms for {} operands", terms.len(), c.inputs.len()),
        ));
    }
    let mut letters: Vec<(char, Dim, usize)> = vec![]; // letter, dim, count
    let mut ell: Option<Vec<Dim>> = Some(vec![]);
    let mut ell_rank = 0;
    let mut has_ell = false;
    for (i, term) in terms.iter().enumerate() {
        let Some(s) = shape_of(c, i)? else {
            return Ok(vec![unranked(e)]);
        };
        let explicit: Vec<char> = term.replace("...", "").chars().collect();
        if explicit.iter().any(|ch| !ch.is_ascii_alphabetic()) {
            return Err(bad_attr("equation", format!("bad term `{term}`")));
        }
        let (pre, post) = match term.find("...") {
            Some(p) => {
                has_ell = true;
                (
                    term[..p].chars().collect::<Vec<_>>(),
                    term[p + 3..].chars().collect::<Vec<_>>(),
                )
            }
            None => (explicit.clone(), vec![]),
        };
        let er = s.len().checked_sub(pre.len() + post.len()).ok_or_else(|| {
            bad_attr(
                "equation",
                format!("term `{term}` has more letters than operand {i} has dims"),
            )
        })?;
        if !term.contains("...") && er != 0 {
            return Err(bad_attr(
                "equation",
                format!("term `{term}` does not match the rank of operand {i}"),
            ));
        }
        let mut dims = s.iter();
        for &ch in &pre {
            let d = dims.next().cloned().unwrap_or(Dim::Unknown);
            add_letter(&mut letters, ch, d)?;
        }
        let ed: Vec<Dim> = dims.by_ref().take(er).cloned().collect();
        if term.contains("...") {
            ell_rank = ell_rank.max(er);
            ell = match ell {
                Some(cur) => broadcast_shapes(&[&cur, &ed]).ok(),
                None => None,
            };
        }
        for &ch in &post {
            let d = dims.next().cloned().unwrap_or(Dim::Unknown);
            add_letter(&mut letters, ch, d)?;
        }
    }
    let ell = ell.unwrap_or_else(|| unknown_dims(ell_rank));
    let mut out = vec![];
    match rhs {
        Some(r) => {
            let (pre, post) = match r.find("...") {
                Some(p) => (&r[..p], &r[p + 3..]),
                None => (r, ""),
            };
            for ch in pre.chars() {
                out.push(letter_dim(&letters, ch)?);
            }
            if r.contains("...") {
                out.extend(ell);
            }
            for ch in post.chars() {
                out.push(letter_dim(&letters, ch)?);
            }
        }
        None => {
            if has_ell {
                out.extend(ell);
            }
            let mut once: Vec<&(char, Dim, usize)> = letters.iter().filter(|l| l.2 == 1).collect();
            once.sort_by_key(|l| l.0);
            out.extend(once.into_iter().map(|l| l.1.clone()));
        }
    }
    Ok(vec![t(e, out)])
}

fn add_letter(letters: &mut Vec<(char, Dim, usize)>, ch: char, d: Dim) -> Result<(), InferError> {
    match letters.iter_mut().find(|l| l.0 == ch) {
        Some(l) => {
            l.1 = broadcast_dims(&l.1, &d)
                .map_err(|m| bad_attr("equation", format!("`{ch}`: {m}")))?;
            l.2 += 1;
        }
        None => letters.push((ch, d, 1)),
    }
    Ok(())
}

fn letter_dim(letters: &[(char, Dim, usize)], ch: char) -> Result<Dim, InferError> {
    letters
        .iter()
        .find(|l| l.0 == ch)
        .map(|l| l.1.clone())
        .ok_or_else(|| bad_attr("equation", format!("output letter `{ch}` not in any input")))
}

// ------------------------------------------------------------- linear alg

fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, InferError> {
    if a.is_empty() || b.is_empty() {
        return Err(err("MatMul operands must have rank >= 1"));
    }
    let mut a2 = a.to_vec();
    let mut b2 = b.to_vec();
    if a.len() == 1 {
        a2.insert(0, k(1));
    }
    if b.len() == 1 {
        b2.push(k(1));
    }
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(err(format!("MatMul contraction dims differ: {x} vs {y}")));
        }
    }
    let batch = broadcast_shapes(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]]).map_err(err)?;
    let mut out = batch;
    if a.len() != 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() != 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Ok(out)
}

fn matmul_with(c: &InferCtx, e: ElemType) -> R {
    let (Some(a), Some(b)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    Ok(vec![t(e, matmul_shape(a, b)?)])
}

fn matmul(c: &InferCtx) -> R {
    matmul_with(c, elem(c, 0)?)
}

fn matmul_integer(c: &InferCtx) -> R {
    matmul_with(c, ElemType::I32)
}

fn qlinear_matmul(c: &InferCtx) -> R {
    let e = elem(c, 7)?;
    let (Some(a), Some(b)) = (shape_of(c, 0)?, shape_of(c, 3)?) else {
        return Ok(vec![unranked(e)]);
    };
    Ok(vec![t(e, matmul_shape(a, b)?)])
}

fn gemm(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(a), Some(b)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![t(e, unknown_dims(2))]);
    };
    if a.len() != 2 || b.len() != 2 {
        return Err(err("Gemm operands must have rank 2"));
    }
    let (m, ka) = if c.attr_int("transA", 0) != 0 {
        (&a[1], &a[0])
    } else {
        (&a[0], &a[1])
    };
    let (kb, n) = if c.attr_int("transB", 0) != 0 {
        (&b[1], &b[0])
    } else {
        (&b[0], &b[1])
    };
    merge_dim(ka, kb).map_err(|m| err(format!("Gemm contraction: {m}")))?;
    Ok(vec![t(e, vec![m.clone(), n.clone()])])
}

fn det(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    if s.len() < 2 {
        return Err(err("Det needs rank >= 2"));
    }
    Ok(vec![t(e, s[..s.len() - 2].to_vec())])
}

// ------------------------------------------------------------ conv / pool

struct Window {
    kernel: Vec<u64>,
    strides: Vec<u64>,
    dilations: Vec<u64>,
    pads: Vec<i64>,
    auto_pad: AutoPad,
}

impl Window {
    fn axis(&self, i: usize) -> geometry::Window {
        geometry::Window::new(self.kernel[i], self.strides[i], self.dilations[i])
    }
}

fn ints_u64(c: &InferCtx, name: &str, n: usize, default: u64) -> Result<Vec<u64>, InferError> {
    match c.attr_ints(name) {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => v
            .iter()
            .map(|&x| {
                u64::try_from(x)
                    .ok()
                    .filter(|&x| x > 0)
                    .ok_or_else(|| bad_attr(name, "values must be positive"))
            })
            .collect(),
        Some(v) => Err(bad_attr(
            name,
            format!("{} values for {n} spatial dims", v.len()),
        )),
    }
}

fn window(
    c: &InferCtx,
    spatial: usize,
    kernel: Option<Vec<u64>>,
) -> Result<Option<Window>, InferError> {
    let kernel = match c.attr_ints("kernel_shape") {
        Some(_) => ints_u64(c, "kernel_shape", spatial, 1)?,
        None => match kernel {
            Some(k) => k,
            None => return Ok(None),
        },
    };
    if kernel.len() != spatial {
        return Err(bad_attr(
            "kernel_shape",
            format!("{} values for {spatial} spatial dims", kernel.len()),
        ));
    }
    if kernel.contains(&0) {
        return Err(bad_attr("kernel_shape", "kernel sizes must be positive"));
    }
    let pads = match c.attr_ints("pads") {
        None => vec![0; 2 * spatial],
        Some(p) if p.len() == 2 * spatial => p.to_vec(),
        Some(p) => {
            return Err(bad_attr(
                "pads",
                format!("{} values for {spatial} spatial dims", p.len()),
            ))
        }
    };
    Ok(Some(Window {
        kernel,
        strides: ints_u64(c, "strides", spatial, 1)?,
        dilations: ints_u64(c, "dilations", spatial, 1)?,
        pads,
        auto_pad: AutoPad::parse(c.attr_str("auto_pad")).map_err(|e| bad_attr("auto_pad", e))?,
    }))
}

/// Output dim `i` of a forward window over input dim `d` (`geometry.rs`).
fn window_out(w: &Window, i: usize, d: &Dim, ceil_mode: bool) -> Result<Dim, InferError> {
    let n = w.pads.len() / 2;
    geometry::output_dim(
        w.auto_pad,
        d,
        w.axis(i),
        [w.pads[i], w.pads[i + n]],
        ceil_mode,
    )
    .map_err(err)
}

fn conv_shape(
    c: &InferCtx,
    x: usize,
    wi: usize,
    ceil: bool,
) -> Result<Option<Vec<Dim>>, InferError> {
    let (Some(xs), Some(ws)) = (shape_of(c, x)?, shape_of(c, wi)?) else {
        return Ok(None);
    };
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(err("conv input and weight must have the same rank >= 3"));
    }
    let spatial = xs.len() - 2;
    let kernel: Option<Vec<u64>> = ws[2..].iter().map(|d| d.as_known()).collect();
    let group = u64::try_from(c.attr_int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| bad_attr("group", "must be positive"))?;
    if let (Dim::Known(ci), Dim::Known(wc)) = (&xs[1], &ws[1]) {
        if wc.checked_mul(group) != Some(*ci) {
            return Err(err(format!(
                "input channels {ci} != weight channels {wc} * group {group}"
            )));
        }
    }
    let mut out = vec![xs[0].clone(), ws[0].clone()];
    match window(c, spatial, kernel)? {
        Some(w) => {
            for i in 0..spatial {
                out.push(window_out(&w, i, &xs[2 + i], ceil)?);
            }
        }
        None => out.extend(unknown_dims(spatial)),
    }
    Ok(Some(out))
}

fn conv(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    Ok(vec![t_opt(e, conv_shape(c, 0, 1, false)?)])
}

fn conv_integer(c: &InferCtx) -> R {
    Ok(vec![t_opt(ElemType::I32, conv_shape(c, 0, 1, false)?)])
}

fn qlinear_conv(c: &InferCtx) -> R {
    let e = elem(c, 7)?;
    Ok(vec![t_opt(e, conv_shape(c, 0, 3, false)?)])
}

fn conv_transpose(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(xs), Some(ws)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(err("conv input and weight must have the same rank >= 3"));
    }
    let sp = xs.len() - 2;
    let group = u64::try_from(c.attr_int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| bad_attr("group", "must be positive"))?;
    let mut out = vec![xs[0].clone(), mul_const(&ws[1], group)];
    if let Some(os) = c.attr_ints("output_shape") {
        let os = if os.len() == xs.len() { &os[2..] } else { os };
        if os.len() != sp {
            return Err(bad_attr("output_shape", "wrong length"));
        }
        for &d in os {
            out.push(known_u64(d).ok_or_else(|| bad_attr("output_shape", "negative"))?);
        }
        return Ok(vec![t(e, out)]);
    }
    let kernel: Option<Vec<u64>> = ws[2..].iter().map(|d| d.as_known()).collect();
    let Some(w) = window(c, sp, kernel)? else {
        out.extend(unknown_dims(sp));
        return Ok(vec![t(e, out)]);
    };
    let opad = match c.attr_ints("output_padding") {
        None => vec![0; sp],
        Some(p) if p.len() == sp => p.to_vec(),
        Some(_) => return Err(bad_attr("output_padding", "wrong length")),
    };
    let pads = c.attr_ints("pads").is_some_and(|p| !p.is_empty());
    for i in 0..sp {
        let axis = geometry::Transposed {
            auto_pad: w.auto_pad,
            window: w.axis(i),
            pads: pads.then(|| [w.pads[i], w.pads[i + sp]]),
            output_padding: u64::try_from(opad[i])
                .map_err(|_| bad_attr("output_padding", "negative"))?,
            output_shape: None,
        };
        out.push(axis.output_dim(&xs[2 + i]));
    }
    Ok(vec![t(e, out)])
}

fn pool_shape(c: &InferCtx) -> Result<Option<Vec<Dim>>, InferError> {
    let Some(xs) = shape_of(c, 0)? else {
        return Ok(None);
    };
    if xs.len() < 3 {
        return Err(err("pooling input must have rank >= 3"));
    }
    let sp = xs.len() - 2;
    let w = window(c, sp, None)?.ok_or_else(|| bad_attr("kernel_shape", "required"))?;
    let ceil = c.attr_int("ceil_mode", 0) != 0;
    let mut out = xs[..2].to_vec();
    for i in 0..sp {
        out.push(window_out(&w, i, &xs[2 + i], ceil)?);
    }
    Ok(Some(out))
}

fn pool(c: &InferCtx) -> R {
    Ok(vec![t_opt(elem(c, 0)?, pool_shape(c)?)])
}

fn max_pool(c: &InferCtx) -> R {
    let s = pool_shape(c)?;
    Ok(fill(
        vec![t_opt(elem(c, 0)?, s.clone()), t_opt(ElemType::I64, s)],
        c.num_outputs,
    ))
}

fn global_pool(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?.map(|s| {
        s.iter()
            .enumerate()
            .map(|(i, d)| if i < 2 { d.clone() } else { k(1) })
            .collect()
    });
    Ok(vec![t_opt(e, s)])
}

fn max_unpool(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    if c.has_input(2) {
        return Ok(vec![t_opt(e, shape_operand(c, 2)?)]);
    }
    let Some(xs) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    if xs.len() < 3 {
        return Err(err("MaxUnpool input must have rank >= 3"));
    }
    let sp = xs.len() - 2;
    let w = window(c, sp, None)?.ok_or_else(|| bad_attr("kernel_shape", "required"))?;
    let mut out = xs[..2].to_vec();
    for i in 0..sp {
        let pads = w.pads[i].saturating_add(w.pads[i + sp]);
        out.push(add_const(
            &mul_const(&add_const(&xs[2 + i], -1), w.strides[i]),
            (w.kernel[i] as i64).saturating_sub(pads),
        ));
    }
    Ok(vec![t(e, out)])
}

fn col2im(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(img), Some(block)) = (c.const_ints(1), c.const_ints(2)) else {
        let r = shape_len(c, 1).map(|n| n + 2);
        return Ok(vec![t_opt(e, r.map(unknown_dims))]);
    };
    let Some(xs) = shape_of(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(img.len() + 2))]);
    };
    if xs.len() != 3 {
        return Err(err("Col2Im input must have rank 3"));
    }
    let bp = block
        .iter()
        .try_fold(1u64, |a, &b| {
            u64::try_from(b).ok().and_then(|b| a.checked_mul(b))
        })
        .ok_or_else(|| err("bad block_shape"))?;
    let mut out = vec![xs[0].clone(), div_exact(&xs[1], &k(bp))];
    for &d in &img {
        out.push(known_u64(d).ok_or_else(|| err("negative image dim"))?);
    }
    Ok(vec![t(e, out)])
}

// ------------------------------------------------------------ normalization

fn batch_norm(c: &InferCtx) -> R {
    let x = ty(c, 0)?.clone();
    let stat = |i: usize| -> Result<Type, InferError> { Ok(ty(c, i)?.clone()) };
    let mut v = vec![x];
    if c.num_outputs > 1 {
        v.push(stat(3)?);
        v.push(stat(4)?);
    }
    Ok(fill(v, c.num_outputs))
}

fn layer_norm(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    let stash = dtype_attr(c, "stash_type")?.unwrap_or(ElemType::F32);
    let stats = match &x.shape {
        Some(s) => {
            let a = axis_of(c, "axis", -1, s.len())?;
            Some(
                s.iter()
                    .enumerate()
                    .map(|(i, d)| if i < a { d.clone() } else { k(1) })
                    .collect(),
            )
        }
        None => None,
    };
    Ok(fill(
        vec![
            Type::Tensor(x.clone()),
            t_opt(stash, stats.clone()),
            t_opt(stash, stats),
        ],
        c.num_outputs,
    ))
}

fn dropout(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    Ok(fill(
        vec![
            Type::Tensor(x.clone()),
            t_opt(ElemType::Bool, x.shape.clone()),
        ],
        c.num_outputs,
    ))
}

fn rnn(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let xs = shape_of(c, 0)?;
    let ws = shape_of(c, 1)?;
    let layout = c.attr_int("layout", 0);
    let dirs = match c.attr_str("direction") {
        Some("bidirectional") => k(2),
        Some("forward") | Some("reverse") | None => k(1),
        Some(d) => return Err(bad_attr("direction", format!("unknown `{d}`"))),
    };
    let hidden = match c.attr("hidden_size").and_then(Attr::as_int) {
        Some(h) => known_u64(h).ok_or_else(|| bad_attr("hidden_size", "negative"))?,
        None => shape_of(c, 2)?
            .and_then(|r| r.get(2).cloned())
            .unwrap_or(Dim::Unknown),
    };
    let _ = ws;
    let (seq, batch) = match xs {
        Some(s) if s.len() == 3 => {
            if layout == 0 {
                (s[0].clone(), s[1].clone())
            } else {
                (s[1].clone(), s[0].clone())
            }
        }
        Some(_) => return Err(err("RNN input must have rank 3")),
        None => (Dim::Unknown, Dim::Unknown),
    };
    let (y, h) = if layout == 0 {
        (
            vec![seq, dirs.clone(), batch.clone(), hidden.clone()],
            vec![dirs, batch, hidden],
        )
    } else {
        (
            vec![batch.clone(), seq, dirs.clone(), hidden.clone()],
            vec![batch, dirs, hidden],
        )
    };
    Ok(fill(vec![t(e, y), t(e, h.clone()), t(e, h)], c.num_outputs))
}

// ------------------------------------------------------------ quantization

fn quantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    let e = match dtype_attr(c, "output_dtype")? {
        Some(e) => {
            if let Some(z) = c.input(2).and_then(Type::as_tensor) {
                if z.elem != e {
                    return Err(bad_attr(
                        "output_dtype",
                        format!("{e} but the zero point is {}", z.elem),
                    ));
                }
            }
            e
        }
        None => match c.input(2) {
            Some(_) => elem(c, 2)?,
            None => ElemType::U8,
        },
    };
    Ok(vec![t_opt(e, x.shape.clone())])
}

fn dequantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    Ok(vec![t_opt(elem(c, 1)?, x.shape.clone())])
}

fn dynamic_quantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    Ok(vec![
        t_opt(ElemType::U8, x.shape.clone()),
        t(ElemType::F32, vec![]),
        t(ElemType::U8, vec![]),
    ])
}

// ------------------------------------------------------------- signal etc.

fn window_fn(c: &InferCtx) -> R {
    let e = dtype_attr(c, "output_datatype")?.unwrap_or(ElemType::F32);
    let n = const_scalar(c, 0)
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n])])
}

fn mel_weight_matrix(c: &InferCtx) -> R {
    let e = dtype_attr(c, "output_datatype")?.unwrap_or(ElemType::F32);
    let bins = const_scalar(c, 0)
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    let dft = const_scalar(c, 1)
        .and_then(known_u64)
        .map(|d| add_const(&d.div_floor(2), 1))
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![dft, bins])])
}

fn dft(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    if r < 2 {
        return Err(err("DFT input must have rank >= 2"));
    }
    let axis = if c.has_input(2) {
        match const_scalar(c, 2) {
            Some(a) => Some(a),
            None => {
                return Ok(vec![t(e, {
                    let mut o = unknown_dims(r);
                    o[r - 1] = k(2);
                    o
                })])
            }
        }
    } else {
        // The v17 attribute form.
        Some(c.attr_int("axis", -2))
    };
    let a = axis
        .and_then(|a| norm_axis(a, r))
        .filter(|&a| a < r - 1)
        .ok_or_else(|| err("DFT axis out of range"))?;
    let mut out = s.to_vec();
    let n = if c.has_input(1) {
        const_scalar(c, 1)
            .and_then(known_u64)
            .unwrap_or(Dim::Unknown)
    } else {
        s[a].clone()
    };
    let onesided = c.attr_int("onesided", 0) != 0 && c.attr_int("inverse", 0) == 0;
    out[a] = if onesided {
        add_const(&n.div_floor(2), 1)
    } else {
        n
    };
    out[r - 1] = k(2);
    Ok(vec![t(e, out)])
}

fn stft(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?;
    let batch = s.and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
    let len = s.and_then(|s| s.get(1).cloned()).unwrap_or(Dim::Unknown);
    let step = const_scalar(c, 1);
    let flen: Option<i64> = if c.has_input(3) {
        const_scalar(c, 3)
    } else {
        shape_of(c, 2)
            .ok()
            .flatten()
            .and_then(|w| w.first()?.as_known())
            .and_then(|x| i64::try_from(x).ok())
    };
    let frames = match (len.as_known(), step, flen) {
        (Some(l), Some(st), Some(fl)) if st > 0 && fl > 0 && l as i64 >= fl => {
            k(((l as i64 - fl) / st + 1) as u64)
        }
        _ => Dim::Unknown,
    };
    let onesided = c.attr_int("onesided", 1) != 0;
    let bins = match flen {
        Some(fl) if fl > 0 => k(if onesided { fl / 2 + 1 } else { fl } as u64),
        _ => Dim::Unknown,
    };
    Ok(vec![t(e, vec![batch, frames, bins, k(2)])])
}

fn affine_grid(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    match c.const_ints(1) {
        Some(v) if v.len() == 4 || v.len() == 5 => {
            let mut out: Vec<Dim> = vec![known_u64(v[0]).unwrap_or(Dim::Unknown)];
            out.extend(v[2..].iter().map(|&d| known_u64(d).unwrap_or(Dim::Unknown)));
            out.push(k(v.len() as u64 - 2));
            Ok(vec![t(e, out)])
        }
        Some(_) => Err(InferError::BadInput {
            index: 1,
            msg: "size must have 4 or 5 values".into(),
        }),
        None => Ok(vec![t_opt(
            e,
            shape_len(c, 1).map(|n| {
                let mut o = unknown_dims(n);
                if let (Some(l), Some(sp)) = (o.last_mut(), (n as u64).checked_sub(2)) {
                    *l = k(sp)
                }
                o
            }),
        )]),
    }
}

fn grid_sample(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(x), Some(g)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    if x.len() < 3 || g.len() != x.len() {
        return Err(err("GridSample grid must have the input's rank"));
    }
    let mut out = vec![merge_dim(&x[0], &g[0]).map_err(err)?, x[1].clone()];
    out.extend(g[1..g.len() - 1].iter().cloned());
    Ok(vec![t(e, out)])
}

fn roi_align(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let ch = shape_of(c, 0)?
        .and_then(|s| s.get(1).cloned())
        .unwrap_or(Dim::Unknown);
    let n = shape_of(c, 1)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let oh = known_u64(c.attr_int("output_height", 1)).unwrap_or(Dim::Unknown);
    let ow = known_u64(c.attr_int("output_width", 1)).unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n, ch, oh, ow])])
}

fn nms(_c: &InferCtx) -> R {
    Ok(vec![t(ElemType::I64, vec![Dim::Unknown, k(3)])])
}

fn image_decoder(c: &InferCtx) -> R {
    let ch = if c.attr_str("pixel_format") == Some("Grayscale") {
        1
    } else {
        3
    };
    Ok(vec![t(
        ElemType::U8,
        vec![Dim::Unknown, Dim::Unknown, k(ch)],
    )])
}

fn string_normalizer(c: &InferCtx) -> R {
    let s = shape_of(c, 0)?;
    let out = match s {
        Some(s) if s.len() == 2 => vec![s[0].clone(), Dim::Unknown],
        _ => vec![Dim::Unknown],
    };
    Ok(vec![t(ElemType::String, out)])
}

fn string_split(c: &InferCtx) -> R {
    let s = shape_of(c, 0)?;
    let y = s.map(|s| {
        let mut o = s.to_vec();
        o.push(Dim::Unknown);
        o
    });
    Ok(vec![
        t_opt(ElemType::String, y),
        t_opt(ElemType::I64, s.map(|s| s.to_vec())),
    ])
}

fn tfidf(c: &InferCtx) -> R {
    let n = c
        .attr_ints("ngram_indexes")
        .and_then(|v| v.iter().max().copied())
        .and_then(|m| known_u64(m.checked_add(1)?))
        .unwrap_or(Dim::Unknown);
    let out = match shape_of(c, 0)? {
        Some(s) if s.len() == 2 => vec![s[0].clone(), n],
        Some(s) if s.len() <= 1 => vec![n],
        _ => return Ok(vec![unranked(ElemType::F32)]),
    };
    Ok(vec![t(ElemType::F32, out)])
}

fn loss_shape(c: &InferCtx, target: usize) -> Result<Option<Vec<Dim>>, InferError> {
    match c.attr_str("reduction").unwrap_or("mean") {
        "none" => Ok(shape_of(c, target)?.map(|s| s.to_vec())),
        "mean" | "sum" => Ok(Some(vec![])),
        r => Err(bad_attr("reduction", format!("unknown `{r}`"))),
    }
}

fn nll_loss(c: &InferCtx) -> R {
    Ok(vec![t_opt(elem(c, 0)?, loss_shape(c, 1)?)])
}

fn sce_loss(c: &InferCtx) -> R {
    let x = ty(c, 0)?.clone();
    Ok(fill(
        vec![t_opt(elem(c, 0)?, loss_shape(c, 1)?), x],
        c.num_outputs,
    ))
}

// ------------------------------------------------- sequences and optionals

/// The type both of two alternatives satisfy.
pub(crate) fn join_types(a: &Type, b: &Type) -> Option<Type> {
    Some(match (a, b) {
        (Type::Tensor(x), Type::Tensor(y)) if x.elem == y.elem => {
            let shape = match (&x.shape, &y.shape) {
                (Some(p), Some(q)) if p.len() == q.len() => {
                    Some(p.iter().zip(q).map(|(a, b)| join_dim(a, b)).collect())
                }
                _ => None,
            };
            Type::Tensor(TensorType {
                elem: x.elem,
                shape,
                quant: if x.quant == y.quant {
                    x.quant.clone()
                } else {
                    None
                },
            })
        }
        (Type::Sequence(x), Type::Sequence(y)) => Type::Sequence(Box::new(join_types(x, y)?)),
        (Type::Optional(x), Type::Optional(y)) => Type::Optional(Box::new(join_types(x, y)?)),
        (Type::Map(k1, x), Type::Map(k2, y)) if k1 == k2 => {
            Type::Map(*k1, Box::new(join_types(x, y)?))
        }
        _ => return None,
    })
}

fn optional(c: &InferCtx) -> R {
    let inner = match c.input(0) {
        Some(t) => t.clone(),
        None => match c.attr("type") {
            Some(Attr::Type(t)) => t.clone(),
            _ => return Err(err("Optional needs an operand or a `type` attribute")),
        },
    };
    Ok(vec![Type::Optional(Box::new(inner))])
}

fn optional_get(c: &InferCtx) -> R {
    Ok(vec![match ty(c, 0)? {
        Type::Optional(t) => (**t).clone(),
        t => t.clone(),
    }])
}

fn optional_has(_c: &InferCtx) -> R {
    Ok(vec![t(ElemType::Bool, vec![])])
}

fn seq_elem<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a Type, InferError> {
    match ty(c, i)? {
        Type::Sequence(t) => Ok(t),
        _ => Err(InferError::BadInput {
            index: i,
            msg: "expected a sequence".into(),
        }),
    }
}

fn sequence_at(c: &InferCtx) -> R {
    Ok(vec![seq_elem(c, 0)?.clone()])
}

fn sequence_construct(c: &InferCtx) -> R {
    let mut acc = ty(c, 0)?.clone();
    for i in 1..c.inputs.len() {
        acc = join_types(&acc, ty(c, i)?).ok_or_else(|| err("sequence elements differ in type"))?;
    }
    Ok(vec![Type::Sequence(Box::new(acc))])
}

fn sequence_empty(c: &InferCtx) -> R {
    let e = dtype_attr(c, "dtype")?.unwrap_or(ElemType::F32);
    Ok(vec![Type::Sequence(Box::new(unranked(e)))])
}

fn sequence_insert(c: &InferCtx) -> R {
    let s = seq_elem(c, 0)?;
    let j = join_types(s, ty(c, 1)?)
        .ok_or_else(|| err("inserted tensor's type differs from the sequence's"))?;
    Ok(vec![Type::Sequence(Box::new(j))])
}

fn sequence_length(c: &InferCtx) -> R {
    seq_elem(c, 0)?;
    Ok(vec![t(ElemType::I64, vec![])])
}

fn sequence_map(c: &InferCtx) -> R {
    let body = c
        .region("body")
        .ok_or_else(|| err("SequenceMap needs a body"))?;
    Ok(body
        .iter()
        .map(|t| Type::Sequence(Box::new(t.clone())))
        .collect())
}

fn split_to_sequence(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![Type::Sequence(Box::new(unranked(e)))]);
    };
    let a = axis_of(c, "axis", 0, s.len())?;
    let mut o = s.to_vec();
    if c.has_input(1) {
        match c.konst(1) {
            Some(d) if d.shape.is_empty() => {
                o[a] = const_scalar(c, 1)
                    .and_then(known_u64)
                    .unwrap_or(Dim::Unknown)
            }
            _ => o[a] = Dim::Unknown,
        }
    } else if c.attr_int("keepdims", 1) != 0 {
        o[a] = k(1);
    } else {
        o.remove(a);
    }
    Ok(vec![Type::Sequence(Box::new(t(e, o)))])
}

fn concat_from_sequence(c: &InferCtx) -> R {
    let inner = seq_elem(c, 0)?;
    let tt = inner
        .as_tensor()
        .ok_or_else(|| err("sequence of non-tensors"))?;
    let r = tt
        .rank()
        .map(|r| r + usize::from(c.attr_int("new_axis", 0) != 0));
    Ok(vec![t_opt(tt.elem, r.map(unknown_dims))])
}

// ---------------------------------------------------------- control flow

fn if_(c: &InferCtx) -> R {
    let (Some(th), Some(el)) = (c.region("then_branch"), c.region("else_branch")) else {
        return Err(err("If needs then_branch and else_branch"));
    };
    if th.len() != el.len() {
        return Err(err(format!(
            "branches have {} and {} results",
            th.len(),
            el.len()
        )));
    }
    th.iter()
        .zip(el)
        .enumerate()
        .map(|(i, (a, b))| {
            join_types(a, b).ok_or_else(|| err(format!("branch result {i} types differ")))
        })
        .collect()
}

/// Insert a leading (or `axis`) dim into a per-iteration type.
fn stacked(t: &Type, axis: i64, n: Dim) -> Result<Type, InferError> {
    let tt = t
        .as_tensor()
        .ok_or_else(|| err("scan output must be a tensor"))?;
    Ok(t_opt(
        tt.elem,
        match &tt.shape {
            Some(s) => {
                let a = norm_axis(axis, s.len() + 1)
                    .ok_or_else(|| err("scan output axis out of range"))?;
                let mut o = s.clone();
                o.insert(a, n);
                Some(o)
            }
            None => None,
        },
    ))
}

fn loop_(c: &InferCtx) -> R {
    let body = c.region("body").ok_or_else(|| err("Loop needs a body"))?;
    let n = c.inputs.len().saturating_sub(2);
    if body.len() < 1 + n {
        return Err(err("Loop body has too few results"));
    }
    let mut out = vec![];
    for i in 0..n {
        let bt = &body[1 + i];
        out.push(match c.input(2 + i) {
            // An optional may enter the loop and its payload come back
            // (ONNX's test_loop16_seq_none): the result is the body's type.
            Some(init) => join_types(init, bt)
                .or_else(|| match init {
                    Type::Optional(x) => join_types(x, bt),
                    _ => None,
                })
                .ok_or_else(|| err(format!("loop-carried value {i} changes type")))?,
            None => bt.clone(),
        });
    }
    for bt in &body[1 + n..] {
        out.push(stacked(bt, 0, Dim::Unknown)?);
    }
    Ok(out)
}

fn scan(c: &InferCtx) -> R {
    let body = c.region("body").ok_or_else(|| err("Scan needs a body"))?;
    let m = usize::try_from(c.attr_int("num_scan_inputs", 0))
        .map_err(|_| bad_attr("num_scan_inputs", "negative"))?;
    let n = c
        .inputs
        .len()
        .checked_sub(m)
        .ok_or_else(|| bad_attr("num_scan_inputs", "more than the operands"))?;
    if body.len() < n {
        return Err(err("Scan body has too few results"));
    }
    // Sequence length: the first scan input's dim along its scan axis.
    let in_axes = c.attr_ints("scan_input_axes");
    let seq = if m > 0 {
        let ax = in_axes.and_then(|a| a.first().copied()).unwrap_or(0);
        shape_of(c, n)?
            .and_then(|s| norm_axis(ax, s.len()).map(|a| s[a].clone()))
            .unwrap_or(Dim::Unknown)
    } else {
        Dim::Unknown
    };
    let mut out = vec![];
    for (i, bt) in body.iter().enumerate().take(n) {
        out.push(
            join_types(ty(c, i)?, bt).ok_or_else(|| err(format!("scan state {i} changes type")))?,
        );
    }
    let out_axes = c.attr_ints("scan_output_axes");
    for (j, bt) in body[n..].iter().enumerate() {
        let ax = out_axes.and_then(|a| a.get(j).copied()).unwrap_or(0);
        out.push(stacked(bt, ax, seq.clone())?);
    }
    Ok(out)
}

// ----------------------------------------------------------------- ML ops

fn array_feature_extractor(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let n = shape_of(c, 1)?.map(dims_product).unwrap_or(Dim::Unknown);
    let out = match shape_of(c, 0)? {
        Some(s) if s.len() <= 1 => vec![k(1), n],
        Some(s) => {
            let mut o = s[..s.len() - 1].to_vec();
            o.push(n);
            o
        }
        None => return Ok(vec![unranked(e)]),
    };
    Ok(vec![t(e, out)])
}

fn label_encoder(c: &InferCtx) -> R {
    let e = if let Some(tv) = c.attr("values_tensor").and_then(Attr::as_tensor) {
        tv.elem
    } else if c.attr("values_strings").is_some() {
        ElemType::String
    } else if c.attr("values_int64s").is_some() {
        ElemType::I64
    } else if c.attr("values_floats").is_some() {
        ElemType::F32
    } else {
        return Err(err("LabelEncoder needs a values_* attribute"));
    };
    Ok(vec![t_opt(e, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

fn tree_ensemble(c: &InferCtx) -> R {
    let e = c
        .attr("leaf_weights")
        .and_then(Attr::as_tensor)
        .map(|t| t.elem)
        .unwrap_or(elem(c, 0)?);
    let n = shape_of(c, 0)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let targets = c
        .attr("n_targets")
        .and_then(Attr::as_int)
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n, targets])])
}

// ------------------------------------------------------------ training ops

fn optimizer(c: &InferCtx, groups_in: usize, outs: &[usize]) -> R {
    let rest = c.inputs.len().saturating_sub(2);
    if !rest.is_multiple_of(groups_in) {
        return Err(err(format!("expected 2 + {groups_in}*n operands")));
    }
    let n = rest / groups_in;
    let mut v = vec![];
    for &g in outs {
        for i in 0..n {
            v.push(ty(c, 2 + g * n + i)?.clone());
        }
    }
    Ok(v)
}

fn adagrad(c: &InferCtx) -> R {
    // X, G, H -> X_new, H_new
    optimizer(c, 3, &[0, 2])
}

fn adam(c: &InferCtx) -> R {
    // X, G, V, H -> X_new, V_new, H_new
    optimizer(c, 4, &[0, 2, 3])
}

fn momentum(c: &InferCtx) -> R {
    // X, G, V -> X_new, V_new
    optimizer(c, 3, &[0, 2])
}

fn ml_float_same_shape(c: &InferCtx) -> R {
    Ok(vec![t_opt(
        ElemType::F32,
        shape_of(c, 0)?.map(|s| s.to_vec()),
    )])
}

fn ml_batch(c: &InferCtx) -> Result<Dim, InferError> {
    Ok(match shape_of(c, 0)? {
        Some(s) if s.len() == 2 => s[0].clone(),
        Some(s) if s.len() == 1 => k(1),
        _ => Dim::Unknown,
    })
}

fn ml_regressor_targets(c: &InferCtx) -> R {
    let n = known_u64(c.attr_int("targets", 1)).unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::F32, vec![ml_batch(c)?, n])])
}

fn ml_regressor_n_targets(c: &InferCtx) -> R {
    let n = c
        .attr("n_targets")
        .and_then(Attr::as_int)
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::F32, vec![ml_batch(c)?, n])])
}

fn ml_classifier(c: &InferCtx) -> R {
    let label = if c.attr("classlabels_strings").is_some() {
        ElemType::String
    } else {
        ElemType::I64
    };
    let n = ml_batch(c)?;
    Ok(fill(
        vec![
            t(label, vec![n.clone()]),
            t(ElemType::F32, vec![n, Dim::Unknown]),
        ],
        c.num_outputs,
    ))
}

fn ml_category_mapper(c: &InferCtx) -> R {
    let e = if elem(c, 0)? == ElemType::String {
        ElemType::I64
    } else {
        ElemType::String
    };
    Ok(vec![t_opt(e, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

fn ml_one_hot_encoder(c: &InferCtx) -> R {
    let n = c
        .attr("cats_int64s")
        .and_then(Attr::as_ints)
        .map(|v| v.len())
        .or_else(|| match c.attr("cats_strings") {
            Some(Attr::Strings(v)) => Some(v.len()),
            _ => None,
        })
        .map(|n| k(n as u64))
        .unwrap_or(Dim::Unknown);
    let out = shape_of(c, 0)?.map(|s| {
        let mut o = s.to_vec();
        o.push(n);
        o
    });
    Ok(vec![t_opt(ElemType::F32, out)])
}

fn ml_feature_vectorizer(c: &InferCtx) -> R {
    let total = c
        .attr_ints("inputdimensions")
        .and_then(|v| v.iter().try_fold(0i64, |a, &x| a.checked_add(x)))
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::F32, vec![ml_batch(c)?, total])])
}

fn ml_zip_map(c: &InferCtx) -> R {
    let key = if c.attr("classlabels_strings").is_some() {
        ElemType::String
    } else {
        ElemType::I64
    };
    Ok(vec![Type::Sequence(Box::new(Type::Map(
        key,
        Box::new(t(ElemType::F32, vec![])),
    )))])
}

fn max_roi_pool(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let ch = shape_of(c, 0)?
        .and_then(|s| s.get(1).cloned())
        .unwrap_or(Dim::Unknown);
    let n = shape_of(c, 1)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let ps = c
        .attr_ints("pooled_shape")
        .ok_or_else(|| bad_attr("pooled_shape", "required"))?;
    let mut out = vec![n, ch];
    for &p in ps {
        out.push(known_u64(p).ok_or_else(|| bad_attr("pooled_shape", "negative"))?);
    }
    Ok(vec![t(e, out)])
}
