//! Kernels: control flow, sequences and optionals, strings, signal
//! processing, recurrent networks, random generators, and the `ai.onnx.ml`
//! and `ai.onnx.preview.training` ops. Each submodule has its own table;
//! this file asks them in turn. The helpers they share (scalar operands,
//! select, slice, concatenate and stack along an axis) are in `common.rs`.

mod common;
mod flow;
mod ml;
mod random;
mod rnn;
mod sequence;
mod signal;
mod strings;
mod training;

use super::ctx::{bail, Ctx, KResult, KernelFn};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Data, Tensor};

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
