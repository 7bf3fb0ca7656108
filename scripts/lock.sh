#!/usr/bin/env bash
# Refresh constraints.txt, the lock of every dependency of every extra (Python 3.10 and newer,
# all platforms), resolved together with torch==2.13.0. torch itself and its CUDA libraries
# (triton, nvidia-*, cuda-*) are left out, so that the lock fixes neither a CPU nor a CUDA build:
# `pip install -c constraints.txt torch==2.13.0` takes the build of the index it is given
# (README.md, "Set up and run"). Needs uv (`pip install uv`); run from anywhere: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "torch==2.13.0" > "${TMPDIR:-/tmp}/vae-lightning-torch.txt"
uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 --no-python-downloads \
  --constraint "${TMPDIR:-/tmp}/vae-lightning-torch.txt" --no-header --quiet \
  | python3 -c '
import re, sys
skip = re.compile(r"(torch|triton|nvidia-[\w-]+|cuda-[\w-]+)(==| ;)")
blocks, out = sys.stdin.read().split("\n"), []
dropping = False
for line in blocks:
    if line and not line.startswith(" "):
        dropping = bool(skip.match(line))
    if not dropping:
        out.append(line)
print("# The lock of vae-lightning'"'"'s dependencies: refresh with `bash scripts/lock.sh`; use with")
print("# `pip install -c constraints.txt ...` (README.md). torch and its CUDA libraries are not in it.")
print("\n".join(out).rstrip("\n"))
' > constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned requirements"
