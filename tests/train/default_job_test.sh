#!/usr/bin/env bash
# The default job learns: 40 steps of configs/tiny-cpu.yaml on the fortunes text (prepared on
# first use) must lower the loss by more than 1 nat, and metrics.jsonl must record every
# logging step with the documented fields.
set -euo pipefail
binary=$1
source_dir=$2
# The corpus comes from the fortunes package (launch/setup.sh installs it); 77 = skipped.
[ -d /usr/share/games/fortunes ] || { echo "fortunes corpus not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$binary" train "$source_dir/configs/tiny-cpu.yaml" --set train.steps=40 --set log.every=10 \
  --set eval.every=20 --set run.out_dir="$work/run" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
metrics="$work/run/metrics.jsonl"
lines=$(wc -l <"$metrics")
[ "$lines" -eq 5 ] || { echo "expected 5 metric lines (steps 1, 10, 20, 30, 40), got $lines"; cat "$metrics"; exit 1; }
for field in step loss aux z lr grad_norm tokens_per_s mfu dropped_pct expert_load_max_mean val_loss elapsed_s \
    exposed_comm_ms step_ms compute all_to_all grad_sync optimizer; do
  grep -q "\"$field\": " "$metrics" || { echo "metrics.jsonl lacks \"$field\""; exit 1; }
done
first=$(head -1 "$metrics" | sed -E 's/.*"loss": ([0-9.]+).*/\1/')
last=$(tail -1 "$metrics" | sed -E 's/.*"loss": ([0-9.]+).*/\1/')
echo "loss $first -> $last"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }' || { echo "the loss did not fall by more than 1"; exit 1; }
