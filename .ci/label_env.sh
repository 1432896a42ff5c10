#!/usr/bin/env bash
# Creates (or reuses) the MONAI Label venv and prints its python path on stdout (the last line;
# progress goes to stderr). monailabel 0.8.5 needs numpy < 2 and its own torch/torchvision pair, so
# it lives in a venv of its own and the main test venv is never downgraded.
#
# The venv holds dependencies only and is cached outside the clone, keyed on a hash of the pinned
# list below, pyproject.toml and the python version (like .ci/run's main venv); the project itself
# is always installed from this clone in editable mode, without dependencies.
#   LABEL_VENV=DIR          use exactly this folder instead of the cache (e.g. ~/label-venv)
#   CUSTOM_MONAI_CI_CACHE   cache root (default ~/.cache/custom_monai-ci)
# Usage from .ci/run:  export CUSTOM_MONAI_LABEL_PYTHON="$(bash .ci/label_env.sh | tail -n 1)"
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

# The pins of the `label` extra, also used as constraints for the package's own dependencies. torch 2.14.1 is the
# manylinux wheel of the local mirror, a CUDA build (it pulls the nvidia-* wheels: the venv is ~8 GB, ~6-10 min to
# build cold). numpy < 2 for monailabel. monailabel 0.8.5
# imports pydicom-seg 0.4.1, which needs pydicom < 3 (pydicom._storage_sopclass_uids); the newest dicomweb-client
# and pynetdicom need pydicom 3, so they are held back too.
pins=(
  "torch==2.14.1"
  "torchvision==0.29.1"
  "monai==1.6.1"
  "monailabel==0.8.5"
  "numpy<2"
  "pydicom<3"
  "dicomweb-client<0.60"
  "pynetdicom<3"
)

deps_hash=$( (printf '%s\n' "${pins[@]}"; cat pyproject.toml; python3 --version) | sha256sum | cut -c1-16)
if [ -n "${LABEL_VENV:-}" ]; then
  venv="$LABEL_VENV"
else
  venv="${CUSTOM_MONAI_CI_CACHE:-$HOME/.cache/custom_monai-ci}/label-venv-$deps_hash"
fi

if [ ! -f "$venv/.complete" ] || [ "$(cat "$venv/.complete")" != "$deps_hash" ]; then
  echo "creating label venv $venv" >&2
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
    echo "$venv exists and is not a venv: not deleting it" >&2
    exit 1
  fi
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  {
    "$venv/bin/python" -m pip install --upgrade pip
    constraints="$venv/label-constraints.txt"
    printf '%s\n' "${pins[@]}" > "$constraints"
    "$venv/bin/python" -m pip install "${pins[@]}"
    # the package's dependencies and its `label` extra, held to the pins above
    "$venv/bin/python" -m pip install -c "$constraints" "$root[label]"
    "$venv/bin/python" -m pip uninstall -y custom_monai
  } >&2
  echo "$deps_hash" > "$venv/.complete"
fi
"$venv/bin/python" -m pip install --no-deps -e "$root" >/dev/null 2>&1 || \
  "$venv/bin/python" -m pip install --no-deps -e "$root" >&2
"$venv/bin/python" -c "import numpy, monailabel.app, custom_monai.label.app; assert int(numpy.__version__.split('.')[0]) < 2" >&2
echo "$venv/bin/python"
