"""Runs many `python -m MODULE ARGS...` command lines for one start-up: imports the module once,
then forks a child per command line (its own argv, device count and captured output).

    python tests/cli_fork.py MODULE < cases.json > results.json

cases.json: [{"argv": [...], "devices": N}, ...]; results.json: [{"returncode", "stdout", "stderr"}].
A command line of the train CLI costs ~0.1 s this way instead of ~5 s of process start-up and
imports; each child still parses its own flags and sets up JAX's backend from scratch (the parent
imports JAX but never initializes a backend, so forking is safe and the child's XLA_FLAGS apply).
"""

import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train_cli(cases: list[tuple[int, list[str]]]) -> list[subprocess.CompletedProcess]:
    """``python -m yarn_jax.train ARGV`` for each (devices, argv), from one process start-up."""
    payload = json.dumps([{"devices": devices, "argv": argv} for devices, argv in cases])
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "yarn_jax.train"], cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), input=payload, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [subprocess.CompletedProcess(argv, r["returncode"], r["stdout"], r["stderr"])
            for (_, argv), r in zip(cases, json.loads(done.stdout))]


def run_one(module: str, argv: list[str], devices: int) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:
            os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.argv = [module, *argv]
            code = 0
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read(), "stderr": err.read()}


if __name__ == "__main__":
    module = sys.argv[1]
    cases = json.load(sys.stdin)
    importlib.import_module(module)  # the expensive part, once
    results = [run_one(module, case["argv"], case.get("devices", 1)) for case in cases]
    json.dump(results, sys.stdout)
