#!/usr/bin/env bash
# Sets up a Debian/Ubuntu machine to build switchyard, then configures and builds it.
# Idempotent: installs only what is missing (as root, or through sudo), then runs an
# incremental build. The CUDA backend is built whenever nvcc is found.
#
#   launch/setup.sh                      # Release build in ./build
#   SY_BUILD_DIR=build-dbg SY_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Debug" launch/setup.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${SY_BUILD_DIR:-$root/build}
cmake_args=${SY_CMAKE_ARGS:-}

# nvcc usually lives outside PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# requirement -> Debian package; each check looks for the thing itself, so tools installed
# some other way (a CUDA image, a module system) count as present.
have_cmake_package() {  # name: a CMake package config or Find module somewhere usual
  local name=$1
  compgen -G "/usr/lib/*/cmake/$name/*.cmake" >/dev/null || compgen -G "/usr/lib/cmake/$name/*.cmake" >/dev/null ||
    compgen -G "/usr/local/lib/cmake/$name/*.cmake" >/dev/null || compgen -G "/usr/local/lib/*/cmake/$name/*.cmake" >/dev/null ||
    compgen -G "/usr/share/cmake*/Modules/Find$name.cmake" >/dev/null ||
    compgen -G "/usr/local/share/cmake*/Modules/Find$name.cmake" >/dev/null
}
missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
command -v mpicxx >/dev/null 2>&1 || missing+=(libopenmpi-dev)
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
have_cmake_package yaml-cpp || missing+=(libyaml-cpp-dev)
have_cmake_package GTest || missing+=(libgtest-dev)
# The default training job's English text.
[ -d /usr/share/games/fortunes ] || missing+=(fortunes)
# The scaling sweep's plots (launch/scaling.sh).
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || missing+=(python3-matplotlib)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: build dependencies present"
fi

werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
# shellcheck disable=SC2086
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSY_WERROR=$werror $cmake_args >/dev/null
cmake --build "$build_dir" --parallel "$(nproc)"
echo "setup: built $build_dir/switchyard"
