//! Rules of the resampling ops: Resize and Upsample (sizes or scales per
//! axis), GridSample and AffineGrid.

use super::common::{
    elem, err, k, known_u64, norm_axes, shape_len, shape_of, t, t_opt, unknown_dims, unranked, R,
};
use crate::ops::dims::{merge_dim, mul_const};
use crate::ops::schema::{InferCtx, InferError};
use crate::types::Dim;

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

pub(super) fn resize(c: &InferCtx) -> R {
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

pub(super) fn upsample(c: &InferCtx) -> R {
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

pub(super) fn affine_grid(c: &InferCtx) -> R {
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

pub(super) fn grid_sample(c: &InferCtx) -> R {
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
