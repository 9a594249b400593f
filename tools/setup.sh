#!/usr/bin/env bash
# Create the project's virtual environment (.venv at the repository root, Python 3.11) and
# install the package into it, with the test extras. Safe to re-run: it does nothing when the
# environment already matches pyproject.toml. Source it or run it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-}
if [ -z "$python" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$cand; break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing into $venv (about a minute, 2.6 GB)"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
