#!/usr/bin/env python3
"""Sums Nsight Compute's per-kernel gpu__time_duration over one profiled region by kernel name.

    python3 bench/kernel_table.py profile-step.csv

Reads the CSV of `ncu --csv --page raw --metrics gpu__time_duration.sum` and prints one row per
kernel name (template arguments and parameter lists dropped): launches, total ms, share of the
summed kernel time. Standard library only.
"""
import csv
import re
import sys

UNIT_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0,
           "second": 1e3, "s": 1e3}


def short_name(name):
    name = name.replace("(anonymous namespace)::", "").replace("sy::cuda::", "")
    name = re.sub(r"\(.*$", "", name)  # parameter list
    depth, out = 0, []
    for ch in name:  # drop template arguments, nested or not
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    name = re.sub(r"^void ", "", name)
    return name[:72]


def main(path):
    # ncu prints its own lines (==PROF== ...) before the CSV; the header starts with "ID".
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    rows = list(csv.reader(lines))
    header = rows[0]
    name_col = header.index("Kernel Name")
    time_col = header.index("gpu__time_duration.sum")
    data = rows[1:]
    scale = 1e-6
    if data and data[0][name_col] == "":  # the units row
        scale = UNIT_MS.get(data[0][time_col], 1e-6)
        data = data[1:]
    totals, counts = {}, {}
    for row in data:
        name = short_name(row[name_col])
        ms = float(row[time_col].replace(",", "")) * scale
        totals[name] = totals.get(name, 0.0) + ms
        counts[name] = counts.get(name, 0) + 1
    total = sum(totals.values())
    print(f"{'kernel':72s} {'launches':>8s} {'ms':>9s} {'share':>7s}")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{name:72s} {counts[name]:8d} {ms:9.3f} {100 * ms / total:6.1f}%")
    print(f"{'total kernel time':72s} {sum(counts.values()):8d} {total:9.3f} {100.0:6.1f}%")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kernel_table.py NCU_RAW_CSV")
    main(sys.argv[1])
