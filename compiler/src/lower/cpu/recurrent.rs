//! Planning `RNN`, `GRU` and `LSTM` steps: the common form runs natively
//! ([`kiln_runtime::cpu::rnn`]); non-default activations, clip, peepholes,
//! coupled gates and per-sequence lengths stay on the interpreter, whose
//! driver covers them all. Constant W and R are packed here, once, and
//! leave the module (the step captures them).

use kiln_ir::{Attr, ElemType, Module, Node, ValueId};
use kiln_runtime::cpu::kernels::QuantBits;
use kiln_runtime::cpu::rnn::{PackedWeights, QuantWeight, Recurrent};
use kiln_runtime::cpu::steps::recurrent::RecurrentStep;
use kiln_runtime::cpu::NativeStep;

pub(super) fn recurrent(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let layer = crate::lower::common::recurrent_layer(m, n)?;
    let direction = n
        .attrs
        .get("direction")
        .and_then(Attr::as_str)
        .unwrap_or("forward");
    let (wg, seq, batch, input, dirs) = (
        layer.hidden * layer.cell_gates(),
        layer.seq,
        layer.batch,
        layer.input,
        layer.dirs,
    );
    let k = n.outputs.len();
    let packed = if n.op == "kiln.DequantLSTM" {
        quantized(m, n, &layer)?
    } else {
        let w = f32_constant(m, n.input(1));
        let r = f32_constant(m, n.input(2));
        PackedWeights::new(&layer, w.as_deref(), r.as_deref())?
    };
    let mut captured = vec![];
    if packed.has_w() {
        captured.push(1);
    }
    if packed.has_r() {
        captured.push(2);
    }
    let what = format!("{} {direction} hidden {}", n.op, layer.hidden);
    let flops = 2.0 * (seq * batch * dirs * wg * (input + layer.hidden)) as f64;
    let mut step = NativeStep::new(
        Box::new(RecurrentStep {
            packed,
            layer,
            results: [k > 0, k > 1, k > 2],
        }),
        what,
        flops,
    );
    if n.op == "kiln.DequantLSTM" {
        // The weights' parameters are packed with them.
        captured.extend(8..12);
    }
    step.captured = captured;
    Ok(step)
}

/// The data of an f32 constant.
fn f32_constant(m: &Module, v: Option<ValueId>) -> Option<Vec<f32>> {
    let d = m.constant(v?)?;
    if d.elem != ElemType::F32 {
        return None;
    }
    Some(d.to_f64_vec()?.into_iter().map(|x| x as f32).collect())
}

/// A constant 8-bit weight's type, values, scales and zero points.
type Quantized = (QuantBits, Vec<i32>, Vec<f32>, Vec<i32>);

/// A `kiln.DequantLSTM`'s constant 8-bit W and R (operands 1 and 2, their
/// scales and zero points 8-11), packed.
fn quantized(m: &Module, n: &Node, layer: &Recurrent) -> Result<PackedWeights, String> {
    let weight = |at: usize| -> Result<Quantized, String> {
        let constant = |k: usize| {
            n.input(k)
                .and_then(|v| m.constant(v))
                .ok_or_else(|| format!("operand {k} is not a constant"))
        };
        let q = constant(at)?;
        let bits = match q.elem {
            ElemType::I8 => QuantBits::I8,
            ElemType::U8 => QuantBits::U8,
            e => return Err(format!("weights of type {e}")),
        };
        let ints = |d: &kiln_ir::TensorData| -> Result<Vec<i32>, String> {
            Ok(d.to_f64_vec()
                .ok_or("weights without data")?
                .into_iter()
                .map(|x| x as i32)
                .collect())
        };
        let values = ints(q)?;
        let scales: Vec<f32> = constant(8 + 2 * (at - 1))?
            .to_f64_vec()
            .ok_or("scales without data")?
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let zeros = match n.input(9 + 2 * (at - 1)) {
            Some(_) => ints(constant(9 + 2 * (at - 1))?)?,
            None => vec![0; scales.len()],
        };
        Ok((bits, values, scales, zeros))
    };
    let (wb, wv, ws, wz) = weight(1)?;
    let (rb, rv, rs, rz) = weight(2)?;
    let (wf, rf) = (|i: usize| wv[i], |i: usize| rv[i]);
    let w = QuantWeight {
        bits: wb,
        len: wv.len(),
        value: &wf,
        scales: &ws,
        zeros: &wz,
    };
    let r = QuantWeight {
        bits: rb,
        len: rv.len(),
        value: &rf,
        scales: &rs,
        zeros: &rz,
    };
    PackedWeights::quantized(layer, &w, &r)
}
