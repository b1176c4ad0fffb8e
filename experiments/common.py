"""What every study shares: running the package's commands (with their wall times, resuming where
a study stopped) and the record of the machine it ran on. A study runs on whatever platform JAX
finds (nothing here forces the CPU) and records that platform next to its numbers."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CommandLog:
    """Every command a study ran, with its wall time and stage (what its results record)."""

    def __init__(self):
        self.commands, self.start = [], time.perf_counter()

    def add(self, command: str, seconds: float | None, stage: str | None = None) -> None:
        entry = {"command": command, "seconds": None if seconds is None else round(seconds, 1)}
        self.commands.append(entry if stage is None else dict(entry, stage=stage))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def shown(command: list[str]) -> str:
    """A command as a reader would type it: ``python`` for this interpreter, paths relative to the root."""
    words = ["python", *command[1:]] if command[0] in ("python", sys.executable) else command
    return shlex.join(words).replace(ROOT + os.sep, "")


def run_command(command: list[str], log: CommandLog | None = None, stage: str | None = None,
                output: str | None = None) -> dict:
    """Runs ``command`` ("python -m ..." or "python script.py ...", with this interpreter) from the
    repository root; exits naming the command if it fails. Returns (and adds to ``log``) the command
    as shown and its wall seconds.

    ``output``: a file the command writes last. When it exists the command is not rerun (a study
    resumes where it stopped) and the seconds recorded beside it (``OUTPUT.seconds``) are returned."""
    text = shown(command)
    timing = os.path.splitext(output)[0] + ".seconds" if output else None
    if output and os.path.exists(output):
        seconds = None
        if os.path.exists(timing):
            with open(timing) as f:
                seconds = float(f.read())
        print(f"$ {text}  # done before ({shown([output])} exists)", flush=True)
    else:
        print(f"$ {text}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *command[1:]] if command[0] in ("python", sys.executable) else command,
                              cwd=ROOT, check=False)
        seconds = round(time.perf_counter() - start, 1)
        if done.returncode:
            raise SystemExit(f"command failed ({done.returncode}): {text}")
        if timing:
            with open(timing, "w") as f:
                f.write(str(seconds))
    if log is not None:
        log.add(text, seconds, stage)
    return {"command": text, "seconds": seconds}


def cpu_description() -> str:
    """'model name (cores; avx2, avx512f, avx512_bf16, amx_bf16)': what decides CPU speed here."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model} ({os.cpu_count()} cores; {', '.join(wanted) or 'no AVX-512'})"


def machine() -> dict:
    """The record a study keeps of where it ran: CPU, operating system, JAX's platform and devices."""
    import jax

    device = jax.devices()[0]
    return {"cpu": cpu_description(), "cpu_count": os.cpu_count(), "os": platform.platform(),
            "platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count()}
