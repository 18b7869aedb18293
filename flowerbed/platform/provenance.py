"""What produced a run: package versions, the machine, and flowerbed's git commit.

Written to ``environment.json`` in every run folder, so a table built from run
folders (``flowerbed bench``, RESULTS.md) can say which code and libraries made
each number, and runs made before and after a change can be told apart.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import flowerbed

PACKAGES = ("flwr", "torch", "torchvision", "numpy", "scikit-learn", "ray", "hdbscan")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_state(source_dir: Path) -> dict[str, Any] | None:
    """The commit of the git checkout holding ``source_dir`` and whether it has uncommitted changes."""

    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", "-C", str(source_dir), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return completed.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel) or no git on the machine
    return {"commit": commit, "uncommitted-changes": bool(changed)}


def cpu_model() -> str | None:
    """The CPU's model name: Linux's /proc/cpuinfo, else ``platform.processor()`` (may be empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def torch_cpu_capability() -> str | None:
    """The instruction set torch's CPU kernels dispatch to (e.g. AVX2, AVX512).

    Kernels for different instruction sets sum in different orders, so the same seed can give
    slightly different weights on another CPU, and a long run can drift apart from there.
    """
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        return None


def environment() -> dict[str, Any]:
    source_dir = Path(flowerbed.__file__).resolve().parent
    return {
        "flowerbed": flowerbed.__version__,
        "flowerbed-source": str(source_dir),
        "git": git_state(source_dir),
        "python": platform.python_version(),
        "packages": {name: version for name in PACKAGES if (version := package_version(name)) is not None},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu": cpu_model(),
            "torch-cpu-capability": torch_cpu_capability(),
            "cpus": os.cpu_count(),
        },
        "command": sys.argv,
    }
