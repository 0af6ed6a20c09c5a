//! Rules of the matrix products: MatMul (numpy broadcasting of the batch
//! dims) and its MatMulInteger/QLinearMatMul forms, Gemm, Einsum, Det.

use super::common::{bad_attr, elem, err, k, shape_of, t, unknown_dims, unranked, R};
use crate::ops::dims::{broadcast_dims, broadcast_shapes, merge_dim};
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{Dim, ElemType};

pub(super) fn einsum(c: &InferCtx) -> R {
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

pub(super) fn matmul(c: &InferCtx) -> R {
    matmul_with(c, elem(c, 0)?)
}

pub(super) fn matmul_integer(c: &InferCtx) -> R {
    matmul_with(c, ElemType::I32)
}

/// `kiln.DequantMatMul`: MatMul's shape, the scale's element type (what
/// the DequantizeLinear of W would give); W holds integers and A has the
/// scale's type.
pub(super) fn dequant_matmul(c: &InferCtx) -> R {
    let (a, w, s) = (elem(c, 0)?, elem(c, 1)?, elem(c, 2)?);
    if !w.is_int() {
        return Err(err(format!("W must hold integers, not {w}")));
    }
    if a != s {
        return Err(err(format!("A is {a} but W_scale is {s}")));
    }
    matmul_with(c, s)
}

pub(super) fn qlinear_matmul(c: &InferCtx) -> R {
    let e = elem(c, 7)?;
    let (Some(a), Some(b)) = (shape_of(c, 0)?, shape_of(c, 3)?) else {
        return Ok(vec![unranked(e)]);
    };
    Ok(vec![t(e, matmul_shape(a, b)?)])
}

pub(super) fn gemm(c: &InferCtx) -> R {
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

pub(super) fn det(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    if s.len() < 2 {
        return Err(err("Det needs rank >= 2"));
    }
    Ok(vec![t(e, s[..s.len() - 2].to_vec())])
}
