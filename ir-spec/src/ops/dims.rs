//! Dim helpers shared by the inference rules: broadcasting, merging,
//! axis normalization, shape arithmetic with constants, exact division.

use crate::types::{Dim, SymExpr};

/// Numpy broadcasting of two dims. `Err` when two known sizes differ and
/// neither is 1. A symbolic or unknown dim against a known `k != 1` gives
/// `k` (the only size that can run); two different symbolic dims give
/// `Unknown`.
pub fn broadcast_dims(a: &Dim, b: &Dim) -> Result<Dim, String> {
    Ok(match (a, b) {
        _ if a == b => a.clone(),
        (Dim::Known(1), _) => b.clone(),
        (_, Dim::Known(1)) => a.clone(),
        (Dim::Known(x), Dim::Known(y)) => {
            return Err(format!("cannot broadcast dims {x} and {y}"));
        }
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        _ => Dim::Unknown,
    })
}

/// Numpy broadcasting of several shapes (right-aligned).
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = broadcast_dims(&out[off + i], d)?;
        }
    }
    Ok(out)
}

/// Two descriptions of the same dim: the more specific one (`Known` over
/// `Sym` over `Unknown`); `Err` if two known sizes differ.
pub fn merge_dim(a: &Dim, b: &Dim) -> Result<Dim, String> {
    Ok(match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => {
            return Err(format!("dims {x} and {y} must be equal"));
        }
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Sym(_), _) => a.clone(),
        _ => b.clone(),
    })
}

/// The dim both of two alternatives satisfy (If branches, loop-carried
/// values): equal dims stay, anything else is `Unknown`.
pub fn join_dim(a: &Dim, b: &Dim) -> Dim {
    if a == b {
        a.clone()
    } else {
        Dim::Unknown
    }
}

/// Normalize a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis.checked_add(r)? } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// `d + c` for a constant `c` (negative results become `Unknown`).
pub fn add_const(d: &Dim, c: i64) -> Dim {
    match d.to_expr() {
        Some(e) => Dim::from_expr(e.add(&SymExpr::constant(c))),
        None => Dim::Unknown,
    }
}

/// `d * c` for a constant `c >= 0`.
pub fn mul_const(d: &Dim, c: u64) -> Dim {
    if c == 0 {
        return Dim::Known(0);
    }
    match i64::try_from(c) {
        Ok(c) => d
            .to_expr()
            .map(|e| Dim::from_expr(e.scale(c)))
            .unwrap_or(Dim::Unknown),
        Err(_) => Dim::Unknown,
    }
}

/// Ceiling division by a positive constant (exact for known sizes, for
/// symbolic ones only when the division is exact).
pub fn div_ceil(d: &Dim, k: u64) -> Dim {
    match d {
        Dim::Known(n) if k > 0 => Dim::Known(n.div_ceil(k)),
        _ => {
            let q = d.div_floor(k);
            // Exact symbolic division: floor == ceil.
            if matches!(q, Dim::Sym(_)) {
                q
            } else {
                Dim::Unknown
            }
        }
    }
}

/// Exact division `a / b` of dims: known sizes (must divide), or a
/// polynomial divided by a monomial that divides every term.
pub fn div_exact(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (_, Dim::Known(0)) => Dim::Unknown,
        (Dim::Known(x), Dim::Known(y)) => {
            if x % y == 0 {
                Dim::Known(x / y)
            } else {
                Dim::Unknown
            }
        }
        (Dim::Sym(e), Dim::Known(y)) => match i64::try_from(*y) {
            Ok(y) => e.div_exact(y).map(Dim::from_expr).unwrap_or(Dim::Unknown),
            Err(_) => Dim::Unknown,
        },
        (Dim::Sym(e), Dim::Sym(f)) => {
            // Divisor must be a single monomial c*s1*s2...
            let terms: Vec<_> = f.terms().collect();
            if terms.len() != 1 {
                return Dim::Unknown;
            }
            let (dsyms, dc) = (terms[0].0.to_vec(), terms[0].1);
            if dc == 0 {
                return Dim::Unknown;
            }
            let mut q = SymExpr::constant(0);
            for (m, c) in e.terms() {
                if c.checked_rem(dc) != Some(0) {
                    return Dim::Unknown;
                }
                let mut rest: Vec<_> = m.to_vec();
                for s in &dsyms {
                    match rest.iter().position(|x| x == s) {
                        Some(p) => {
                            rest.remove(p);
                        }
                        None => return Dim::Unknown,
                    }
                }
                let Some(q0) = c.checked_div(dc) else {
                    return Dim::Unknown;
                };
                let mut t = SymExpr::constant(q0);
                for s in &rest {
                    t = t.mul(&SymExpr::symbol(s));
                }
                q = q.add(&t);
            }
            Dim::from_expr(q)
        }
        _ => Dim::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_symbolic() {
        let n = Dim::sym("N");
        assert_eq!(broadcast_dims(&n, &Dim::Known(1)), Ok(n.clone()));
        assert_eq!(broadcast_dims(&n, &n), Ok(n.clone()));
        assert_eq!(broadcast_dims(&n, &Dim::Known(4)), Ok(Dim::Known(4)));
        assert_eq!(broadcast_dims(&n, &Dim::sym("M")), Ok(Dim::Unknown));
        assert!(broadcast_dims(&Dim::Known(3), &Dim::Known(4)).is_err());
    }

    #[test]
    fn exact_division() {
        let n = Dim::sym("N");
        let s = Dim::sym("seq");
        let total = n.mul(&s).mul(&Dim::Known(768));
        assert_eq!(
            div_exact(&total, &n.mul(&s).mul(&Dim::Known(12))),
            Dim::Known(64)
        );
        assert_eq!(div_exact(&total, &Dim::Known(768)), n.mul(&s));
        assert_eq!(div_exact(&n.add(&Dim::Known(1)), &n), Dim::Unknown);
    }
}
