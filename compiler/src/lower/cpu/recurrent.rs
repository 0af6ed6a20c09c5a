//! Planning `RNN`, `GRU` and `LSTM` steps: the common form runs natively
//! ([`kiln_runtime::cpu::rnn`]); non-default activations, clip, peepholes,
//! coupled gates and per-sequence lengths stay on the interpreter, whose
//! driver covers them all. Constant W and R are packed here, once, and
//! leave the module (the step captures them).

use kiln_ir::{Attr, ElemType, Module, Node, ValueId};
use kiln_runtime::cpu::rnn::PackedWeights;
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
    let w = f32_constant(m, n.input(1));
    let r = f32_constant(m, n.input(2));
    let packed = PackedWeights::new(&layer, w.as_deref(), r.as_deref())?;
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
