#!/usr/bin/env bash
# Weak and strong scaling sweeps over rank counts; see launch/scaling.py for the options.
#   launch/scaling.sh configs/switch-8gpu-ep8.yaml --ranks 1,2,4,8 --mode both --out runs/scaling
# Plots need matplotlib: the first python3 that has it is used (Debian: python3-matplotlib).
python=python3
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import matplotlib" 2>/dev/null; then
    python=$candidate
    break
  fi
done
exec "$python" "$(dirname "${BASH_SOURCE[0]}")/scaling.py" "$@"
