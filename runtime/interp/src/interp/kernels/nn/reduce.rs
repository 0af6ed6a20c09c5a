//! Reductions (ReduceSum, ReduceMean, ... with `axes` as an operand,
//! keepdims, noop_with_empty_axes and empty-set identities) and
//! ArgMax/ArgMin.

use kiln_ir::ElemType;

use super::common::{axes_operand, next_index, out_f64, out_i64};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::norm_axis;
use crate::tensor::{strides, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "ReduceSum" => |cx, i| reduce(cx, i, Red::Sum),
        "ReduceMean" => |cx, i| reduce(cx, i, Red::Mean),
        "ReduceProd" => |cx, i| reduce(cx, i, Red::Prod),
        "ReduceMax" => |cx, i| reduce(cx, i, Red::Max),
        "ReduceMin" => |cx, i| reduce(cx, i, Red::Min),
        "ReduceL1" => |cx, i| reduce(cx, i, Red::L1),
        "ReduceL2" => |cx, i| reduce(cx, i, Red::L2),
        "ReduceSumSquare" => |cx, i| reduce(cx, i, Red::SumSquare),
        "ReduceLogSum" => |cx, i| reduce(cx, i, Red::LogSum),
        "ReduceLogSumExp" => |cx, i| reduce(cx, i, Red::LogSumExp),
        "ArgMax" => |cx, i| arg(cx, i, true),
        "ArgMin" => |cx, i| arg(cx, i, false),
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Red {
    Sum,
    Mean,
    Prod,
    Max,
    Min,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

/// For each input element (row-major), the index of the output element it
/// reduces into, and the output shape with reduced dims kept as 1.
fn reduce_map(shape: &[usize], axes: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
        .collect();
    let ost = strides(&out_shape);
    let n: usize = shape.iter().product();
    let mut map = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let mut o = 0;
        for d in 0..shape.len() {
            if !axes.contains(&d) {
                o += idx[d] * ost[d];
            }
        }
        map.push(o);
        next_index(&mut idx, shape);
    }
    (map, out_shape)
}

/// The smallest and largest value of an integer element type, as i64
/// bit patterns that `Data::from_i64` wraps back to them.
fn int_limits(e: ElemType) -> (i64, i64) {
    match e {
        ElemType::I64 => (i64::MIN, i64::MAX),
        ElemType::I32 => (i32::MIN as i64, i32::MAX as i64),
        ElemType::I16 => (i16::MIN as i64, i16::MAX as i64),
        ElemType::I8 => (i8::MIN as i64, i8::MAX as i64),
        ElemType::I4 => (-8, 7),
        ElemType::U64 => (0, -1),
        ElemType::U32 => (0, u32::MAX as i64),
        ElemType::U16 => (0, u16::MAX as i64),
        ElemType::U8 => (0, u8::MAX as i64),
        ElemType::U4 => (0, 15),
        _ => (0, 1),
    }
}

/// Integer reductions whose result is exact in the element type (as i64
/// bit patterns, wrapping as the type does): `op` one of ReduceSum,
/// ReduceMean, ReduceProd, ReduceMax, ReduceMin, ReduceL1,
/// ReduceSumSquare; `v` the operand, `x` of `shape`, reduced over `axes`
/// into the kept dims. The native integer reduction runs this too.
pub fn reduce_ints_named(
    elem: ElemType,
    op: &str,
    v: &[i64],
    shape: &[usize],
    axes: &[usize],
) -> KResult<Vec<i64>> {
    let op = match op {
        "ReduceSum" => Red::Sum,
        "ReduceMean" => Red::Mean,
        "ReduceProd" => Red::Prod,
        "ReduceMax" => Red::Max,
        "ReduceMin" => Red::Min,
        "ReduceL1" => Red::L1,
        "ReduceSumSquare" => Red::SumSquare,
        _ => bail!("{op} is not an exact integer reduction"),
    };
    let (map, kept) = reduce_map(shape, axes);
    let count = axes.iter().map(|&a| shape[a]).product();
    reduce_ints(elem, op, v, &map, kept.iter().product(), count)
}

fn reduce_ints(
    elem: ElemType,
    op: Red,
    v: &[i64],
    map: &[usize],
    out_n: usize,
    count: usize,
) -> KResult<Vec<i64>> {
    let (lo, hi) = int_limits(elem);
    let unsigned64 = elem == ElemType::U64;
    let init = match op {
        Red::Prod => 1,
        Red::Max => lo,
        Red::Min => hi,
        _ => 0,
    };
    let mut acc = vec![init; out_n];
    for (&xv, &o) in v.iter().zip(map) {
        let a = &mut acc[o];
        *a = match op {
            Red::Sum | Red::Mean => a.wrapping_add(xv),
            Red::Prod => a.wrapping_mul(xv),
            Red::L1 => a.wrapping_add(xv.wrapping_abs()),
            Red::SumSquare => a.wrapping_add(xv.wrapping_mul(xv)),
            Red::Max if unsigned64 => ((*a as u64).max(xv as u64)) as i64,
            Red::Min if unsigned64 => ((*a as u64).min(xv as u64)) as i64,
            Red::Max => (*a).max(xv),
            _ => (*a).min(xv),
        };
    }
    if op == Red::Mean {
        if count == 0 {
            bail!("mean of an empty set of integers");
        }
        for a in &mut acc {
            *a /= count as i64;
        }
    }
    Ok(acc)
}

fn reduce(cx: &mut Ctx, inputs: &[Option<Value>], op: Red) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let rank = x.rank();
    let keepdims = cx.attr_int("keepdims", 1) != 0;
    let noop = cx.attr_int("noop_with_empty_axes", 0) != 0;
    let elem = x.elem();
    if elem == ElemType::String || elem == ElemType::C64 || elem == ElemType::C128 {
        bail!("cannot reduce {elem} tensors");
    }
    let axes = match axes_operand(opt_tensor(inputs, 1)?, rank)? {
        Some(a) if !a.is_empty() => a,
        _ if noop => {
            // Identity (ReduceSumSquare squares, as its reference does).
            if op == Red::SumSquare {
                return square(x).map(|v| vec![v]);
            }
            return Ok(vec![Value::tensor(x.clone())]);
        }
        _ => (0..rank).collect(),
    };
    let (map, kept_shape) = reduce_map(&x.shape, &axes);
    let out_n: usize = kept_shape.iter().product();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let out_shape: Vec<usize> = if keepdims {
        kept_shape
    } else {
        x.shape
            .iter()
            .enumerate()
            .filter(|(d, _)| !axes.contains(d))
            .map(|(_, &n)| n)
            .collect()
    };
    let int_exact = (elem.is_int() || elem == ElemType::Bool)
        && matches!(
            op,
            Red::Sum | Red::Mean | Red::Prod | Red::Max | Red::Min | Red::L1 | Red::SumSquare
        );
    if int_exact {
        let acc = reduce_ints(elem, op, &x.to_i64(), &map, out_n, count)?;
        return Ok(vec![out_i64(elem, out_shape, &acc)?]);
    }
    let v = x.to_f64();
    let mut acc = vec![
        match op {
            Red::Prod => 1.0,
            Red::Max | Red::LogSumExp => f64::NEG_INFINITY,
            Red::Min => f64::INFINITY,
            _ => 0.0,
        };
        out_n
    ];
    if op == Red::LogSumExp {
        // Shift by the largest finite value per output for stability.
        for (&xv, &o) in v.iter().zip(&map) {
            if xv.is_finite() && xv > acc[o] {
                acc[o] = xv;
            }
        }
        let shift: Vec<f64> = acc
            .iter()
            .map(|&m| if m.is_finite() { m } else { 0.0 })
            .collect();
        let mut sums = vec![0.0; out_n];
        for (&xv, &o) in v.iter().zip(&map) {
            sums[o] += (xv - shift[o]).exp();
        }
        let r: Vec<f64> = sums.iter().zip(&shift).map(|(&s, &m)| s.ln() + m).collect();
        return Ok(vec![out_f64(elem, out_shape, &r)?]);
    }
    for (&xv, &o) in v.iter().zip(&map) {
        let a = &mut acc[o];
        match op {
            Red::Sum | Red::Mean | Red::LogSum => *a += xv,
            Red::Prod => *a *= xv,
            Red::L1 => *a += xv.abs(),
            Red::L2 | Red::SumSquare => *a += xv * xv,
            Red::Max => {
                if xv > *a || xv.is_nan() {
                    *a = xv
                }
            }
            Red::Min => {
                if xv < *a || xv.is_nan() {
                    *a = xv
                }
            }
            Red::LogSumExp => unreachable!(),
        }
    }
    for a in &mut acc {
        *a = match op {
            Red::Mean => *a / count as f64,
            Red::L2 => a.sqrt(),
            Red::LogSum => a.ln(),
            _ => *a,
        };
    }
    Ok(vec![out_f64(elem, out_shape, &acc)?])
}

fn square(x: &Tensor) -> KResult<Value> {
    if x.elem().is_float() {
        let v: Vec<f64> = x.to_f64().iter().map(|a| a * a).collect();
        out_f64(x.elem(), x.shape.clone(), &v)
    } else {
        let v: Vec<i64> = x.to_i64().iter().map(|a| a.wrapping_mul(*a)).collect();
        out_i64(x.elem(), x.shape.clone(), &v)
    }
}

/// ArgMax/ArgMin's float order: whether `p` is strictly better than `q`.
/// NaN wins (numpy), the first NaN over later ones.
pub fn arg_better(p: f64, q: f64, is_max: bool) -> bool {
    if q.is_nan() {
        false
    } else if p.is_nan() {
        true
    } else if is_max {
        p > q
    } else {
        p < q
    }
}

fn arg(cx: &mut Ctx, inputs: &[Option<Value>], is_max: bool) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let rank = x.rank();
    let axis = norm_axis(cx.attr_int("axis", 0), rank)?;
    let keepdims = cx.attr_int("keepdims", 1) != 0;
    let last = cx.attr_int("select_last_index", 0) != 0;
    let shape = if rank == 0 { vec![1] } else { x.shape.clone() };
    let n = shape[axis];
    if n == 0 {
        bail!("ArgMax/ArgMin over an empty axis");
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    // Compare in f64 for floats, exactly in i64 (or u64) for integers.
    let better: Box<dyn Fn(usize, usize) -> bool> = if x.elem().is_float() {
        let v = x.to_f64();
        Box::new(move |a, b| arg_better(v[a], v[b], is_max))
    } else if x.elem() == ElemType::U64 {
        let v: Vec<u64> = x.to_i64().into_iter().map(|a| a as u64).collect();
        Box::new(move |a, b| if is_max { v[a] > v[b] } else { v[a] < v[b] })
    } else {
        let v = x.to_i64();
        Box::new(move |a, b| if is_max { v[a] > v[b] } else { v[a] < v[b] })
    };
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * n * inner + k * inner + i;
            let mut best = 0;
            for k in 1..n {
                let take = if last {
                    !better(at(best), at(k))
                } else {
                    better(at(k), at(best))
                };
                if take {
                    best = k;
                }
            }
            out.push(best as i64);
        }
    }
    let mut out_shape = shape.clone();
    if keepdims {
        out_shape[axis] = 1;
    } else {
        out_shape.remove(axis);
    }
    if rank == 0 && !keepdims {
        out_shape.clear();
    }
    Ok(vec![out_i64(ElemType::I64, out_shape, &out)?])
}
