"""train -> export -> validate -> benchmark as an ordered list of steps (after Model Navigator).

Each step runs the real CLI command in a subprocess, its output teed to DIR/<step>/log.txt, so
the pipeline composes exactly what a user would run by hand and every step leaves a log. The
state of finished steps lives in DIR/pipeline.json; a rerun with the same DIR skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console

from alexnet_deploy.errors import UserError
from alexnet_deploy.files import check_output_dir, is_our_export, overlap, write_json

console = Console(stderr=False)


class Status(str, Enum):
    OK = "OK"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass
class Settings:
    """What the pipeline runs with; `quick` shrinks everything to a smoke run."""

    out: Path
    data: Path | None = None
    epochs: int | None = None
    formats: list[str] | None = None
    quick: bool = False

    def recipe(self) -> dict[str, Any]:
        """Data and training settings from training.DEMO_RECIPE, plus the later steps' sizes."""
        from alexnet_deploy.training import DEMO_RECIPE

        r = {"data": dict(DEMO_RECIPE["data"]), "train": dict(DEMO_RECIPE["train"]),
             **(QUICK_STEPS if self.quick else DEMO_STEPS)}
        if self.quick:
            r["data"].update(per_class=8, size=72)
            r["train"].update(epochs=1, batch_size=16)
        if self.epochs is not None:
            r["train"]["epochs"] = self.epochs
        return r


# Sizes of the steps after training: the demo's fit `make demo`'s time budget on 2 cores.
DEMO_STEPS = {"max_batch": 32, "calib_images": 128, "validate_images": 200,
              "bench_batches": "1,8,32", "bench_duration_s": 3.0, "bench_warmup_s": 0.5}
QUICK_STEPS = {"max_batch": 4, "calib_images": 16, "validate_images": 20,
               "bench_batches": "1,4", "bench_duration_s": 0.3, "bench_warmup_s": 0.1}


@dataclass
class StepRecord:
    name: str
    status: Status
    seconds: float
    log: str
    reason: str = ""
    findings: str = ""


@dataclass
class Step:
    name: str
    argv: Callable[[Settings, Path], list[str] | None]  # None: nothing to do (SKIPPED)
    ok_codes: tuple[int, ...] = (0,)
    # exit codes meaning "ran, and reported failing checks": the pipeline goes on (the benchmark
    # and the report still tell the user what they have) and says so loudly at the end
    finding_codes: tuple[int, ...] = ()


def _data_dir(s: Settings) -> Path:
    return s.data if s.data is not None else s.out / "data" / "demo"


def _data_argv(s: Settings, d: Path) -> list[str] | None:
    if s.data is not None:
        return None  # the user's data: nothing to generate
    r = s.recipe()["data"]
    return ["data", "demo", "--out", str(d / "demo"), "--classes", str(r["classes"]),
            "--per-class", str(r["per_class"]), "--size", str(r["size"]), "--seed", str(r["seed"])]


def _train_argv(s: Settings, d: Path) -> list[str]:
    argv = ["train", "--data", str(_data_dir(s)), "--out", str(d)]
    for key, value in s.recipe()["train"].items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _export_argv(s: Settings, d: Path) -> list[str]:
    r = s.recipe()
    formats = ",".join(s.formats) if s.formats else "all"
    return ["export", str(s.out / "train" / "weights.safetensors"), "--out", str(d), "--force",
            "--formats", formats, "--max-batch", str(r["max_batch"]),
            "--calib-images", str(r["calib_images"])]


def _validate_argv(s: Settings, d: Path) -> list[str]:
    r = s.recipe()
    return ["validate", str(s.out / "export"), "--images", str(r["validate_images"]),
            "--report", str(d / "validation.json")]


def _benchmark_argv(s: Settings, d: Path) -> list[str]:
    r = s.recipe()
    return ["benchmark", str(s.out / "export"), "--batch-sizes", r["bench_batches"],
            "--duration-s", str(r["bench_duration_s"]), "--warmup-s", str(r["bench_warmup_s"]),
            "--report", str(d / "benchmark.json"), "--plot", str(d / "benchmark.png")]


STEPS: list[Step] = [
    Step("data", _data_argv),
    Step("train", _train_argv),
    Step("export", _export_argv),
    Step("validate", _validate_argv, finding_codes=(1,)),
    Step("benchmark", _benchmark_argv),
]


def _state_path(out: Path) -> Path:
    return out / "pipeline.json"


def _load_state(out: Path) -> dict[str, Any]:
    p = _state_path(out)
    if not p.is_file():
        return {"steps": {}}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{p} is corrupt; remove it (or the whole {out}) to start over") from None


def _run_logged(argv: list[str], log: Path) -> int:
    """Run `alexnet-deploy ARGV`, showing its output and copying it to `log`."""
    cmd = [sys.executable, "-m", "alexnet_deploy", *argv]
    with open(log, "w") as f:
        f.write(LOG_HEAD + " ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        return proc.wait()


def run_pipeline(out: str | Path, data: str | Path | None = None, epochs: int | None = None,
                 formats: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run (or resume) every step; write OUT/report.md and OUT/report.json."""
    s = Settings(out=Path(out), data=Path(data) if data else None, epochs=epochs, formats=formats,
                 quick=quick)
    if s.data is not None and not s.data.is_dir():
        raise UserError(f"data folder not found: {s.data}")
    check_output_dir(s.out)
    _check_data_is_safe(s)
    s.out.mkdir(parents=True, exist_ok=True)
    state = _load_state(s.out)
    state["settings"] = {"data": str(s.data) if s.data else None, "epochs": epochs,
                         "formats": formats, "quick": quick}
    for step in STEPS:
        done = state["steps"].get(step.name, {})
        if done.get("status") in (Status.OK, Status.SKIPPED):
            console.print(f"[dim]pipeline: {step.name} already done, skipping (delete "
                          f"{_state_path(s.out)} to redo)[/dim]")
            continue
        state["steps"][step.name] = asdict(_run_step(step, s))
        write_json(_state_path(s.out), state)
        rec = state["steps"][step.name]
        if rec["status"] == Status.FAIL:
            raise UserError(f"pipeline step '{step.name}' failed ({rec['reason']}); see {rec['log']}; "
                            f"fix it and rerun the same command to resume from '{step.name}'")
    from alexnet_deploy.pipeline_report import write_pipeline_report

    report = write_pipeline_report(s.out, state)
    findings = [r["findings"] for r in state["steps"].values() if r.get("findings")]
    for f in findings:
        console.print(f"[bold red]warning[/bold red]: {f}: see the report's validation table")
    console.print(f"[bold green]pipeline finished[/bold green]: report at {s.out / 'report.md'}")
    return report


def _check_data_is_safe(s: Settings) -> None:
    """The user's --data must not be OUT, hold OUT, or lie in a step folder a rerun replaces."""
    if s.data is None:
        return
    how = overlap(s.out, s.data)
    if how in ("is", "lies inside"):
        raise UserError(f"--out {s.out} {how} --data {s.data}; the pipeline writes its steps there: "
                        "choose an --out outside the data")
    for step in STEPS:
        if overlap(s.out / step.name, s.data) in ("is", "holds"):
            raise UserError(f"--data {s.data} lies in {s.out / step.name}, the pipeline's own "
                            f"'{step.name}' step folder; move the data or choose another --out")


LOG = "log.txt"
LOG_HEAD = "$ alexnet-deploy "  # the first line of every step log: marks the folder as ours


def _is_our_step_dir(d: Path) -> bool:
    if is_our_export(d):
        return True
    log = d / LOG
    if log.is_symlink() or not log.is_file():
        return False
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            return f.read(len(LOG_HEAD)) == LOG_HEAD
    except OSError:
        return False


def _clear_step_dir(d: Path) -> None:
    """A previous failed attempt's folder is removed to start the step clean, but only when this
    pipeline made it (its log.txt says so): never a folder of the user's that shares the name."""
    if not d.exists() and not d.is_symlink():
        return
    if d.is_symlink() or not d.is_dir() or (any(d.iterdir()) and not _is_our_step_dir(d)):
        raise UserError(f"{d} exists and was not made by this pipeline; move it away or choose "
                        "another --out")
    shutil.rmtree(d)


def _run_step(step: Step, s: Settings) -> StepRecord:
    d = s.out / step.name
    argv = step.argv(s, d)
    if argv is None:
        return StepRecord(step.name, Status.SKIPPED, 0.0, "", "user data given")
    if step.name != "data":
        _clear_step_dir(d)
    console.rule(f"[bold]{step.name}")
    t0 = time.perf_counter()
    # The log is written beside the step folder and moved in afterwards: the step's command
    # creates (export: replaces) that folder itself and must find it absent or its own.
    running_log = s.out / f".{step.name}.{LOG}"
    code = _run_logged(argv, running_log)
    d.mkdir(parents=True, exist_ok=True)
    os.replace(running_log, d / LOG)
    seconds = round(time.perf_counter() - t0, 1)
    if code in step.finding_codes:
        return StepRecord(step.name, Status.OK, seconds, str(d / "log.txt"),
                          findings=f"{step.name} reported failing checks (exit code {code})")
    if code not in step.ok_codes:
        return StepRecord(step.name, Status.FAIL, seconds, str(d / "log.txt"), f"exit code {code}")
    return StepRecord(step.name, Status.OK, seconds, str(d / "log.txt"))
