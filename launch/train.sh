#!/usr/bin/env bash
# Launches `switchyard train` with mpirun: one process per GPU (or per CPU slot), NVLink
# multicast off, root allowed, processes bound to cores when there are enough.
#
#   launch/train.sh -n N CONFIG [--set key.path=value]...
#   launch/train.sh -n 16 --hostfile hosts CONFIG          # several nodes (N ranks in total)
#   launch/train.sh -n N bench moe|comm [...]              # a benchmark, launched the same way
#
# Ranks are placed node by node (--map-by slot), so consecutive ranks, and with them each
# tensor-parallel group, share a node.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=${SY_BINARY:-$root/build/switchyard}
ranks=1
mpi_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks=$2; shift 2 ;;
    --hostfile) mpi_args+=(--hostfile "$2"); shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: launch/train.sh -n N [--hostfile FILE] CONFIG [--set key.path=value]..." >&2; exit 2; }
[ -x "$binary" ] || { echo "launch/train.sh: $binary not found; run launch/setup.sh first" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] && mpi_args+=(--allow-run-as-root)
cores=$(nproc)
if [ "$ranks" -gt "$cores" ]; then mpi_args+=(--oversubscribe --bind-to none); else mpi_args+=(--bind-to none); fi
export NCCL_NVLS_ENABLE=0
mpi_args+=(-x NCCL_NVLS_ENABLE)
for var in NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA SY_NCCL_TIMEOUT_S; do
  [ -n "${!var:-}" ] && mpi_args+=(-x "$var")
done
command=(train)
[ "$1" = bench ] && command=()  # `bench moe ...` names its own command
exec mpirun -np "$ranks" --map-by slot "${mpi_args[@]}" "$binary" "${command[@]}" "$@"
