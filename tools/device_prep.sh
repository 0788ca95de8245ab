#!/usr/bin/env bash
# Prepare, on this machine, what tools/device_check.sh needs on the GPU machine a session is sometimes lent
# (it has torch, sympy, scipy, matplotlib, scikit-learn and tqdm, but no Jupyter stack, no POT and no registry):
#   .device/<chapter>.py   each chapter as a plain script (tools/chapter_script.py)
#   .device/whl/*.whl      POT for CPython 3.12 on x86-64 (POT is not installed there; ~33 MB)
# .device/ is git-ignored; pass it in the device call's `carry`. Usage: bash tools/device_prep.sh [python]
# (DEVICE_PYTHON=3.11 fetches wheels for another Python, e.g. to rehearse device_check.sh on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
rm -rf .device && mkdir -p .device/whl
for md in book/*.md; do   # every chapter with code (tests/test_book_structure.py keeps them all in _toc.yml)
  grep -q '{code-cell}' "$md" || continue
  "$PY" tools/chapter_script.py "$md" -o ".device/$(basename "$md" .md).py"
done
POT_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('POT'))")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${DEVICE_PYTHON:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device/whl "pot==$POT_VERSION"
du -sh .device
