#!/usr/bin/env python3
"""Scaling sweeps: runs a config at several GPU (or CPU rank) counts, weak and/or strong
scaling, collects one row per run from its metrics.jsonl into scaling.csv and scaling.jsonl,
and draws PNG plots when matplotlib is installed.

Weak scaling keeps the tokens per rank and the experts per rank fixed (experts = ranks x
experts-per-rank, ep = ranks). Strong scaling keeps the global batch fixed (micro_batch =
global batch / ranks) and the experts fixed (ep = the largest divisor of both).

With --bench, each run is followed by `switchyard bench moe` (one MoE layer of the run's shape:
time by phase, the exchanges' bus bandwidth) and `switchyard bench comm` (NCCL's plain
all-to-all at the exchanges' message size), and the rows gain their figures: how close dispatch
and combine come to the raw all-to-all rate.

Usage (launch/scaling.sh passes everything through):
  launch/scaling.sh CONFIG [--ranks 1,2,4,8] [--mode weak|strong|both] [--experts-per-rank 8]
                    [--steps 30] [--out runs/scaling] [--bench] [--set key.path=value]...
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys

# Phases of the step's compute stream; all_to_all and grad_sync hold only the time it waited for
# communication (the exposed part).
PHASES = ["compute", "router", "permute", "all_to_all", "experts", "combine", "grad_sync", "optimizer"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_config_value(path, section, key, default):
    """A top-level `section: key: value` from the YAML config (plain two-level layout)."""
    current = None
    with open(path) as f:
        for line in f:
            stripped = line.split("#", 1)[0].rstrip()
            if not stripped:
                continue
            if not line.startswith(" ") and stripped.endswith(":"):
                current = stripped[:-1]
            elif current == section and stripped.strip().startswith(key + ":"):
                return stripped.split(":", 1)[1].strip()
    return default


def override(overrides, key, default):
    for item in overrides:
        if item.startswith(key + "="):
            return item.split("=", 1)[1]
    return default


def run(config, ranks, sets, out_dir, steps):
    args = [os.path.join(ROOT, "launch", "train.sh"), "-n", str(ranks), config]
    for s in sets + [
        "data.source=synthetic", "eval.every=0", "log.progress=false", "checkpoint.enabled=false",
        "train.steps=%d" % steps, "log.every=%d" % max(1, steps // 2), "run.out_dir=" + out_dir,
    ]:
        args += ["--set", s]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "train.log"), "w") as log:
        code = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit("scaling: run with %d ranks failed (exit %d); see %s/train.log" % (ranks, code, out_dir))
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()][-1]  # the last window: warm


def mpirun(ranks, args, log_path):
    """Runs `switchyard ARGS` on `ranks` processes through launch/train.sh; returns its JSON lines."""
    command = [os.path.join(ROOT, "launch", "train.sh"), "-n", str(ranks)] + args
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit("scaling: %s failed (exit %d); see %s" % (" ".join(args[:2]), code, log_path))
    with open(log_path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def bench_layer(config, sets, ranks, experts, ep, micro_batch, out_dir):
    """bench moe at the run's MoE shape, then bench comm at its exchange size: the row's bench columns."""
    def value(section, key, default):
        return override(sets, section + "." + key, read_config_value(config, section, key, default))
    seq = int(value("train", "seq_len", "128"))
    d_ff = int(value("moe", "d_ff", "0")) or int(value("model", "d_ff", "512"))
    chunks = int(value("moe", "dispatch_chunks", "1"))
    args = ["bench", "moe", "--tokens", str(micro_batch * seq), "--d-model", value("model", "d_model", "256"),
            "--d-ff", str(d_ff), "--experts", str(experts), "--ep", str(ep), "--top-k", value("moe", "top_k", "1"),
            "--activation", value("model", "activation", "gelu"), "--chunks", str(chunks), "--json"]
    if value("moe", "dropless", "false") == "true":
        args.append("--dropless")
    else:
        args += ["--capacity-factor", value("moe", "capacity_factor", "1.25")]
    moe = mpirun(ranks, args, os.path.join(out_dir, "bench-moe.log"))[-1]
    row = {"moe_layer_ms": moe["whole_ms"]["total"], "moe_all_to_all_ms": moe["whole_ms"]["all_to_all"],
           "moe_experts_ms": moe["whole_ms"]["experts"],
           "moe_pipelined_ms": moe["pipelined_ms"]["total"] if moe["pipelined_ms"] else "",
           "exchange_busbw_gbs": moe["exchange_busbw_gbs"] if ep > 1 else ""}
    if ep > 1:
        size = str(int(moe["exchange_bytes"]))
        args = ["bench", "comm", "--op", "all_to_all", "--min-bytes", size, "--max-bytes", size, "--json"]
        comm = mpirun(ranks, args, os.path.join(out_dir, "bench-comm.log"))[-1]
        row["raw_all_to_all_busbw_gbs"] = comm["all_to_all_busbw_gbs"]
        if comm["all_to_all_busbw_gbs"] > 0:
            row["exchange_vs_raw"] = round(moe["exchange_busbw_gbs"] / comm["all_to_all_busbw_gbs"], 4)
    return row


BENCH_FIELDS = ["moe_layer_ms", "moe_all_to_all_ms", "moe_experts_ms", "moe_pipelined_ms", "exchange_busbw_gbs",
                "raw_all_to_all_busbw_gbs", "exchange_vs_raw"]


def row_of(mode, ranks, experts, micro_batch, seq, grad_accum, metrics):
    tokens_per_step = micro_batch * seq * grad_accum * ranks
    step_ms = 1000.0 * tokens_per_step / metrics["tokens_per_s"]
    split = metrics.get("step_ms", {})
    row = {
        "mode": mode, "ranks": ranks, "experts": experts, "micro_batch": micro_batch,
        "tokens_per_s": round(metrics["tokens_per_s"], 1),
        "tokens_per_s_per_rank": round(metrics["tokens_per_s"] / ranks, 1),
        "step_ms": round(step_ms, 3),
        "expert_load_max_mean": metrics.get("expert_load_max_mean"),
        "dropped_pct": metrics.get("dropped_pct"), "loss": metrics.get("loss"),
    }
    for p in PHASES:
        row[p + "_ms"] = split.get(p, 0.0)
    row["idle_ms"] = round(max(0.0, step_ms - sum(split.get(p, 0.0) for p in PHASES)), 3)
    row["exposed_comm_ms"] = round(split.get("all_to_all", 0.0) + split.get("grad_sync", 0.0), 3)
    row["exposed_comm_pct"] = round(100.0 * row["exposed_comm_ms"] / step_ms, 2)
    return row


def plot(rows, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scaling: matplotlib not installed (apt-get install python3-matplotlib): CSV only")
        return []
    written = []
    modes = sorted({r["mode"] for r in rows})
    for name, key, label in [("tokens_per_rank", "tokens_per_s_per_rank", "tokens/s per rank"),
                             ("efficiency", "efficiency", "scaling efficiency"),
                             ("expert_load", "expert_load_max_mean", "expert load max / mean")]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode in modes:
            sel = [r for r in rows if r["mode"] == mode]
            ax.plot([r["ranks"] for r in sel], [r[key] for r in sel], marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks (GPUs)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = os.path.join(out, name + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    for mode in modes:
        sel = [r for r in rows if r["mode"] == mode]
        fig, ax = plt.subplots(figsize=(6, 4))
        bottom = [0.0] * len(sel)
        groups = [("compute", ["compute", "router", "permute", "experts", "combine", "optimizer"]),
                  ("all-to-all (exposed)", ["all_to_all"]), ("gradient all-reduce (exposed)", ["grad_sync"]),
                  ("idle", ["idle"])]
        for label, parts in groups:
            values = [sum(r[p + "_ms"] for p in parts) for r in sel]
            ax.bar([str(r["ranks"]) for r in sel], values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xlabel("ranks (GPUs)")
        ax.set_ylabel("ms per step")
        ax.set_title(mode + " scaling: step time split")
        ax.legend(fontsize=8)
        path = os.path.join(out, "step_split_%s.png" % mode)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--ranks", default="1,2,4,8")
    parser.add_argument("--mode", choices=["weak", "strong", "both"], default="both")
    parser.add_argument("--experts-per-rank", type=int, default=0, help="weak scaling; 0: config experts at 1 rank")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/scaling")
    parser.add_argument("--bench", action="store_true", help="also bench moe and bench comm at each run's shape")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    a = parser.parse_args()
    ranks_list = [int(r) for r in a.ranks.split(",")]
    micro = int(override(a.sets, "train.micro_batch", read_config_value(a.config, "train", "micro_batch", "8")))
    seq = int(override(a.sets, "train.seq_len", read_config_value(a.config, "train", "seq_len", "128")))
    accum = int(override(a.sets, "train.grad_accum", read_config_value(a.config, "train", "grad_accum", "1")))
    experts = int(override(a.sets, "moe.experts", read_config_value(a.config, "moe", "experts", "8")))
    per_rank = a.experts_per_rank or experts
    sets = [s for s in a.sets if not s.startswith(("train.micro_batch=", "moe.experts=", "parallel.expert="))]
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for mode in (["weak", "strong"] if a.mode == "both" else [a.mode]):
        for ranks in ranks_list:
            if mode == "weak":
                e, mb, ep = per_rank * ranks, micro, ranks
            else:
                if micro % ranks:
                    print("scaling: strong scaling skips %d ranks (micro_batch %d does not divide)" % (ranks, micro))
                    continue
                e, mb, ep = experts, micro // ranks, math.gcd(experts, ranks)
            extra = sets + ["train.micro_batch=%d" % mb, "moe.experts=%d" % e, "parallel.expert=%d" % ep]
            print("scaling: %s, %d rank(s), %d experts (ep %d), micro_batch %d" % (mode, ranks, e, ep, mb), flush=True)
            run_dir = os.path.join(a.out, "%s-%d" % (mode, ranks))
            metrics = run(a.config, ranks, extra, run_dir, a.steps)
            rows.append(row_of(mode, ranks, e, mb, seq, accum, metrics))
            if a.bench:
                rows[-1].update(bench_layer(a.config, sets, ranks, e, ep, mb, run_dir))
    for mode in {r["mode"] for r in rows}:
        sel = [r for r in rows if r["mode"] == mode]
        base = next((r for r in sel if r["ranks"] == min(x["ranks"] for x in sel)), None)
        for r in sel:
            if mode == "weak":
                r["efficiency"] = round(r["tokens_per_s_per_rank"] / base["tokens_per_s_per_rank"], 4)
            else:
                r["efficiency"] = round(r["tokens_per_s"] / (base["tokens_per_s"] * r["ranks"] / base["ranks"]), 4)
    fields = ["mode", "ranks", "experts", "micro_batch", "tokens_per_s", "tokens_per_s_per_rank", "efficiency",
              "step_ms"] + [p + "_ms" for p in PHASES] + ["idle_ms", "exposed_comm_ms", "exposed_comm_pct",
                                                         "expert_load_max_mean", "dropped_pct", "loss"]
    if a.bench:
        fields += BENCH_FIELDS
    with open(os.path.join(a.out, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(a.out, "scaling.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print("%-6s %5s %7s %12s %14s %8s %9s %9s %9s %9s %9s" % (
        "mode", "ranks", "experts", "tokens/s", "tok/s per rank", "eff.", "step ms", "a2a ms", "grad ms", "exposed",
        "idle ms"))
    for r in rows:
        print("%-6s %5d %7d %12.0f %14.0f %7.1f%% %9.2f %9.2f %9.2f %8.1f%% %9.2f" % (
            r["mode"], r["ranks"], r["experts"], r["tokens_per_s"], r["tokens_per_s_per_rank"], 100 * r["efficiency"],
            r["step_ms"], r["all_to_all_ms"], r["grad_sync_ms"], r["exposed_comm_pct"], r["idle_ms"]))
    if a.bench:
        print("\n%-6s %5s %10s %10s %10s %10s %12s %12s %8s" % (
            "mode", "ranks", "layer ms", "a2a ms", "experts ms", "piped ms", "exch GB/s", "raw a2a GB/s", "ratio"))
        for r in rows:
            print("%-6s %5d %10s %10s %10s %10s %12s %12s %8s" % (
                r["mode"], r["ranks"], r["moe_layer_ms"], r["moe_all_to_all_ms"], r["moe_experts_ms"],
                r["moe_pipelined_ms"] or "-", r["exchange_busbw_gbs"] or "-", r.get("raw_all_to_all_busbw_gbs", "-"),
                r.get("exchange_vs_raw", "-")))
    for path in plot(rows, a.out):
        print("wrote " + path)
    print("wrote %s/scaling.csv and scaling.jsonl" % a.out)


if __name__ == "__main__":
    main()
