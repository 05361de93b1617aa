#!/usr/bin/env bash
# Sets up and builds switchyard (launch/setup.sh), then runs the whole test suite: unit, mpi
# (under mpirun) and gpu tests (these skip themselves without a GPU).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${SY_BUILD_DIR:-$root/build}
"$root/launch/setup.sh"
ctest --test-dir "$build_dir" --output-on-failure --timeout 600 "$@"
