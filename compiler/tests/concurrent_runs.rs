//! One compiled executable run from 8 threads at once, 2,000 runs in all
//! (the library API's promise), with kernels split across 2 threads:
//! every run gives the single-threaded result, bit for bit. Runs overlap,
//! so the pool's workers are shared between runs whose idle workers poll
//! for work, and the arena pool hands arenas between threads.

use std::collections::HashMap;

use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::{compile, Target};

/// Big enough that its convs and pool split across threads.
const NET: &str = "module @net opset(ai.onnx = 18) {
  input %x: f32[1,16,32,32]
  input %w1: f32[32,16,3,3]
  input %b1: f32[32]
  input %w2: f32[64,32,1,1]
  %c1 = Conv(%x, %w1, %b1) {kernel_shape = [3, 3], pads = [1, 1, 1, 1]} : f32[1,32,32,32]
  %r1 = Relu(%c1) : f32[1,32,32,32]
  %p = MaxPool(%r1) {kernel_shape = [3, 3], strides = [2, 2]} : f32[1,32,15,15]
  %c2 = Conv(%p, %w2) {kernel_shape = [1, 1]} : f32[1,64,15,15]
  %s = Add(%c2, %c2) : f32[1,64,15,15]
  return %s
}";

#[test]
fn concurrent_runs_match_a_single_threaded_run() {
    let m = kiln_compiler::load::parse_text(NET, "net.kir").expect("parses");
    let inputs =
        kiln_compiler::check::random_inputs(&m, &HashMap::new(), 7).expect("random inputs");
    let shapes = kiln_compiler::lower::shapes_of(&inputs);
    let exe = |threads| {
        let opts = CpuOptions {
            threads,
            ..CpuOptions::default()
        };
        compile(&m, &Target::Cpu(opts), &shapes).expect("compiles")
    };
    let want = exe(1).run(&inputs).expect("runs");
    let shared = exe(2);
    let check = |inputs: &HashMap<_, _>| {
        for _ in 0..250 {
            let got = shared.run(inputs).expect("runs");
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                let (g, w) = (g.as_tensor().unwrap(), w.as_tensor().unwrap());
                assert_eq!(g.shape, w.shape);
                let bits = |d: &kiln_runtime::Data| match d {
                    kiln_runtime::Data::F32(v) => v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    other => panic!("f32 expected, got {:?}", other.elem()),
                };
                assert_eq!(bits(&g.data), bits(&w.data));
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| check(&inputs));
        }
    });
}
