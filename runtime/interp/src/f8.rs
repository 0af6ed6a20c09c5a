//! The four ONNX float8 formats: decoding by bit layout, encoding by
//! nearest representable value (ties to even) through a decoded table, with
//! ONNX's saturation rule for values beyond the largest finite one.

use kiln_ir::ElemType;

/// Decode one float8 byte of the given format.
pub fn decode(kind: ElemType, b: u8) -> f32 {
    let (exp_bits, mant_bits, bias): (u32, u32, i32) = match kind {
        ElemType::F8E4M3FN => (4, 3, 7),
        ElemType::F8E4M3FNUZ => (4, 3, 8),
        ElemType::F8E5M2 => (5, 2, 15),
        ElemType::F8E5M2FNUZ => (5, 2, 16),
        _ => return f32::NAN,
    };
    let uz = matches!(kind, ElemType::F8E4M3FNUZ | ElemType::F8E5M2FNUZ);
    if uz && b == 0x80 {
        return f32::NAN;
    }
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> mant_bits) & ((1 << exp_bits) - 1)) as i32;
    let m = (b & ((1 << mant_bits) - 1)) as i32;
    let emax = (1 << exp_bits) - 1;
    match kind {
        ElemType::F8E4M3FN if e == emax && m == (1 << mant_bits) - 1 => return f32::NAN,
        ElemType::F8E5M2 if e == emax => {
            return if m == 0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => {}
    }
    let frac = m as f32 / (1 << mant_bits) as f32;
    let v = if e == 0 {
        frac * 2f32.powi(1 - bias)
    } else {
        (1.0 + frac) * 2f32.powi(e - bias)
    };
    sign * v
}

struct Table {
    /// (value, code) of every non-negative finite code, ascending.
    pos: Vec<(f32, u8)>,
    nan: u8,
    inf: Option<u8>,
}

fn table(kind: ElemType) -> Table {
    let mut pos: Vec<(f32, u8)> = (0u8..=0x7f)
        .map(|c| (decode(kind, c), c))
        .filter(|(v, _)| v.is_finite())
        .collect();
    pos.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (nan, inf) = match kind {
        ElemType::F8E4M3FN => (0x7f, None),
        ElemType::F8E5M2 => (0x7f, Some(0x7c)),
        _ => (0x80, None),
    };
    Table { pos, nan, inf }
}

/// Encode `x` into the float8 `kind`, rounding to nearest (ties to even).
/// Beyond the largest finite value: the largest value when `saturate`,
/// else infinity (E5M2) or NaN (formats without infinity). Infinities
/// saturate too when `saturate` (ONNX Cast-19).
pub fn encode(kind: ElemType, x: f32, saturate: bool) -> u8 {
    thread_local! {
        static TABLES: std::cell::RefCell<Vec<(ElemType, std::rc::Rc<Table>)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let t = TABLES.with(|ts| {
        let mut ts = ts.borrow_mut();
        if let Some((_, t)) = ts.iter().find(|(k, _)| *k == kind) {
            return t.clone();
        }
        let t = std::rc::Rc::new(table(kind));
        ts.push((kind, t.clone()));
        t
    });
    let uz = matches!(kind, ElemType::F8E4M3FNUZ | ElemType::F8E5M2FNUZ);
    if x.is_nan() {
        return t.nan;
    }
    let neg = x.is_sign_negative();
    let a = x.abs();
    let sign = |c: u8| {
        if neg && !(uz && c == 0) && c != t.nan {
            c | 0x80
        } else {
            c
        }
    };
    let overflow = || match (saturate, t.inf) {
        (true, _) => t.pos.last().map_or(0, |p| p.1),
        (false, Some(inf)) => inf,
        (false, None) => t.nan,
    };
    if a.is_infinite() {
        return sign(overflow());
    }
    let n = t.pos.len();
    let (max, max_code) = t.pos[n - 1];
    // The virtual next value past the largest finite one.
    let next = max + (max - t.pos[n - 2].0);
    if a >= next || (a > max && (a - max) >= (next - a)) {
        // Ties between max (odd code) and the virtual value go to the
        // virtual value's even side: overflow.
        if a > max && (a - max) == (next - a) && max_code & 1 == 0 {
            return sign(max_code);
        }
        return sign(overflow());
    }
    let i = t.pos.partition_point(|p| p.0 <= a);
    let lo = t.pos[i.saturating_sub(1)];
    if i >= n {
        return sign(lo.1);
    }
    let hi = t.pos[i];
    let c = if a - lo.0 < hi.0 - a {
        lo.1
    } else if a - lo.0 > hi.0 - a {
        hi.1
    } else if lo.1 & 1 == 0 {
        lo.1
    } else {
        hi.1
    };
    sign(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(decode(ElemType::F8E4M3FN, 0x7e), 448.0);
        assert!(decode(ElemType::F8E4M3FN, 0x7f).is_nan());
        assert_eq!(decode(ElemType::F8E5M2, 0x7b), 57344.0);
        assert_eq!(decode(ElemType::F8E5M2, 0x7c), f32::INFINITY);
        assert_eq!(decode(ElemType::F8E4M3FNUZ, 0x7f), 240.0);
        assert!(decode(ElemType::F8E5M2FNUZ, 0x80).is_nan());
        assert_eq!(encode(ElemType::F8E4M3FN, 1000.0, true), 0x7e);
        assert_eq!(encode(ElemType::F8E4M3FN, 1000.0, false), 0x7f);
        assert_eq!(encode(ElemType::F8E5M2, 1e6, false), 0x7c);
        assert_eq!(encode(ElemType::F8E5M2, -1e6, true), 0xfb);
        assert_eq!(encode(ElemType::F8E4M3FNUZ, -0.0, true), 0);
        for kind in [
            ElemType::F8E4M3FN,
            ElemType::F8E4M3FNUZ,
            ElemType::F8E5M2,
            ElemType::F8E5M2FNUZ,
        ] {
            for c in 0u8..=255 {
                let v = decode(kind, c);
                if v.is_finite() && !(v == 0.0 && c == 0x80) {
                    assert_eq!(encode(kind, v, false), c, "{kind} code {c:#x} value {v}");
                }
            }
        }
    }
}
