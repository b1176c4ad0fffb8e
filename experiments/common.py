"""What every study shares: running one of the package's commands with its wall time, and the
record of the machine it ran on. A study runs on whatever platform JAX finds (it never forces the
CPU) and records that platform next to its numbers."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(command: list[str]) -> dict:
    """Runs ``command`` ("python -m ..." or "python script.py ...", with this interpreter) from the
    repository root; exits naming the command if it fails. Returns the command as shown (paths
    relative to the root) and its wall seconds."""
    shown = shlex.join(command).replace(ROOT + os.sep, "")
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command[1:]] if command[0] == "python" else command, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"command failed ({done.returncode}): {shown}")
    return {"command": shown, "seconds": round(time.perf_counter() - start, 1)}


def cpu_name() -> str:
    """The CPU model and core count (/proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def machine() -> dict:
    """The record a study keeps of where it ran: CPU, JAX's platform and device kind."""
    import jax

    device = jax.devices()[0]
    return {"cpu": cpu_name(), "platform": device.platform, "device_kind": device.device_kind,
            "devices": jax.device_count()}
