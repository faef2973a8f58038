"""train -> export -> validate -> benchmark as an ordered list of steps (after Model Navigator).

Each step runs the real CLI command in a subprocess, its output teed to DIR/<step>/log.txt, so
the pipeline composes exactly what a user would run by hand and every step leaves a log.

The state of finished steps lives in DIR/pipeline.json. Each record holds the settings the step
ran with, the run ids of the steps whose output it consumed, and its own run id. A rerun with the
same DIR skips a step only when its last attempt succeeded with the same settings on the same
inputs; otherwise the step runs again, and so does every step that consumes its output (its
inputs' run ids no longer match).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from alexnet_deploy.console import make_console
from alexnet_deploy.errors import UserError
from alexnet_deploy.files import check_output_dir, is_our_export, overlap, write_json

log = logging.getLogger(__name__)
console = make_console()


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
    arch: str | None = None  # the recipe's (alexnet) when None

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
        if self.arch is not None:
            r["train"]["arch"] = self.arch  # a train setting: another arch reruns train and what follows
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
    settings: dict[str, Any] = field(default_factory=dict)  # what the step ran with
    inputs: dict[str, str] = field(default_factory=dict)  # consumed step -> its run id
    run: str = field(default_factory=lambda: uuid.uuid4().hex)  # this attempt's id


@dataclass
class Step:
    name: str
    # what the step's result depends on besides its inputs; a change reruns it
    settings: Callable[[Settings], dict[str, Any]]
    argv: Callable[[Settings, Path], list[str] | None]  # None: nothing to do (SKIPPED)
    consumes: tuple[str, ...] = ()  # earlier steps whose output this one reads
    ok_codes: tuple[int, ...] = (0,)
    # exit codes meaning "ran, and reported failing checks": the pipeline goes on (the benchmark
    # and the report still tell the user what they have) and says so loudly at the end
    finding_codes: tuple[int, ...] = ()
    # when given: what the step's folder says it found; a finding code without one is a failure
    # (the same exit code also means the command itself failed)
    findings_in: Callable[[Path], str] | None = None

    def current_settings(self, s: Settings) -> dict[str, Any]:
        # as pipeline.json will hold them, so that a resumed run compares like with like
        return json.loads(json.dumps(self.settings(s)))


def _data_dir(s: Settings) -> Path:
    return s.data if s.data is not None else s.out / "data" / "demo"


def _data_settings(s: Settings) -> dict[str, Any]:
    if s.data is not None:
        return {"user_data": str(s.data.resolve())}
    return {"demo": s.recipe()["data"]}


def _data_argv(s: Settings, d: Path) -> list[str] | None:
    if s.data is not None:
        return None  # the user's data: nothing to generate
    r = s.recipe()["data"]
    return ["data", "demo", "--out", str(d / "demo"), "--classes", str(r["classes"]),
            "--per-class", str(r["per_class"]), "--size", str(r["size"]), "--seed", str(r["seed"])]


def _train_settings(s: Settings) -> dict[str, Any]:
    return s.recipe()["train"]


def _train_argv(s: Settings, d: Path) -> list[str]:
    argv = ["train", "--data", str(_data_dir(s)), "--out", str(d)]
    for key, value in s.recipe()["train"].items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _export_settings(s: Settings) -> dict[str, Any]:
    r = s.recipe()
    return {"formats": s.formats or ["all"], "max_batch": r["max_batch"], "calib_images": r["calib_images"]}


def _export_argv(s: Settings, d: Path) -> list[str]:
    e = _export_settings(s)
    return ["export", str(s.out / "train" / "weights.safetensors"), "--out", str(d), "--force",
            "--formats", ",".join(e["formats"]), "--max-batch", str(e["max_batch"]),
            "--calib-images", str(e["calib_images"])]


def _validate_settings(s: Settings) -> dict[str, Any]:
    return {"images": s.recipe()["validate_images"]}


def _validate_argv(s: Settings, d: Path) -> list[str]:
    return ["validate", str(s.out / "export"), "--images", str(_validate_settings(s)["images"]),
            "--report", str(d / "validation.json"), "--layers-if-failed"]


def _benchmark_settings(s: Settings) -> dict[str, Any]:
    r = s.recipe()
    return {"batch_sizes": r["bench_batches"], "duration_s": r["bench_duration_s"],
            "warmup_s": r["bench_warmup_s"]}


def _benchmark_argv(s: Settings, d: Path) -> list[str]:
    b = _benchmark_settings(s)
    return ["benchmark", str(s.out / "export"), "--batch-sizes", b["batch_sizes"],
            "--duration-s", str(b["duration_s"]), "--warmup-s", str(b["warmup_s"]),
            "--report", str(d / "benchmark.json"), "--plot", str(d / "benchmark.png")]


def _benchmark_findings(d: Path) -> str:
    """The benchmark's failed self-check, from the report it wrote before exiting 1; "" if none."""
    try:
        check = json.loads((d / "benchmark.json").read_text()).get("self_check") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    if check.get("passed") is False:
        return f"benchmark self-check failed: floor wrong for {'; '.join(check.get('floor_wrong') or [])}"
    return ""


STEPS: list[Step] = [
    Step("data", _data_settings, _data_argv),
    Step("train", _train_settings, _train_argv, consumes=("data",)),
    # export calibrates on the card's val data, which the trained weights name
    Step("export", _export_settings, _export_argv, consumes=("train",)),
    Step("validate", _validate_settings, _validate_argv, consumes=("export",), finding_codes=(1,)),
    # a result that beat its floor: the timings stand, the report says the floor is wrong
    Step("benchmark", _benchmark_settings, _benchmark_argv, consumes=("export",), finding_codes=(1,),
         findings_in=_benchmark_findings),
]


# ---------------------------------------------------------------------------------------------
# State: what ran, with which settings, on which inputs
# ---------------------------------------------------------------------------------------------
def _state_path(out: Path) -> Path:
    return out / "pipeline.json"


def _load_state(out: Path) -> dict[str, Any]:
    p = _state_path(out)
    if not p.is_file():
        return {"steps": {}}
    try:
        state = json.loads(p.read_text())
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("steps"), dict) or \
            not all(isinstance(r, dict) for r in state["steps"].values()):
        raise UserError(f"{p} is corrupt; remove it (or the whole {out}) to start over")
    return state


def why_rerun(step: Step, s: Settings, steps: dict[str, dict[str, Any]]) -> str | None:
    """None when the step's recorded result still holds for `s`, else why it has to run."""
    rec = steps.get(step.name)
    if rec is None:
        return "not run yet"
    if rec.get("status") not in (Status.OK, Status.SKIPPED):
        return "its last attempt failed"
    if "settings" not in rec:
        return "its settings were not recorded (an older pipeline.json)"
    changed = _changes(rec["settings"], step.current_settings(s))
    if changed:
        return "settings changed: " + changed
    redone = [u for u in step.consumes if rec.get("inputs", {}).get(u) != steps.get(u, {}).get("run")]
    if redone:
        return f"{' and '.join(redone)} was redone since it ran"
    return None


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
                     for k in sorted(old.keys() | new.keys(), key=str) if old.get(k) != new.get(k))


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def run_pipeline(out: str | Path, data: str | Path | None = None, epochs: int | None = None,
                 formats: list[str] | None = None, quick: bool = False,
                 arch: str | None = None) -> dict[str, Any]:
    """Run (or resume) every step; write OUT/report.md and OUT/report.json."""
    s = Settings(out=Path(out), data=Path(data) if data else None, epochs=epochs, formats=formats,
                 quick=quick, arch=arch)
    if s.data is not None and not s.data.is_dir():
        raise UserError(f"data folder not found: {s.data}")
    check_output_dir(s.out)
    _check_data_is_safe(s)
    s.out.mkdir(parents=True, exist_ok=True)
    state = _load_state(s.out)
    state["settings"] = {"data": str(s.data) if s.data else None, "epochs": epochs,
                         "formats": formats, "quick": quick, "arch": arch}
    for step in STEPS:
        why = why_rerun(step, s, state["steps"])
        if why is None:
            log.info(f"pipeline: {step.name} already done with these settings, skipping "
                     f"(delete {_state_path(s.out)} to redo)")
            continue
        if step.name in state["steps"]:
            log.info(f"pipeline: running {step.name} again: {why}")
        rec = _run_step(step, s, state["steps"])
        state["steps"][step.name] = asdict(rec)
        write_json(_state_path(s.out), state)
        if rec.status == Status.FAIL:
            raise UserError(f"pipeline step '{step.name}' failed ({rec.reason}); see {rec.log}; "
                            f"fix it and rerun the same command to resume from '{step.name}'")
    from alexnet_deploy.pipeline.report import write_pipeline_report

    report = write_pipeline_report(s.out, state)
    findings = [r["findings"] for r in state["steps"].values() if r.get("findings")]
    for f in findings:
        log.warning(f"{f}: see {s.out / 'report.md'}")
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
    """A previous attempt's folder is removed to start the step clean, but only when this
    pipeline made it (its log.txt says so): never a folder of the user's that shares the name."""
    if not d.exists() and not d.is_symlink():
        return
    if d.is_symlink() or not d.is_dir() or (any(d.iterdir()) and not _is_our_step_dir(d)):
        raise UserError(f"{d} exists and was not made by this pipeline; move it away or choose "
                        "another --out")
    shutil.rmtree(d)


def run_logged(argv: list[str], log: Path) -> int:
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


def _run_step(step: Step, s: Settings, steps: dict[str, dict[str, Any]]) -> StepRecord:
    d = s.out / step.name
    done = {"settings": step.current_settings(s),
            "inputs": {u: steps[u]["run"] for u in step.consumes if "run" in steps.get(u, {})}}
    argv = step.argv(s, d)
    if argv is None:
        return StepRecord(step.name, Status.SKIPPED, 0.0, "", "user data given", **done)
    _clear_step_dir(d)
    console.rule(f"[bold]{step.name}")
    t0 = time.perf_counter()
    # The log is written beside the step folder and moved in afterwards: the step's command
    # creates (export: replaces) that folder itself and must find it absent or its own.
    running_log = s.out / f".{step.name}.{LOG}"
    code = run_logged(argv, running_log)
    d.mkdir(parents=True, exist_ok=True)
    os.replace(running_log, d / LOG)
    seconds = round(time.perf_counter() - t0, 1)
    log = str(d / LOG)
    found = step.findings_in(d) if code in step.finding_codes and step.findings_in else ""
    if code in step.finding_codes and (found or step.findings_in is None):
        return StepRecord(step.name, Status.OK, seconds, log,
                          findings=found or f"{step.name} reported failing checks (exit code {code})", **done)
    if code not in step.ok_codes:
        return StepRecord(step.name, Status.FAIL, seconds, log, f"exit code {code}", **done)
    return StepRecord(step.name, Status.OK, seconds, log, **done)
