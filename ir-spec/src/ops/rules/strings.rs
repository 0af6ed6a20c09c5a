//! Rules of the string ops with their own shapes: StringNormalizer,
//! StringSplit and TfIdfVectorizer. (StringConcat and RegexFullMatch are
//! elementwise.)

use super::common::{known_u64, shape_of, t, t_opt, unranked, R};
use crate::ops::schema::InferCtx;
use crate::types::{Dim, ElemType};

pub(super) fn string_normalizer(c: &InferCtx) -> R {
    let s = shape_of(c, 0)?;
    let out = match s {
        Some(s) if s.len() == 2 => vec![s[0].clone(), Dim::Unknown],
        _ => vec![Dim::Unknown],
    };
    Ok(vec![t(ElemType::String, out)])
}

pub(super) fn string_split(c: &InferCtx) -> R {
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

pub(super) fn tfidf(c: &InferCtx) -> R {
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
