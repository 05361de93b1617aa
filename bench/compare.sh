#!/usr/bin/env bash
# Compares switchyard with a plain-PyTorch baseline on the Switch benchmark model, on one GPU:
# trains configs/bench-switch.yaml with switchyard, then times the same model in PyTorch eager
# and torch.compile (bench/torch_reference.py), and prints tokens/s, model TFLOP/s, MFU and
# peak memory side by side. Builds switchyard first when its binary is missing.
#
#   bench/compare.sh
#   STEPS=60 OUT_DIR=/tmp/bench bench/compare.sh
#
# Environment: SY_BINARY (default build-device/switchyard, built if missing), STEPS (switchyard
# steps, default 40), OUT_DIR (folder for the logs; else $OUT; else bench-results), PYTHON (default
# python3), TORCH_ARGS (extra arguments for torch_reference.py, e.g. "--steps 50"), SY_SET (config
# overrides for the switchyard run, e.g. "model.attention_kernel=mma").
# Exits non-zero when any of the three runs failed; the others still run and are reported.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
binary=${SY_BINARY:-build-device/switchyard}
case "$binary" in /*) ;; *) binary=$root/$binary ;; esac
steps=${STEPS:-40}
python=${PYTHON:-python3}
config=configs/bench-switch.yaml
PEAK_FLOPS=989e12  # dense bf16 peak of an H100/H200 SXM, as torch_reference.py uses
OUT_DIR=${OUT_DIR:-${OUT:-bench-results}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# nvcc usually lives outside PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# --- parsing (each reads a log on stdin) --------------------------------------------------

# switchyard's last "done:" line -> "TOKENS_PER_S PEAK_GIB" (PEAK_GIB is n/a when the line
# has no peak memory); fails when there is no such line.
parse_done() {
  awk '/^done:/ { line = $0 }
    END {
      if (line == "" || !match(line, /[0-9.]+ tokens\/s/)) exit 1
      tps = substr(line, RSTART, RLENGTH - 9)
      peak = "n/a"
      if (match(line, /peak device memory [0-9.]+ GiB/)) peak = substr(line, RSTART + 19, RLENGTH - 23)
      print tps, peak
    }'
}

# The value of KEY= on the last "result ..." line of torch_reference.py; fails when missing.
result_field() {
  awk -v key="$1" '/^result / { line = $0 }
    END {
      found = 0
      n = split(line, fields, " ")
      for (i = 2; i <= n; i++) {
        eq = index(fields[i], "=")
        if (eq > 0 && substr(fields[i], 1, eq - 1) == key) { value = substr(fields[i], eq + 1); found = 1 }
      }
      if (!found) exit 1
      print value
    }'
}

# torch_reference.py's result line -> "TOKENS_PER_S TFLOPS MFU_PCT PEAK_GIB"; fails when the
# line or one of its fields is missing.
parse_result() {
  local log tps tflops mfu peak
  log=$(cat)
  tps=$(result_field tokens_per_s <<<"$log") && tflops=$(result_field tflops <<<"$log") &&
    mfu=$(result_field mfu <<<"$log") && peak=$(result_field peak_gib <<<"$log") || return 1
  echo "$tps $tflops $(awk -v m="$mfu" 'BEGIN { printf "%.1f", 100 * m }') $peak"
}

# `section: key: value` from the plain two-level YAML config, or DEFAULT.
config_value() {  # SECTION KEY DEFAULT
  awk -v section="$1" -v key="$2" -v fallback="$3" '
    { sub(/#.*/, "") }
    /^[^ \t][^:]*:[ \t]*$/ { current = $0; sub(/:.*/, "", current); next }
    current == section && $1 == key ":" { value = $2; found = 1 }
    END { print found ? value : fallback }' "$config"
}

# Model FLOPs per token, as switchyard and torch_reference.py count them: 6 x active matmul
# parameters (LM head, attention, router, top_k experts per layer) + 6 x layers x seq x d.
flops_per_token() {
  local vocab d layers heads kv ff expert_ff experts top_k seq
  vocab=$(config_value model vocab_size 256)
  d=$(config_value model d_model 128)
  layers=$(config_value model n_layers 4)
  heads=$(config_value model n_heads 4)
  kv=$(config_value model n_kv_heads 2)
  ff=$(config_value model d_ff 512)
  expert_ff=$(config_value moe d_ff 0)
  [ "$expert_ff" -gt 0 ] || expert_ff=$ff
  experts=$(config_value moe experts 8)
  top_k=$(config_value moe top_k 1)
  seq=$(config_value train seq_len 128)
  awk -v V="$vocab" -v d="$d" -v L="$layers" -v H="$heads" -v KV="$kv" -v F="$expert_ff" -v E="$experts" \
      -v k="$top_k" -v T="$seq" 'BEGIN {
    hd = d / H
    layer = d * hd * (H + 2 * KV) + H * hd * d + d * E + k * 2 * d * F
    printf "%.0f\n", 6 * (V * d + L * layer) + 6 * L * T * d
  }'
}

# --- runs -------------------------------------------------------------------------------

failed=0
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
echo "GPU: ${gpu:-unknown}"
fpt=$(flops_per_token)
echo "model FLOPs per token: $fpt"
echo "logs in $OUT_DIR"

# Rows: "name tokens_per_s tflops mfu_pct peak_gib", or "name FAILED".
rows=()
sy_tps=""
eager_tps=""
compile_tps=""

sy_ok=1
if [ ! -x "$binary" ]; then
  build_dir=$(dirname "$binary")
  echo "== building switchyard in $build_dir (log: $OUT_DIR/build.log)"
  if ! { cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON &&
         cmake --build "$build_dir" --parallel "$(nproc)" --target switchyard; } >"$OUT_DIR/build.log" 2>&1; then
    echo "switchyard build failed; last lines of $OUT_DIR/build.log:" >&2
    tail -20 "$OUT_DIR/build.log" >&2
    sy_ok=0
  fi
fi
if [ "$sy_ok" = 1 ]; then
  echo "== switchyard: $steps steps of $config ${SY_SET:+(--set $SY_SET)}"
  extra_sets=()
  for kv in ${SY_SET:-}; do extra_sets+=(--set "$kv"); done
  if SY_BINARY=$binary launch/train.sh -n 1 "$config" --set "train.steps=$steps" --set log.every=10 \
      --set log.progress=false --set "run.out_dir=$OUT_DIR/switchyard" "${extra_sets[@]}" 2>&1 |
      tee "$OUT_DIR/switchyard.log" &&
      parsed=$(parse_done <"$OUT_DIR/switchyard.log"); then
    read -r sy_tps sy_peak <<<"$parsed"
    sy_tflops=$(awk -v f="$fpt" -v t="$sy_tps" 'BEGIN { printf "%.1f", f * t / 1e12 }')
    sy_mfu=$(awk -v f="$fpt" -v t="$sy_tps" -v p="$PEAK_FLOPS" 'BEGIN { printf "%.1f", 100 * f * t / p }')
    rows+=("switchyard $sy_tps $sy_tflops $sy_mfu $sy_peak")
  else
    sy_ok=0
  fi
fi
if [ "$sy_ok" != 1 ]; then
  rows+=("switchyard FAILED")
  sy_tps=""
  failed=1
fi

for mode in eager compile; do
  log=$OUT_DIR/torch-$mode.log
  echo "== torch $mode"
  # shellcheck disable=SC2086  # TORCH_ARGS is a list of words
  if "$python" bench/torch_reference.py --mode "$mode" --json "$OUT_DIR/torch.jsonl" ${TORCH_ARGS:-} 2>&1 |
      tee "$log" && parsed=$(parse_result <"$log"); then
    read -r tps tflops mfu peak <<<"$parsed"
    rows+=("torch-$mode $tps $tflops $mfu $peak")
    if [ "$mode" = eager ]; then eager_tps=$tps; else compile_tps=$tps; fi
  else
    rows+=("torch-$mode FAILED")
    failed=1
  fi
done

# --- report -------------------------------------------------------------------------------

ratio() {  # A B -> A/B with two decimals, or n/a
  if [ -n "$1" ] && [ -n "$2" ]; then
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx\n", a / b; else print "n/a" }'
  else
    echo "n/a"
  fi
}

echo
echo "Switch benchmark ($config), GPU: ${gpu:-unknown}, model FLOPs/token $fpt, MFU vs 989 TFLOP/s"
printf '%-14s %12s %14s %8s %10s\n' run tokens/s "model TFLOP/s" "MFU %" "peak GiB"
for row in "${rows[@]}"; do
  read -r name a b c e <<<"$row"
  name=${name/torch-/torch }
  if [ "$a" = FAILED ]; then
    printf '%-14s %12s\n' "$name" FAILED
  else
    printf '%-14s %12s %14s %8s %10s\n' "$name" "$a" "$b" "$c" "$e"
  fi
done
echo "switchyard / torch eager:   $(ratio "$sy_tps" "$eager_tps")"
echo "switchyard / torch compile: $(ratio "$sy_tps" "$compile_tps")"
exit "$failed"
