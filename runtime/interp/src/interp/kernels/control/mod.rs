//! Kernels: control flow, sequences and optionals, strings, signal
//! processing, recurrent networks, random generators, and the `ai.onnx.ml`
//! and `ai.onnx.preview.training` ops. Each submodule has its own table;
//! this file asks them in turn and holds the axis-slicing helpers they
//! share (select, slice, concatenate and stack along an axis).

mod flow;
mod ml;
mod random;
mod rnn;
mod sequence;
mod signal;
mod strings;
mod training;

use kiln_ir::{ElemType, Type};

use super::{bail, Ctx, KResult, KernelFn};
use crate::tensor::{numel, Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    #[allow(clippy::unnecessary_lazy_evaluations)]
    flow::lookup(op)
        .or_else(|| sequence::lookup(op))
        .or_else(|| strings::lookup(op))
        .or_else(|| signal::lookup(op))
        .or_else(|| rnn::lookup(op))
        .or_else(|| random::lookup(op))
        .or_else(|| ml::lookup(op))
        .or_else(|| training::lookup(op))
        .or_else(|| match op {
            "ImageDecoder" => Some(image_decoder as KernelFn),
            _ => None,
        })
}

fn image_decoder(_: &mut Ctx, _: &[Option<Value>]) -> KResult<Vec<Value>> {
    bail!("ImageDecoder is not supported by the interpreter")
}

/// The declared element type of tensor result `i`, or `default` when the
/// declaration does not say.
pub(crate) fn out_elem(ctx: &Ctx, i: usize, default: ElemType) -> ElemType {
    ctx.output_elem(i).unwrap_or(default)
}

/// A float tensor of element type `elem` from f64 values.
pub(crate) fn from_f64(elem: ElemType, shape: Vec<usize>, v: &[f64]) -> KResult<Tensor> {
    Ok(Tensor::new(shape, Data::from_f64(elem, v))?)
}

/// Operand `i` as a scalar integer (a one-element tensor of any integer
/// or float type), `None` when omitted.
pub(crate) fn opt_scalar_i64(inputs: &[Option<Value>], i: usize) -> KResult<Option<i64>> {
    match super::opt_tensor(inputs, i)? {
        None => Ok(None),
        Some(t) if t.len() == 1 => Ok(Some(t.to_i64()[0])),
        Some(t) => bail!("operand {i} must hold one element, got shape {:?}", t.shape),
    }
}

/// Operand `i` as a scalar float.
pub(crate) fn scalar_f64(inputs: &[Option<Value>], i: usize) -> KResult<f64> {
    let t = super::tensor(inputs, i)?;
    if t.len() != 1 {
        bail!("operand {i} must hold one element, got shape {:?}", t.shape);
    }
    Ok(t.to_f64()[0])
}

/// (outer, dim, inner) sizes around `axis`.
fn split_dims(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        numel(&shape[..axis]),
        shape[axis],
        numel(&shape[axis + 1..]),
    )
}

/// The slab `start..start+len` of `t` along `axis` (the axis kept).
pub(crate) fn slice_axis(t: &Tensor, axis: usize, start: usize, len: usize) -> KResult<Tensor> {
    if axis >= t.rank() || start.checked_add(len).is_none_or(|e| e > t.shape[axis]) {
        bail!(
            "slice {start}..{} of axis {axis} is out of range for shape {:?}",
            start + len,
            t.shape
        );
    }
    let (outer, dim, inner) = split_dims(&t.shape, axis);
    let mut idx = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * dim + start) * inner;
        idx.extend(base..base + len * inner);
    }
    let mut shape = t.shape.clone();
    shape[axis] = len;
    Ok(Tensor::new(shape, t.data.gather(&idx))?)
}

/// Index `i` of `t` along `axis`, the axis removed.
pub(crate) fn select_axis(t: &Tensor, axis: usize, i: usize) -> KResult<Tensor> {
    let mut s = slice_axis(t, axis, i, 1)?;
    s.shape.remove(axis);
    Ok(s)
}

/// Concatenate tensors of one element type along an existing `axis`.
pub(crate) fn concat_axis(parts: &[&Tensor], axis: usize) -> KResult<Tensor> {
    let Some(first) = parts.first() else {
        bail!("nothing to concatenate")
    };
    let rank = first.rank();
    if axis >= rank {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    for p in parts {
        if p.elem() != first.elem() {
            bail!("cannot concatenate {} with {}", first.elem(), p.elem());
        }
        if p.rank() != rank || (0..rank).any(|d| d != axis && p.shape[d] != first.shape[d]) {
            bail!(
                "cannot concatenate shapes {:?} and {:?} along axis {axis}",
                first.shape,
                p.shape
            );
        }
    }
    let outer = numel(&first.shape[..axis]);
    let inner = numel(&first.shape[axis + 1..]);
    let total: usize = parts.iter().map(|p| p.shape[axis]).sum();
    let all = Data::concat(&parts.iter().map(|p| &p.data).collect::<Vec<_>>())
        .ok_or("cannot concatenate tensors of different element types")?;
    let mut offsets = Vec::with_capacity(parts.len());
    let mut off = 0;
    for p in parts {
        offsets.push(off);
        off += p.len();
    }
    let mut idx = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, &base) in parts.iter().zip(&offsets) {
            let chunk = p.shape[axis] * inner;
            let start = base + o * chunk;
            idx.extend(start..start + chunk);
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = total;
    Ok(Tensor::new(shape, all.gather(&idx))?)
}

/// Stack tensors of one shape along a new `axis` (0..=rank).
pub(crate) fn stack_axis(parts: &[&Tensor], axis: usize) -> KResult<Tensor> {
    let Some(first) = parts.first() else {
        bail!("nothing to stack")
    };
    if axis > first.rank() {
        bail!(
            "axis {axis} is out of range for stacking rank {}",
            first.rank()
        );
    }
    let mut expanded = Vec::with_capacity(parts.len());
    for p in parts {
        if p.shape != first.shape {
            bail!("cannot stack shapes {:?} and {:?}", first.shape, p.shape);
        }
        let mut shape = p.shape.clone();
        shape.insert(axis, 1);
        expanded.push(Tensor {
            shape,
            data: p.data.clone(),
        });
    }
    concat_axis(&expanded.iter().collect::<Vec<_>>(), axis)
}

/// An empty tensor for a declared type: known dims kept, the others 0.
pub(crate) fn empty_like_type(ty: Option<&Type>, lead: Option<usize>) -> Tensor {
    let (elem, dims) = match ty.and_then(Type::as_tensor) {
        Some(t) => (t.elem, t.shape.clone()),
        None => (ElemType::F32, None),
    };
    let mut shape: Vec<usize> = match dims {
        Some(d) => d
            .iter()
            .map(|x| x.as_known().unwrap_or(0) as usize)
            .collect(),
        None => vec![0],
    };
    if let (Some(n), Some(s)) = (lead, shape.first_mut()) {
        *s = n;
    }
    Tensor::zeros(elem, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::new(shape.to_vec(), Data::I64(v.to_vec())).unwrap()
    }

    #[test]
    fn axis_helpers() {
        let a = t(&[2, 3], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(select_axis(&a, 1, 2).unwrap(), t(&[2], &[2, 5]));
        assert_eq!(slice_axis(&a, 1, 1, 2).unwrap(), t(&[2, 2], &[1, 2, 4, 5]));
        let b = t(&[2, 1], &[9, 8]);
        assert_eq!(
            concat_axis(&[&a, &b], 1).unwrap(),
            t(&[2, 4], &[0, 1, 2, 9, 3, 4, 5, 8])
        );
        let s = stack_axis(&[&t(&[2], &[1, 2]), &t(&[2], &[3, 4])], 1).unwrap();
        assert_eq!(s, t(&[2, 2], &[1, 3, 2, 4]));
        assert!(slice_axis(&a, 1, 2, 2).is_err());
    }

    fn run(src: &str, inputs: Vec<(&str, Value)>) -> Result<Vec<Value>, crate::InterpError> {
        let m = kiln_ir::parse_module(src).expect("parse");
        let interp = crate::Interpreter::new(&m);
        let inputs = inputs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        interp.run(&inputs)
    }

    fn f32s(shape: &[usize], v: &[f32]) -> Value {
        Value::tensor(Tensor::new(shape.to_vec(), Data::F32(v.to_vec())).unwrap())
    }

    #[test]
    fn scan_reverse_input_and_output_axis() {
        let src = "module @m opset(ai.onnx = 17) {
  input %init: f32[2]
  input %x: f32[3,2]
  %s, %y = Scan(%init, %x) {
    body = graph {
      input %s_in: f32[2]
      input %x_in: f32[2]
      return %s_in, %x_in
    },
    num_scan_inputs = 1,
    scan_input_directions = [1],
    scan_output_axes = [1]
  } : f32[2], f32[2,3]
  return %s, %y
}
";
        let out = run(
            src,
            vec![
                ("init", f32s(&[2], &[7.0, 8.0])),
                ("x", f32s(&[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
            ],
        )
        .unwrap();
        assert_eq!(out[0], f32s(&[2], &[7.0, 8.0]));
        assert_eq!(out[1], f32s(&[2, 3], &[4.0, 2.0, 0.0, 5.0, 3.0, 1.0]));
    }

    #[test]
    fn loop_without_iterations_gives_empty_scan_outputs() {
        let src = "module @m opset(ai.onnx = 17) {
  input %m: i64[]
  input %v: f32[2]
  %v_out, %scan = Loop(%m, none, %v) {
    body = graph {
      input %i: i64[]
      input %c: bool[]
      input %v_in: f32[2]
      return %c, %v_in, %v_in
    }
  } : f32[2], f32[?,2]
  return %v_out, %scan
}
";
        let m = |n: i64| Value::tensor(Tensor::scalar(Data::I64(vec![n])));
        let out = run(src, vec![("m", m(0)), ("v", f32s(&[2], &[1.0, 2.0]))]).unwrap();
        assert_eq!(out[1], f32s(&[0, 2], &[]));
        let out = run(src, vec![("m", m(3)), ("v", f32s(&[2], &[1.0, 2.0]))]).unwrap();
        assert_eq!(out[1], f32s(&[3, 2], &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]));
    }

    #[test]
    fn bidirectional_rnn_respects_sequence_lengths() {
        // W = R = 0, so every step gives tanh(bias): 0.5 forward, -0.5
        // reverse; steps past a batch entry's length stay zero.
        let src = "module @m opset(ai.onnx = 22) {
  input %x: f32[3,2,1]
  input %w: f32[2,1,1]
  input %r: f32[2,1,1]
  input %b: f32[2,2]
  input %lens: i32[2]
  %y, %yh = RNN(%x, %w, %r, %b, %lens) {direction = \"bidirectional\", hidden_size = 1} : f32[3,2,2,1], f32[2,2,1]
  return %y, %yh
}
";
        let (a, b) = (0.5f32.atanh(), (-0.5f32).atanh());
        let lens = Value::tensor(Tensor::new(vec![2], Data::I32(vec![3, 1])).unwrap());
        let out = run(
            src,
            vec![
                ("x", f32s(&[3, 2, 1], &[1.0; 6])),
                ("w", f32s(&[2, 1, 1], &[0.0; 2])),
                ("r", f32s(&[2, 1, 1], &[0.0; 2])),
                ("b", f32s(&[2, 2], &[a, 0.0, b, 0.0])),
                ("lens", lens),
            ],
        )
        .unwrap();
        let y = out[0].as_tensor().unwrap().to_f64();
        let want = [
            0.5, 0.5, -0.5, -0.5, 0.5, 0.0, -0.5, 0.0, 0.5, 0.0, -0.5, 0.0,
        ];
        assert!(
            y.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6),
            "{y:?}"
        );
        let yh = out[1].as_tensor().unwrap().to_f64();
        assert!(
            yh.iter()
                .zip([0.5, 0.5, -0.5, -0.5])
                .all(|(g, w)| (g - w).abs() < 1e-6),
            "{yh:?}"
        );
    }

    #[test]
    fn bad_positions_and_image_decoder_are_errors() {
        let src = "module @m opset(ai.onnx = 17) {
  input %x: f32[2]
  input %p: i64[]
  %s = SequenceConstruct(%x, %x) : seq<f32[2]>
  %e = SequenceAt(%s, %p) : f32[2]
  return %e
}
";
        let p = |n: i64| Value::tensor(Tensor::scalar(Data::I64(vec![n])));
        assert!(run(src, vec![("x", f32s(&[2], &[1.0, 2.0])), ("p", p(-2))]).is_ok());
        let err = run(src, vec![("x", f32s(&[2], &[1.0, 2.0])), ("p", p(2))]).unwrap_err();
        assert!(err.message.contains("out of range"), "{err}");
        let src = "module @m opset(ai.onnx = 20) {
  input %x: u8[4]
  %y = ImageDecoder(%x) : u8[?,?,3]
  return %y
}
";
        let err = run(
            src,
            vec![(
                "x",
                Value::tensor(Tensor::new(vec![4], Data::U8(vec![0; 4])).unwrap()),
            )],
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("ImageDecoder is not supported by the interpreter"),
            "{err}"
        );
    }
}
