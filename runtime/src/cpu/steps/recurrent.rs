//! The step of a native `RNN`, `GRU` or `LSTM`: operands and results
//! picked by ONNX position, the kernel in [`crate::cpu::rnn`].

use crate::cpu::rnn::{Operands, PackedWeights, Recurrent, Results};
use crate::cpu::view::{In, Out};
use crate::cpu::NativeKernel;

use super::{f32s, opt_f32s};

/// A planned recurrent layer; `results` says which of Y, Y_h, Y_c the
/// node has (its result slots in order).
pub struct RecurrentStep {
    pub layer: Recurrent,
    pub results: [bool; 3],
    /// Constant W and R, packed once.
    pub packed: PackedWeights,
}

impl NativeKernel for RecurrentStep {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let ops = Operands {
            x: f32s(inputs, 0)?,
            w: if self.packed.has_w() {
                None
            } else {
                Some(f32s(inputs, 1)?)
            },
            r: if self.packed.has_r() {
                None
            } else {
                Some(f32s(inputs, 2)?)
            },
            packed: &self.packed,
            b: opt_f32s(inputs, 3)?,
            h0: opt_f32s(inputs, 5)?,
            c0: opt_f32s(inputs, 6)?,
        };
        let mut slots = outputs.iter_mut();
        let mut take = |has: bool| -> Result<Option<&mut [f32]>, String> {
            if !has {
                return Ok(None);
            }
            slots
                .next()
                .ok_or_else(|| "a result is missing".to_string())?
                .f32s()
                .map(Some)
        };
        let y = take(self.results[0])?;
        let y_h = take(self.results[1])?;
        let y_c = take(self.results[2])?;
        let mut res = Results { y, y_h, y_c };
        self.layer.run(&ops, &mut res, threads)
    }
}
