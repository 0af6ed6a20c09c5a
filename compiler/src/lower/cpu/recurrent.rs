//! Planning `RNN`, `GRU` and `LSTM` steps: the common form runs natively
//! ([`kiln_runtime::cpu::rnn`]); non-default activations, clip, peepholes,
//! coupled gates and per-sequence lengths stay on the interpreter, whose
//! driver covers them all.

use kiln_ir::{Attr, Module, Node};
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
    // A constant R, transposed once for the small-batch recurrence.
    let r_t = n
        .input(2)
        .and_then(|r| m.constant(r))
        .filter(|d| d.elem == kiln_ir::ElemType::F32)
        .and_then(|d| d.to_f64_vec())
        .map(|r| {
            let r: Vec<f32> = r.into_iter().map(|x| x as f32).collect();
            kiln_runtime::cpu::rnn::transpose_recurrence(&r, dirs, layer.hidden)
        });
    let what = format!("{} {direction} hidden {}", n.op, layer.hidden);
    let flops = 2.0 * (seq * batch * dirs * wg * (input + layer.hidden)) as f64;
    Ok(NativeStep::new(
        Box::new(RecurrentStep {
            r_t,
            layer,
            results: [k > 0, k > 1, k > 2],
        }),
        what,
        flops,
    ))
}
