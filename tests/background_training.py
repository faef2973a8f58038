"""The demo recipe's data, training and export (conftest's `recipe_data` / `learned_run` /
`exported_dir`), run as a child process of the test session while the tests that do not need them run.

It runs on one thread (conftest sets OMP_NUM_THREADS=1), so the session's trained model is the same
on any number of cores. On two threads beside the tests it cost twice its standalone CPU time: each
of its threads waited at every barrier for the sibling a test held off its core. The one-thread model
(measured: every check of the suite passes on it) is not `make demo`'s two-thread one bit for bit;
both are the recipe's.

    python tests/background_training.py DATA_DIR RUN_DIR RESULT_JSON EXPORT_DIR {idle,normal}

Writes DATA_DIR (make_demo of DEMO_RECIPE["data"]) then RESULT_JSON.data, trains DEMO_RECIPE["train"]
into RUN_DIR and writes RESULT_JSON (the TrainResult), then exports the trained weights into
EXPORT_DIR as conftest's `exported_dir` says and writes RESULT_JSON.export; each marker is written
once what it announces is complete. A failure writes RESULT_JSON.failed, so that test processes
that did not start it stop waiting.
"""

from __future__ import annotations

import os
import sys

# conftest's `exported_dir`: every format this machine can export, max batch 8, 32 calibration images
EXPORT = {"formats": ["all"], "max_batch": 8, "calib_images": 32, "show": False}


# The three steps, as conftest also runs them in its own process when it does not start this one.
def make_data(data):
    from alexnet_deploy.data import make_demo
    from alexnet_deploy.training import DEMO_RECIPE

    return make_demo(data, **DEMO_RECIPE["data"])


def train(data, run):
    from alexnet_deploy.training import DEMO_RECIPE, TrainConfig, fit

    return fit(TrainConfig(data=str(data), out=str(run), **DEMO_RECIPE["train"], quiet=True))


def export(weights, out) -> None:
    from alexnet_deploy.exporters import export_all

    export_all(weights, out, **EXPORT)


def main(data: str, run: str, result: str, export_dir: str, priority: str = "idle") -> int:
    if priority == "idle":  # only on a core the tests leave idle (nice 19 measured the same suite time)
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.nice(19)
    from alexnet_deploy.files import write_json  # atomic: each marker appears complete

    try:
        make_data(data)
        write_json(result + ".data", {})
        trained = train(data, run)
        write_json(result, trained.to_dict())
        export(trained.weights, export_dir)
        write_json(result + ".export", {})
    except BaseException:
        write_json(result + ".failed", {})
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:6]))
