"""The `stripes` console script.

Each command lives in the module that owns its logic and exposes ``main(argv) -> int``;
this file only dispatches, importing the module lazily so that light commands (``fetch``,
``prepare``, ``mi``) never pay for importing torch or mlflow.
"""

from __future__ import annotations

import gc
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("stripes.data.fetch", "resolve and verify POP909 and the structure annotations"),
    "prepare": ("stripes.data.prepare", "pianorolls, context streams, split and windows"),
    "mi": ("stripes.mi", "mutual-information table (paper Table I)"),
    "calibrate": ("stripes.calibrate", "metric floors: every metric reading on reference predictions"),
    "toy": ("stripes.toy", "D=2 kernel analysis (paper Figs. 2-3)"),
    "train": ("stripes.train", "train one harmonizer from a resolved run config"),
    "evaluate": ("stripes.evaluate", "evaluate a checkpoint on 16- and 64-bar test windows"),
    "tune": ("stripes.tune", "Optuna study for one (PE, context), without MLflow"),
    "aggregate": ("stripes.report", "build the tables and figures of the study, without MLflow"),
    "job": ("stripes.jobs", "a job of the workflow: init, train, evaluate, train-eval, tune, aggregate (MLflow, records)"),
    "ui": ("stripes.tracking", "start the MLflow UI on 127.0.0.1 and print the runs URL"),
    "status": ("stripes.status", "one-screen summary of results/: runs done/failed/missing, slowest jobs"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: stripes <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `stripes <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"stripes: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


def exit_fast(rc: int) -> None:
    """Exit with ``rc``, skipping the interpreter's last garbage collection of every object.

    A job process that imported torch (with torch._dynamo, which ``torch.optim`` loads), mlflow
    and matplotlib spends over a second after its last line collecting their objects one by one:
    ``python -c "import torch, torch._dynamo, mlflow, matplotlib.pyplot"`` took 5.28 s, and 4.01 s
    with ``gc.freeze()`` as its last line (mean of 4 runs each, idle 2-core machine); ~60 such jobs
    make a smoke study. ``gc.freeze`` moves every live object to the permanent generation, which
    the final collection skips; atexit handlers still run and files and streams close as usual.
    """
    gc.freeze()
    sys.exit(rc)


def run() -> None:
    """The console script's entry point: :func:`main`, then :func:`exit_fast`."""
    exit_fast(main())


if __name__ == "__main__":
    run()
