//! Rules of the `ai.onnx.ml` domain: regressors and classifiers (linear,
//! SVM, tree ensembles), encoders and mappers, feature extraction and
//! vectorization, Normalizer/Scaler, ZipMap.

use super::common::{elem, err, fill, k, known_u64, shape_of, t, t_opt, unranked, R};
use crate::attr::Attr;
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{dims_product, Dim, ElemType, Type};

pub(super) fn array_feature_extractor(c: &InferCtx) -> R {
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

pub(super) fn label_encoder(c: &InferCtx) -> R {
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

pub(super) fn tree_ensemble(c: &InferCtx) -> R {
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

pub(super) fn ml_float_same_shape(c: &InferCtx) -> R {
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

pub(super) fn ml_regressor_targets(c: &InferCtx) -> R {
    let n = known_u64(c.attr_int("targets", 1)).unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::F32, vec![ml_batch(c)?, n])])
}

pub(super) fn ml_regressor_n_targets(c: &InferCtx) -> R {
    let n = c
        .attr("n_targets")
        .and_then(Attr::as_int)
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::F32, vec![ml_batch(c)?, n])])
}

pub(super) fn ml_classifier(c: &InferCtx) -> R {
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

pub(super) fn ml_category_mapper(c: &InferCtx) -> R {
    let e = if elem(c, 0)? == ElemType::String {
        ElemType::I64
    } else {
        ElemType::String
    };
    Ok(vec![t_opt(e, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

pub(super) fn ml_one_hot_encoder(c: &InferCtx) -> R {
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

pub(super) fn ml_feature_vectorizer(c: &InferCtx) -> R {
    let total = c
        .attr_ints("inputdimensions")
        .and_then(|v| v.iter().try_fold(0i64, |a, &x| a.checked_add(x)))
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::F32, vec![ml_batch(c)?, total])])
}

pub(super) fn ml_zip_map(c: &InferCtx) -> R {
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
