//! Shape-value propagation: the element values of small integer tensors
//! computed from shapes (`Shape`, `Gather`, `Slice`, `Concat`, arithmetic),
//! so that `Reshape`/`Expand`/`ConstantOfShape` operands built from other
//! tensors' shapes still give symbolic result shapes.

use super::dims::norm_axis;
use super::schema::{InferCtx, IntValues, MAX_VALUES};
use crate::types::{Dim, ElemType, SymExpr, Type};

fn dim_value(d: &Dim) -> Option<SymExpr> {
    d.to_expr()
}

/// The values of result 0 of a node, when they can be computed.
pub(crate) fn propagate(c: &InferCtx, result: &Type) -> Option<IntValues> {
    let rt = result.as_tensor()?;
    if !(rt.elem.is_int()) || rt.rank().is_some_and(|r| r > 1) {
        return None;
    }
    let v = match c.op {
        "Shape" => {
            let s = c.input(0)?.as_tensor()?.shape.as_ref()?;
            let r = s.len() as i64;
            let clamp = |v: i64| {
                if v < 0 {
                    v.saturating_add(r).max(0)
                } else {
                    v.min(r)
                }
            };
            let start = clamp(c.attr_int("start", 0)) as usize;
            let end = clamp(c.attr_int("end", r)) as usize;
            s.get(start..end.max(start))?
                .iter()
                .map(dim_value)
                .collect()
        }
        "Size" => {
            let s = c.input(0)?.as_tensor()?.shape.as_ref()?;
            vec![dim_value(&crate::types::dims_product(s))]
        }
        "Identity" | "Squeeze" | "Unsqueeze" | "Reshape" | "Flatten" => c.int_values(0)?,
        "Cast" if rt.elem.is_int() => c.int_values(0)?,
        "Gather" => {
            let data = c.int_values(0)?;
            let idx = c.const_ints(1)?;
            if c.attr_int("axis", 0) != 0 {
                return None;
            }
            idx.iter()
                .map(|&i| norm_axis(i, data.len()).and_then(|i| data[i].clone()))
                .collect()
        }
        "Slice" => {
            let data = c.int_values(0)?;
            let (st, en) = (c.const_ints(1)?, c.const_ints(2)?);
            let step = if c.has_input(4) {
                c.const_ints(4)?
            } else {
                vec![1]
            };
            if st.len() != 1 || en.len() != 1 || step.len() != 1 || step[0] == 0 {
                return None;
            }
            let (first, len) =
                super::geometry::slice_range(st[0], en[0], step[0], data.len() as u64);
            // Two or more elements: |step| < len, so no product overflows.
            (0..len as i64)
                .map(|j| data[(first + j * step[0]) as usize].clone())
                .collect()
        }
        "Concat" => {
            let mut out = vec![];
            for i in 0..c.inputs.len() {
                out.extend(c.int_values(i)?);
            }
            out
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (c.int_values(0)?, c.int_values(1)?);
            let n = a.len().max(b.len());
            if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
                return None;
            }
            (0..n)
                .map(|i| {
                    let x = a[if a.len() == 1 { 0 } else { i }].as_ref()?;
                    let y = b[if b.len() == 1 { 0 } else { i }].as_ref()?;
                    match c.op {
                        "Add" => Some(x.add(y)),
                        "Sub" => Some(x.sub(y)),
                        "Mul" => Some(x.mul(y)),
                        _ => {
                            let k = y.as_const().filter(|&k| k > 0)?;
                            match x.as_const() {
                                Some(v) => Some(SymExpr::constant(v.div_euclid(k))),
                                None => x.div_exact(k),
                            }
                        }
                    }
                })
                .collect()
        }
        "Constant" => {
            let d = crate::verify::error::constant_node_data_attrs(c.attrs)?;
            if d.shape.len() > 1 || d.numel() > MAX_VALUES {
                return None;
            }
            d.to_i64_vec()?
                .into_iter()
                .map(|v| Some(SymExpr::constant(v)))
                .collect()
        }
        _ => return None,
    };
    let v: IntValues = v;
    // Never more values than the result type says.
    if let Some(n) = rt.num_elements() {
        if n != v.len() as u64 {
            return None;
        }
    }
    if v.len() as u64 > MAX_VALUES || rt.elem == ElemType::Bool {
        return None;
    }
    Some(v)
}
