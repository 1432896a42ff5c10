"""Helpers for tests that run bundles through ``python -m monai.bundle`` (as a user does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def bundle_configs(name: str, *files: str) -> str:
    """The ``--config_file`` value for one or several config files of bundle ``name``."""
    paths = [str(REPO_ROOT / "bundles" / name / "configs" / f) for f in files]
    return paths[0] if len(paths) == 1 else json.dumps(paths).replace('"', "'")


def run_bundle(args: list[str], env: dict | None = None, timeout: int = 1500, torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` (or under ``torchrun`` with that many processes) from the repo root.

    Raises with the tail of the output when the command fails.
    """
    full_env = dict(os.environ)
    # one thread per process: oversubscribed cores (pytest -n 2, torchrun) slow torch down by 10x or more
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "-m", "monai.bundle", *args]
    else:
        cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def overrides(**kwargs) -> list[str]:
    """``--key value`` pairs; non-strings as Python literals, which is what ``fire`` parses."""
    out = []
    for k, v in kwargs.items():
        out += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return out
