#!/usr/bin/env bash
# The scaling sweep end to end on CPU ranks: launch/scaling.sh runs configs/tiny-cpu.yaml weakly
# scaled to 1 and 2 ranks (the experts spread over both, exchanges in 2 chunks) with --bench, and
# must write one CSV and JSONL row per run with the documented columns, efficiency 1 at one rank,
# exposed communication that adds up from its parts, and the MoE layer benchmark's figures (the
# exchange against the raw all-to-all at 2 ranks).
set -euo pipefail
binary=$1
source_dir=$2
command -v mpirun >/dev/null 2>&1 || { echo "mpirun not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
SY_BINARY="$binary" "$source_dir/launch/scaling.sh" "$source_dir/configs/tiny-cpu.yaml" --ranks 1,2 --mode weak \
  --experts-per-rank 2 --steps 4 --out "$work/sweep" --set model.n_layers=2 --set moe.dispatch_chunks=2 --bench \
  >"$work/log" 2>&1 || { cat "$work/log"; for f in "$work"/sweep/*/train.log; do cat "$f"; done; exit 1; }
cat "$work/log"
# The plots, when some python3 has matplotlib (launch/setup.sh installs it).
if python3 -c "import matplotlib" 2>/dev/null || /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  for plot in tokens_per_rank efficiency expert_load step_split_weak; do
    [ -s "$work/sweep/$plot.png" ] || { echo "no $plot.png"; exit 1; }
  done
fi
csv="$work/sweep/scaling.csv"
[ "$(wc -l <"$csv")" -eq 3 ] || { echo "expected a header and 2 rows"; cat "$csv"; exit 1; }
python3 - "$csv" "$work/sweep/scaling.jsonl" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert len(lines) == 2, lines
for column in ["tokens_per_s_per_rank", "efficiency", "step_ms", "all_to_all_ms", "grad_sync_ms", "idle_ms",
               "exposed_comm_ms", "exposed_comm_pct", "expert_load_max_mean"]:
    assert column in rows[0], "scaling.csv lacks " + column
assert [int(r["ranks"]) for r in rows] == [1, 2], rows
assert [int(r["experts"]) for r in rows] == [2, 4], rows
assert float(rows[0]["efficiency"]) == 1.0, rows[0]
for r in rows:
    exposed = float(r["all_to_all_ms"]) + float(r["grad_sync_ms"])
    assert abs(float(r["exposed_comm_ms"]) - exposed) < 2e-3, r
    assert 0 <= float(r["exposed_comm_pct"]) <= 100, r
    assert float(r["moe_layer_ms"]) > 0 and float(r["moe_experts_ms"]) > 0, r
one, two = rows
assert one["exchange_busbw_gbs"] == "" and one["moe_pipelined_ms"] == "", one  # nothing moves at one rank
assert float(two["moe_pipelined_ms"]) > 0, two  # 2 chunks beside whole exchanges
ratio = float(two["exchange_busbw_gbs"]) / float(two["raw_all_to_all_busbw_gbs"])
assert abs(float(two["exchange_vs_raw"]) - ratio) < 1e-3, two
print("scaling sweep: 2 rows, columns and sums check out")
PY
