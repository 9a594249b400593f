#!/usr/bin/env bash
# Build KenLM's lmplz (and build_binary) from the kenlm source package on PyPI and install them
# into the project's virtual environment (.venv/bin), where asr.lm finds it (asr.lm.find_lmplz: on
# PATH, else beside the environment's python); without it `asr lm` uses its built-in ARPA writer.
#
# Needs, on Debian/Ubuntu:
#   apt-get install build-essential cmake libboost-program-options-dev libboost-system-dev \
#     libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev
# The script checks for them first and names what is missing. Environment:
#   KENLM_SRC  a kenlm source tree or .tar.gz to build instead of downloading one with pip
#   JOBS       parallel compile jobs (default: the number of CPUs)
# Takes a few minutes; safe to re-run (it rebuilds and reinstalls).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
kenlm_version=0.3.0
say() { echo "build_lmplz: $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  say "no virtual environment at $venv (run tools/setup.sh first)"; exit 1
fi
missing=()
for tool in cmake make g++; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if command -v dpkg-query >/dev/null; then
  for pkg in build-essential cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev \
             libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
elif [ ! -f /usr/include/boost/program_options.hpp ]; then
  missing+=("Boost headers and libraries: program_options system thread unit_test_framework")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "missing: ${missing[*]}"
  say "on Debian/Ubuntu: sudo apt-get install ${missing[*]}"
  exit 1
fi

work=$(mktemp -d -t build-lmplz.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=${KENLM_SRC:-}
if [ -z "$src" ]; then
  say "downloading the kenlm $kenlm_version source package from PyPI"
  # the sdist only (pip prepares its metadata in an isolated environment of build-tool wheels)
  "$venv/bin/python" -m pip download -q "kenlm==$kenlm_version" --no-deps --no-binary kenlm -d "$work"
  src="$work/kenlm-$kenlm_version.tar.gz"
fi
if [ -f "$src" ]; then
  tar -xzf "$src" -C "$work"
  src=$(find "$work" -mindepth 2 -maxdepth 2 -name CMakeLists.txt -printf '%h\n' | head -n 1)
fi
if [ ! -f "$src/CMakeLists.txt" ] || [ ! -d "$src/lm/builder" ]; then
  say "$src is not a kenlm source tree"; exit 1
fi

say "building lmplz and build_binary (a few minutes)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 \
  || { tail -n 20 "$work/cmake.log" >&2; say "cmake failed"; exit 1; }
cmake --build "$work/build" --target lmplz build_binary -j "${JOBS:-$(nproc)}" >"$work/make.log" 2>&1 \
  || { tail -n 20 "$work/make.log" >&2; say "compilation failed"; exit 1; }
install -m 755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$venv/bin/"
usage=$("$venv/bin/lmplz" --help 2>&1 || true)  # its usage; the exit status is not 0
grep -q "modified Kneser-Ney" <<<"$usage" || { say "the installed lmplz does not run: $usage"; exit 1; }
say "installed $venv/bin/lmplz and $venv/bin/build_binary"
