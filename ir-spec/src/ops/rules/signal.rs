//! Rules of the signal and image processing ops: the window functions
//! (Blackman, Hamming, Hann), MelWeightMatrix, DFT, STFT and ImageDecoder.

use super::common::{
    const_scalar, dtype_attr, elem, err, k, known_u64, shape_of, t, unknown_dims, unranked, R,
};
use crate::ops::dims::{add_const, norm_axis};
use crate::ops::schema::InferCtx;
use crate::types::{Dim, ElemType};

pub(super) fn window_fn(c: &InferCtx) -> R {
    let e = dtype_attr(c, "output_datatype")?.unwrap_or(ElemType::F32);
    let n = const_scalar(c, 0)
        .and_then(known_u64)
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n])])
}

pub(super) fn mel_weight_matrix(c: &InferCtx) -> R {
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

pub(super) fn dft(c: &InferCtx) -> R {
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

pub(super) fn stft(c: &InferCtx) -> R {
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

pub(super) fn image_decoder(c: &InferCtx) -> R {
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
