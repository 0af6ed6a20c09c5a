//! Planning `RNN`, `GRU` and `LSTM` steps: the common form runs natively
//! ([`kiln_runtime::cpu::rnn`]); non-default activations, clip, peepholes,
//! coupled gates and per-sequence lengths stay on the interpreter, whose
//! driver covers them all.

use kiln_ir::{Attr, ElemType, Module, Node};
use kiln_runtime::cpu::rnn::{Cell, Recurrent};
use kiln_runtime::cpu::steps::recurrent::RecurrentStep;
use kiln_runtime::cpu::NativeStep;

pub(super) fn recurrent(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let int = |k: &str| n.attrs.get(k).and_then(Attr::as_int).unwrap_or(0);
    for a in ["activations", "activation_alpha", "activation_beta", "clip"] {
        if n.attrs.contains_key(a) {
            return Err(format!("attribute {a}"));
        }
    }
    if int("input_forget") != 0 {
        return Err("coupled input and forget gates".into());
    }
    if n.input(4).is_some() {
        return Err("sequence_lens given".into());
    }
    if n.op == "LSTM" && n.input(7).is_some() {
        return Err("peepholes".into());
    }
    let cell = match n.op.as_str() {
        "RNN" => Cell::Rnn,
        "GRU" => Cell::Gru {
            linear_before_reset: int("linear_before_reset") != 0,
        },
        "LSTM" => Cell::Lstm,
        op => return Err(format!("not a recurrent op: {op}")),
    };
    for v in n.inputs.iter().flatten().chain(&n.outputs) {
        if m.ty(*v).as_tensor().map(|t| t.elem) != Some(ElemType::F32) {
            return Err("not f32".into());
        }
    }
    let x = m.static_shape(n.input(0).ok_or("no X")?)?;
    let w = m.static_shape(n.input(1).ok_or("no W")?)?;
    let batch_major = int("layout") != 0;
    let (direction, dirs) = match n.attrs.get("direction").and_then(Attr::as_str) {
        None | Some("forward") => ("forward", 1),
        Some("reverse") => ("reverse", 1),
        Some("bidirectional") => ("bidirectional", 2),
        Some(d) => return Err(format!("direction {d}")),
    };
    let (&[a0, a1, input], &[wd, wg, wi]) = (&x[..], &w[..]) else {
        return Err("X and W must have rank 3".into());
    };
    let (seq, batch) = if batch_major { (a1, a0) } else { (a0, a1) };
    let g = match cell {
        Cell::Rnn => 1,
        Cell::Gru { .. } => 3,
        Cell::Lstm => 4,
    };
    if wd != dirs || wi != input || wg % g != 0 {
        return Err(format!("W {w:?} does not fit X {x:?}"));
    }
    for v in n.outputs.iter() {
        m.static_shape(*v)?;
    }
    let layer = Recurrent {
        cell,
        seq,
        batch,
        input,
        hidden: wg / g,
        dirs,
        reverse: direction == "reverse",
        batch_major,
    };
    let k = n.outputs.len();
    let what = format!("{} {direction} hidden {}", n.op, wg / g);
    let flops = 2.0 * (seq * batch * dirs * wg * (input + wg / g)) as f64;
    Ok(NativeStep::new(
        Box::new(RecurrentStep {
            layer,
            results: [k > 0, k > 1, k > 2],
        }),
        what,
        flops,
    ))
}
