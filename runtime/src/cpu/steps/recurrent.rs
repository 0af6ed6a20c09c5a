//! The step of a native `RNN`, `GRU` or `LSTM`: operands and results
//! picked by ONNX position, the kernel in [`crate::cpu::rnn`].

use crate::cpu::rnn::{Operands, Recurrent, Results};
use crate::cpu::view::{In, Out};
use crate::cpu::NativeKernel;

use super::{f32s, opt_f32s};

/// A planned recurrent layer; `results` says which of Y, Y_h, Y_c the
/// node has (its result slots in order).
pub struct RecurrentStep {
    pub layer: Recurrent,
    pub results: [bool; 3],
    /// A constant R transposed once ([`crate::cpu::rnn::transpose_recurrence`]).
    pub r_t: Option<Vec<f32>>,
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
            w: f32s(inputs, 1)?,
            r: f32s(inputs, 2)?,
            r_t: self.r_t.as_deref(),
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
