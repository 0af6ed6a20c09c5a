#!/usr/bin/env bash
# The GPU backend on whatever device this machine has (a data-center card,
# or lavapipe): the adapters wgpu sees, a release build, conformance on the
# shared models and a node-suite subset, and benchmarks printed as one
# Markdown table with the adapter's name. Meant to finish in under 8
# minutes; on a software adapter (lavapipe) the matmul is 1024³, not 4096³.
set -uo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export CARGO_TERM_COLOR=never
if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null && ! compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null; then
  echo "no Vulkan driver found: wgpu needs a Vulkan ICD (NVIDIA: the driver's nvidia_icd.json; or apt-get install mesa-vulkan-drivers for lavapipe)"
fi
echo "## build"
cargo build --release -p kiln-compiler --bin kiln --example gpu_adapters 2>&1 | tail -1
K=./target/release/kiln
echo "## adapters"
./target/release/examples/gpu_adapters
adapter=$(./target/release/examples/gpu_adapters | sed -n 's/^kiln opens: //p')
if [ -z "$adapter" ]; then
  echo "no device Kiln can open; stopping"
  exit 1
fi
echo "## conformance"
SHARED=../shared
if [ -d "$SHARED/models" ]; then
  $K conformance --backend gpu --atol 1e-4 --rtol 1e-3 "$SHARED/models" 2>&1 | tail -1
fi
if [ -d "$SHARED/onnx-backend-node" ]; then
  subset=$(ls -d "$SHARED"/onnx-backend-node/test_{conv,matmul,gemm,softmax,relu,maxpool,averagepool,layer_normalization,gru,lstm,resize,gather,transpose}* 2>/dev/null)
  $K conformance --backend gpu $subset 2>&1 | tail -1
fi
echo "## benchmarks"
tmp=$(mktemp -d)
n=4096
case "$adapter" in *llvmpipe*|*lavapipe*|*SwiftShader*) n=1024 ;; esac
cat > "$tmp/mm.kir" <<KIR
module @mm opset(ai.onnx = 17) {
  input %a: f32[$n,$n]
  input %b: f32[$n,$n]
  %c = MatMul(%a, %b) : f32[$n,$n]
  return %c
}
KIR
median() { sed -n 's/.*"median_ms":\([0-9.e+-]*\).*/\1/p' | awk '{ printf "%.1f", $1 }'; }
bench() { $K bench "$@" --runs 5 --json 2>/dev/null | median; }
rows=""
ms=$(bench "$tmp/mm.kir" --backend gpu)
if [ -n "$ms" ]; then
  tf=$(awk -v n="$n" -v ms="$ms" 'BEGIN { printf "%.3f TFLOP/s (%.1f GFLOP/s)", 2 * n * n * n / (ms * 1e9), 2 * n * n * n / (ms * 1e6) }')
  rows+="| matmul f32 ${n}³ | $ms | $tf |\n"
else
  rows+="| matmul f32 ${n}³ | failed | |\n"
fi
rows+="| matmul f16 ${n}³ | n/a | no f16 path yet (--gpu-precision f16 is not built) |\n"
if [ -d "$SHARED/models/resnet50_light" ]; then
  g=$(bench "$SHARED/models/resnet50_light" --backend gpu)
  c=$(bench "$SHARED/models/resnet50_light" --backend cpu --threads 2)
  ratio=$(awk -v g="$g" -v c="$c" 'BEGIN { if (g > 0) printf "%.2f× the 2-thread cpu backend (%s ms)", c / g, c }')
  rows+="| ResNet-50 batch 1 | $g | $ratio |\n"
  rows+="| ResNet-50 batch 32 | n/a | the shared model's batch is fixed at 1 |\n"
fi
if [ -d "$SHARED/models/minilm_l3" ]; then
  # The model alone, so that bench makes random inputs of the given dims
  # (a folder's test data would fix them).
  cp "$SHARED/models/minilm_l3/model.onnx" "$tmp/minilm.onnx"
  for b in 1 32; do
    g=$(bench "$tmp/minilm.onnx" --backend gpu --dim batch_size=$b --dim sequence_length=128)
    rows+="| MiniLM-L3 batch $b, 128 tokens | $g | |\n"
  done
fi
echo
echo "GPU check on **$adapter**, $(date -u +%Y-%m-%d):"
echo
echo "| benchmark | median ms | |"
echo "|---|---:|---|"
printf "%b" "$rows"
rm -rf "$tmp"
