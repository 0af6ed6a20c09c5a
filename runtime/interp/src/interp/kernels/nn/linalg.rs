//! Matrix products and friends: MatMul (batched, broadcast, 1-D operands),
//! MatMulInteger, QLinearMatMul, Gemm, Einsum and Det.

use kiln_ir::ElemType;

use super::common::{
    checked_numel, from_f32, need_float, next_index, out_elem, out_f64, out_i64, to_f32,
};
use super::gemm::{gemm, Fl};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::{broadcast_indices, broadcast_shape};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "MatMul" => matmul,
        "MatMulInteger" => matmul_integer,
        "QLinearMatMul" => qlinear_matmul,
        "Gemm" => gemm_op,
        "Einsum" => einsum,
        "Det" => det,
        _ => return None,
    })
}

/// The shapes of a batched matrix product: (batch shape, m, k, n, result
/// shape, for each batch the matrix index into a and into b).
struct MatPlan {
    m: usize,
    k: usize,
    n: usize,
    out_shape: Vec<usize>,
    pairs: Vec<(usize, usize)>,
}

fn mat_plan(a: &[usize], b: &[usize]) -> KResult<MatPlan> {
    if a.is_empty() || b.is_empty() {
        bail!("MatMul operands must have rank >= 1, got {a:?} and {b:?}");
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        bail!("MatMul inner dimensions differ: {a:?} x {b:?}");
    }
    let ab = &a2[..a2.len() - 2];
    let bb = &b2[..b2.len() - 2];
    let batch = broadcast_shape(ab, bb)?;
    let ia = broadcast_indices(ab, &batch);
    let ib = broadcast_indices(bb, &batch);
    let mut out_shape = batch.clone();
    if a.len() > 1 {
        out_shape.push(m);
    }
    if b.len() > 1 {
        out_shape.push(n);
    }
    Ok(MatPlan {
        m,
        k,
        n,
        out_shape,
        pairs: ia.into_iter().zip(ib).collect(),
    })
}

fn run_plan<T: Copy + Default>(
    p: &MatPlan,
    a: &[T],
    b: &[T],
    mul: impl Fn(&[T], &[T], &mut [T]),
) -> Vec<T> {
    let (ma, mb, mc) = (p.m * p.k, p.k * p.n, p.m * p.n);
    let mut out = vec![T::default(); p.pairs.len() * mc];
    for (bi, &(x, y)) in p.pairs.iter().enumerate() {
        mul(
            &a[x * ma..(x + 1) * ma],
            &b[y * mb..(y + 1) * mb],
            &mut out[bi * mc..(bi + 1) * mc],
        );
    }
    out
}

fn int_gemm(m: usize, n: usize, k: usize, a: &[i64], b: &[i64], c: &mut [i64]) {
    for i in 0..m {
        for t in 0..k {
            let av = a[i * k + t];
            if av == 0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] = c[i * n + j].wrapping_add(av.wrapping_mul(b[t * n + j]));
            }
        }
    }
}

/// A float or integer matrix product of two same-typed tensors.
fn matmul_values(a: &Tensor, b: &Tensor, out: ElemType) -> KResult<Value> {
    let p = mat_plan(&a.shape, &b.shape)?;
    let (m, n, k) = (p.m, p.n, p.k);
    let data = match a.elem() {
        ElemType::F64 => {
            let r = run_plan(&p, &a.to_f64(), &b.to_f64(), |x, y, z| {
                gemm(m, n, k, x, y, z)
            });
            Data::from_f64(out, &r)
        }
        e if e.is_float() => {
            let r = run_plan(&p, &to_f32(&a.data), &to_f32(&b.data), |x, y, z| {
                gemm(m, n, k, x, y, z)
            });
            from_f32(out, r)
        }
        e if e.is_int() => {
            let r = run_plan(&p, &a.to_i64(), &b.to_i64(), |x, y, z| {
                int_gemm(m, n, k, x, y, z)
            });
            Data::from_i64(out, &r)
        }
        e => bail!("MatMul does not support {e}"),
    };
    Ok(Value::tensor(Tensor::new(p.out_shape, data)?))
}

fn matmul(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    if a.elem() != b.elem() {
        bail!(
            "MatMul operands differ in type: {} and {}",
            a.elem(),
            b.elem()
        );
    }
    Ok(vec![matmul_values(a, b, a.elem())?])
}

/// `x - zp` with the zero point broadcast numpy-style, except that a 1-D
/// zero point of a matrix's row count on the left operand is per row.
fn sub_zero_point(x: &Tensor, zp: Option<&Tensor>, per_row: bool) -> KResult<Vec<i64>> {
    let mut v = x.to_i64();
    let Some(zp) = zp else { return Ok(v) };
    let z = zp.to_i64();
    if z.len() == 1 {
        v.iter_mut().for_each(|a| *a -= z[0]);
        return Ok(v);
    }
    let r = x.rank();
    if per_row && zp.rank() == 1 && r >= 2 && z.len() == x.shape[r - 2] {
        let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
        for (i, a) in v.iter_mut().enumerate() {
            *a -= z[(i / cols) % rows];
        }
        return Ok(v);
    }
    let shape = broadcast_shape(&x.shape, &zp.shape)?;
    if shape != x.shape {
        bail!(
            "zero point of shape {:?} does not fit operand {:?}",
            zp.shape,
            x.shape
        );
    }
    let idx = broadcast_indices(&zp.shape, &x.shape);
    for (a, &i) in v.iter_mut().zip(&idx) {
        *a -= z[i];
    }
    Ok(v)
}

fn int_product(
    a: &Tensor,
    av: Vec<i64>,
    b: &Tensor,
    bv: Vec<i64>,
) -> KResult<(Vec<usize>, Vec<i64>)> {
    let p = mat_plan(&a.shape, &b.shape)?;
    let (m, n, k) = (p.m, p.n, p.k);
    let r = run_plan(&p, &av, &bv, |x, y, z| int_gemm(m, n, k, x, y, z));
    Ok((p.out_shape, r))
}

fn matmul_integer(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    let av = sub_zero_point(a, opt_tensor(inputs, 2)?, true)?;
    let bv = sub_zero_point(b, opt_tensor(inputs, 3)?, false)?;
    let (shape, r) = int_product(a, av, b, bv)?;
    Ok(vec![out_i64(ElemType::I32, shape, &r)?])
}

/// Round half to even, then saturate to the range of `elem`.
pub(crate) fn quantize(x: f64, elem: ElemType) -> f64 {
    let r = x.round_ties_even();
    let (lo, hi) = match elem {
        ElemType::U8 => (0.0, 255.0),
        ElemType::I8 => (-128.0, 127.0),
        ElemType::U16 => (0.0, 65535.0),
        ElemType::I16 => (-32768.0, 32767.0),
        ElemType::I32 => (i32::MIN as f64, i32::MAX as f64),
        ElemType::U4 => (0.0, 15.0),
        ElemType::I4 => (-8.0, 7.0),
        _ => return r,
    };
    r.clamp(lo, hi)
}

fn qlinear_matmul(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    let a_scale = tensor(inputs, 1)?;
    let b = tensor(inputs, 3)?;
    let b_scale = tensor(inputs, 4)?;
    let y_scale = tensor(inputs, 6)?;
    let y_zp = opt_tensor(inputs, 7)?;
    let av = sub_zero_point(a, opt_tensor(inputs, 2)?, true)?;
    let bv = sub_zero_point(b, opt_tensor(inputs, 5)?, false)?;
    let (shape, c) = int_product(a, av, b, bv)?;
    // scale = a_scale * b_scale / y_scale, numpy-broadcast, in f32 like
    // the reference, then broadcast onto the result.
    let s_ab = broadcast_shape(&a_scale.shape, &b_scale.shape)?;
    let s_shape = broadcast_shape(&s_ab, &y_scale.shape)?;
    let (av_s, bv_s, yv_s) = (
        to_f32(&a_scale.data),
        to_f32(&b_scale.data),
        to_f32(&y_scale.data),
    );
    let ia = broadcast_indices(&a_scale.shape, &s_shape);
    let ib = broadcast_indices(&b_scale.shape, &s_shape);
    let iy = broadcast_indices(&y_scale.shape, &s_shape);
    // Round after each operation to the scales' own type (f16 scales are
    // multiplied in f16 by the reference).
    let se = a_scale.elem();
    let round = |x: f32| -> f32 {
        match se {
            ElemType::F16 => half::f16::from_f32(x).to_f32(),
            ElemType::BF16 => half::bf16::from_f32(x).to_f32(),
            _ => x,
        }
    };
    let scale: Vec<f64> = (0..ia.len())
        .map(|i| round(round(av_s[ia[i]] * bv_s[ib[i]]) / yv_s[iy[i]]) as f64)
        .collect();
    let out_shape = broadcast_shape(&shape, &s_shape)?;
    if out_shape != shape {
        bail!("scales of shape {s_shape:?} do not fit the product {shape:?}");
    }
    let is = broadcast_indices(&s_shape, &shape);
    let out_elem = out_elem(cx, 0, y_zp.map_or(a.elem(), |t| t.elem()));
    let (zv, iz) = match y_zp {
        Some(z) => {
            if broadcast_shape(&shape, &z.shape)? != shape {
                bail!("y_zero_point of shape {:?} does not fit {shape:?}", z.shape);
            }
            (z.to_f64(), broadcast_indices(&z.shape, &shape))
        }
        None => (vec![0.0], vec![0; c.len()]),
    };
    // Round half to even, then convert with wrapping: the ONNX reference
    // (`np.rint(D).astype(dtype)`) does not saturate here, and the node
    // tests' expected outputs wrap (e.g. -236 becomes 20 in int8).
    let r: Vec<f64> = c
        .iter()
        .enumerate()
        .map(|(i, &x)| (x as f64 * scale[is[i]] + zv[iz[i]]).round_ties_even())
        .collect();
    Ok(vec![out_f64(out_elem, shape, &r)?])
}

fn gemm_op(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    let c = opt_tensor(inputs, 2)?;
    if a.rank() != 2 || b.rank() != 2 {
        bail!(
            "Gemm operands must be matrices, got {:?} and {:?}",
            a.shape,
            b.shape
        );
    }
    let ta = cx.attr_int("transA", 0) != 0;
    let tb = cx.attr_int("transB", 0) != 0;
    let alpha = cx.attr_float("alpha", 1.0) as f64;
    let beta = cx.attr_float("beta", 1.0) as f64;
    let (m, k) = if ta {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let (k2, n) = if tb {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    if k != k2 {
        bail!(
            "Gemm inner dimensions differ: {:?} (transA={ta}) x {:?} (transB={tb})",
            a.shape,
            b.shape
        );
    }
    let elem = a.elem();
    let cvals: Option<Vec<f64>> = match c {
        Some(c) => {
            if broadcast_shape(&c.shape, &[m, n])? != [m, n] {
                bail!(
                    "Gemm C of shape {:?} does not broadcast to [{m}, {n}]",
                    c.shape
                );
            }
            let cv = c.to_f64();
            Some(
                broadcast_indices(&c.shape, &[m, n])
                    .into_iter()
                    .map(|i| cv[i])
                    .collect(),
            )
        }
        None => None,
    };
    fn transpose<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
        let mut o = Vec::with_capacity(v.len());
        for j in 0..c {
            for i in 0..r {
                o.push(v[i * c + j]);
            }
        }
        o
    }
    fn run<T: Fl>(a: Vec<T>, b: Vec<T>, sh: [usize; 5], ta: bool, tb: bool) -> Vec<T> {
        let [m, n, k, a1, b1] = sh;
        let a = if ta { transpose(&a, k, a1) } else { a };
        let b = if tb { transpose(&b, n, b1) } else { b };
        let mut out = vec![T::default(); m * n];
        gemm(m, n, k, &a, &b, &mut out);
        out
    }
    let sh = [m, n, k, a.shape[1], b.shape[1]];
    let prod: Vec<f64> = if elem == ElemType::F64 || elem.is_int() {
        run(a.to_f64(), b.to_f64(), sh, ta, tb)
    } else {
        run(to_f32(&a.data), to_f32(&b.data), sh, ta, tb)
            .into_iter()
            .map(|x| x as f64)
            .collect()
    };
    let r: Vec<f64> = prod
        .iter()
        .enumerate()
        .map(|(i, &p)| alpha * p + cvals.as_ref().map_or(0.0, |c| beta * c[i]))
        .collect();
    Ok(vec![out_f64(elem, vec![m, n], &r)?])
}

/// Einsum by direct summation over every label (small operands only in
/// practice; cost is the product of all label sizes).
fn einsum(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let eq: String = cx
        .attr_str("equation")
        .ok_or("Einsum needs `equation`")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let ops: Vec<&Tensor> = (0..inputs.len())
        .map(|i| tensor(inputs, i))
        .collect::<KResult<_>>()?;
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ops.len() {
        bail!(
            "Einsum equation has {} operands, got {}",
            terms.len(),
            ops.len()
        );
    }
    // Labels: letters are their char code; ellipsis dims are 1000 + k,
    // counted from the right.
    let mut ell_rank = 0usize;
    let mut parsed: Vec<Vec<usize>> = Vec::new();
    for (t, x) in terms.iter().zip(&ops) {
        let letters = t.replace("...", "").chars().count();
        let has_ell = t.contains("...");
        if !has_ell && letters != x.rank() || has_ell && letters > x.rank() {
            bail!(
                "Einsum term `{t}` does not fit operand of shape {:?}",
                x.shape
            );
        }
        let er = if has_ell { x.rank() - letters } else { 0 };
        ell_rank = ell_rank.max(er);
        parsed.push(expand(t, er)?);
    }
    fn expand(t: &str, er: usize) -> KResult<Vec<usize>> {
        let mut out = Vec::new();
        let (pre, post) = match t.split_once("...") {
            Some((p, q)) => (p, Some(q)),
            None => (t, None),
        };
        for c in pre.chars() {
            if !c.is_ascii_alphabetic() {
                bail!("bad Einsum label `{c}`");
            }
            out.push(c as usize);
        }
        if let Some(q) = post {
            for k in (0..er).rev() {
                out.push(1000 + k);
            }
            for c in q.chars() {
                if !c.is_ascii_alphabetic() {
                    bail!("bad Einsum label `{c}`");
                }
                out.push(c as usize);
            }
        }
        Ok(out)
    }
    let out_labels: Vec<usize> = match rhs {
        Some(r) => expand(r, ell_rank)?,
        None => {
            let mut o: Vec<usize> = (0..ell_rank).rev().map(|k| 1000 + k).collect();
            let mut letters: Vec<usize> = parsed
                .iter()
                .flatten()
                .copied()
                .filter(|&l| l < 1000)
                .collect();
            letters.sort_unstable();
            let once: Vec<usize> = letters
                .iter()
                .copied()
                .filter(|l| letters.iter().filter(|x| *x == l).count() == 1)
                .collect();
            o.extend(once);
            o
        }
    };
    // Sizes (ellipsis dims broadcast).
    let mut labels: Vec<usize> = out_labels.clone();
    for p in &parsed {
        for &l in p {
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
    }
    let mut size = vec![1usize; labels.len()];
    let mut seen = vec![false; labels.len()];
    for (p, x) in parsed.iter().zip(&ops) {
        for (&l, &d) in p.iter().zip(&x.shape) {
            let li = labels.iter().position(|&y| y == l).expect("label");
            if !seen[li] || size[li] == 1 {
                size[li] = d;
                seen[li] = true;
            } else if d != size[li] && !(l >= 1000 && d == 1) {
                bail!("Einsum label sizes disagree: {} vs {d}", size[li]);
            }
        }
    }
    for &l in &out_labels {
        if !parsed.iter().flatten().any(|&x| x == l) {
            bail!("Einsum output label does not appear in an input");
        }
    }
    let out_shape: Vec<usize> = size[..out_labels.len()].to_vec();
    // Per operand: stride of each label (0 for broadcast ellipsis dims).
    let op_strides: Vec<Vec<usize>> = parsed
        .iter()
        .zip(&ops)
        .map(|(p, x)| {
            let st = x.strides();
            let mut s = vec![0usize; labels.len()];
            for (k, &l) in p.iter().enumerate() {
                let li = labels.iter().position(|&y| y == l).expect("label");
                if x.shape[k] != 1 || size[li] == 1 {
                    s[li] += st[k];
                }
            }
            s
        })
        .collect();
    let elem = ops.first().map_or(ElemType::F32, |t| t.elem());
    let is_int = elem.is_int();
    let fvals: Vec<Vec<f64>> = ops.iter().map(|t| t.to_f64()).collect();
    let ivals: Vec<Vec<i64>> = if is_int {
        ops.iter().map(|t| t.to_i64()).collect()
    } else {
        vec![]
    };
    let total = checked_numel(&size)?;
    let out_n: usize = out_shape.iter().product();
    let inner_n = total.checked_div(out_n).unwrap_or(0);
    let mut fout = vec![0.0f64; out_n];
    let mut iout = vec![0i64; out_n];
    let mut idx = vec![0usize; labels.len()];
    if total > 0 {
        for o in 0..out_n {
            for _ in 0..inner_n {
                let mut fp = 1.0;
                let mut ip = 1i64;
                for (j, s) in op_strides.iter().enumerate() {
                    let off: usize = idx.iter().zip(s).map(|(a, b)| a * b).sum();
                    if is_int {
                        ip = ip.wrapping_mul(ivals[j][off]);
                    } else {
                        fp *= fvals[j][off];
                    }
                }
                fout[o] += fp;
                iout[o] = iout[o].wrapping_add(ip);
                next_index(&mut idx, &size);
            }
        }
    }
    if is_int {
        Ok(vec![out_i64(elem, out_shape, &iout)?])
    } else {
        Ok(vec![out_f64(elem, out_shape, &fout)?])
    }
}

fn det(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "Det input")?;
    let r = x.rank();
    if r < 2 || x.shape[r - 1] != x.shape[r - 2] {
        bail!("Det needs square matrices, got {:?}", x.shape);
    }
    let n = x.shape[r - 1];
    let v = x.to_f64();
    let batch: usize = x.shape[..r - 2].iter().product();
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut m = v[b * n * n..(b + 1) * n * n].to_vec();
        let mut d = 1.0;
        for c in 0..n {
            let p = (c..n)
                .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
                .unwrap_or(c);
            if m[p * n + c] == 0.0 {
                d = 0.0;
                break;
            }
            if p != c {
                for j in 0..n {
                    m.swap(p * n + j, c * n + j);
                }
                d = -d;
            }
            let piv = m[c * n + c];
            d *= piv;
            for i in c + 1..n {
                let f = m[i * n + c] / piv;
                for j in c..n {
                    m[i * n + j] -= f * m[c * n + j];
                }
            }
        }
        out.push(d);
    }
    Ok(vec![out_f64(x.elem(), x.shape[..r - 2].to_vec(), &out)?])
}
