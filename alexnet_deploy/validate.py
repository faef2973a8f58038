"""`alexnet-deploy validate`: does every artifact answer as the trained model does?

For each (runner, artifact) pair the registry offers, on one shared set of inputs (real images
with the card's preprocessing, then seeded random tensors), fed in a cycle of batch sizes:
  1. integrity first: the artifact's sha256 must match the manifest, else it is not loaded;
  2. run it, and compare its logits with torch-eager fp32 on the same weights and inputs
     (rules in compare.py, limits per precision in tolerances.py);
  3. record a serialisable result with every figure, OK / FAIL / SKIPPED and why.
`validate()` is the library entry point (pipeline and notebooks); `run_validate()` is the CLI's.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_deploy.card import printable
from alexnet_deploy.compare import judge
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import Artifact, Manifest, verify_integrity
from alexnet_deploy.tolerances import DEFAULT_LIMITS, Limits

RANDOM_INPUTS = 8  # seeded N(0, 1) tensors added to the real images (at least)
NON_POWER_OF_TWO = 3  # a batch size that catches kernels specialised for powers of two
DEFAULT_MAX_BATCH = 64  # the biggest batch fed by default, whatever the artifact's range allows
MAX_INPUT_BYTES = 2 << 30  # the shared input batch is refused beyond this, before it is allocated
REFERENCE_CHUNK = 64

OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"


@dataclass
class ValidationResult:
    """One runner on one artifact. Figures are None when it was not run (SKIPPED, integrity)."""

    backend: str
    format: str
    precision: str
    device: str
    artifact: str  # path relative to the export folder
    status: str = SKIPPED
    passed: bool | None = None  # None: not checked (SKIPPED)
    reason: str | None = None  # why it FAILED or was SKIPPED, in one line
    max_abs: float | None = None
    max_rel: float | None = None
    p99_abs: float | None = None
    min_atol: float | None = None  # the smallest atol that would have passed at the limits' rtol
    cosine: float | None = None  # the worst per-sample cosine similarity
    top1_agreement: float | None = None  # fraction 0..1
    top5_overlap: float | None = None  # fraction 0..1
    accuracy_top1: float | None = None  # fraction 0..1, on the labelled images
    accuracy_top5: float | None = None
    reference_accuracy_top1: float | None = None
    reference_accuracy_top5: float | None = None
    accuracy_drop: float | None = None  # percentage points, reference minus this runner
    limits: dict[str, Any] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    images: int = 0  # real, labelled images
    random_inputs: int = 0
    load_s: float | None = None
    infer_s: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend} [{self.precision}] {self.artifact}"


@dataclass
class ValidationReport:
    passed: bool
    export_dir: str
    data: str | None  # the labelled images' folder, None when only random inputs were used
    images: int
    random_inputs: int
    seed: int
    reference: dict[str, Any]
    results: list[ValidationResult]
    summary: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    @property
    def failed(self) -> list[ValidationResult]:
        return [r for r in self.results if r.status == FAIL]


@dataclass
class Inputs:
    """One batch shared by every runner: real images first, then random tensors."""

    batch: np.ndarray
    labels: np.ndarray  # for the first `real` rows
    real: int
    source: str | None


# ---------------------------------------------------------------------------------------------
# The library entry point
# ---------------------------------------------------------------------------------------------
def validate(export_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             images: int = 200, batch_sizes: list[int] | None = None,
             backends: list[str] | None = None, atol: float | None = None, rtol: float | None = None,
             min_agreement: float | None = None, max_accuracy_drop: float | None = None,
             fail_fast: bool = False, random_inputs: int = RANDOM_INPUTS, seed: int = 0,
             progress: Callable[[str], None] | None = None) -> ValidationReport:
    """Validate every artifact of `export_dir` (or the `backends` named) against torch eager."""
    from alexnet_deploy.machine import library_versions
    from alexnet_deploy.runtimes import get_runner

    say = progress or (lambda _msg: None)
    manifest = Manifest.read(_export_folder(export_dir))
    choices = select_choices(manifest, backends)
    overrides = {"atol": atol, "rtol": rtol, "min_top1_agreement": min_agreement,
                 "max_accuracy_drop": max_accuracy_drop}
    runnable = [c for c in choices if c.available]
    cap = min(DEFAULT_MAX_BATCH, max((a.batch.max for a in manifest.artifacts), default=DEFAULT_MAX_BATCH))
    sizes = {id(c): batch_sizes_for(c.artifact, batch_sizes, cap) for c in runnable}
    needed = max((sum(s) for s in sizes.values()), default=0)
    check_input_size(manifest, max(needed, random_inputs) + max(images, 0))
    inputs = make_inputs(manifest, data_dir, images, random_inputs, needed, seed)
    say(f"reference: torch eager fp32 on {manifest.weights.get('path', 'the weights')}, "
        f"{inputs.real} images + {len(inputs.batch) - inputs.real} random inputs")
    reference = reference_logits(manifest, inputs.batch)

    results: list[ValidationResult] = []
    stop: str | None = None
    for choice in choices:
        result = _blank(choice.runner, choice.artifact, inputs)
        result.limits = asdict(limits_for(choice.artifact.precision, overrides))
        if not choice.available:
            result.reason = choice.reason
        elif stop:
            result.reason = stop
        else:
            say(f"validating {result.label}")
            result.batch_sizes = sizes[id(choice)]
            _check(result, get_runner(choice.runner), manifest, choice.artifact, inputs, reference)
            if result.status == FAIL and fail_fast:
                stop = f"not run: --fail-fast stopped after {result.backend} [{result.precision}] failed"
        results.append(result)

    if not backends:
        results += [_blank(None, a, inputs, reason=NO_RUNNER) for a in unrunnable(manifest)]
    checked = [r for r in results if r.status != SKIPPED]
    passed = bool(checked) and all(r.status == OK for r in checked)
    report = ValidationReport(
        passed=passed, export_dir=str(manifest.root), data=inputs.source, images=inputs.real,
        random_inputs=len(inputs.batch) - inputs.real, seed=seed,
        reference={"backend": "torch eager fp32", "weights": manifest.weights.get("path"),
                   "sha256": manifest.weights.get("sha256")},
        results=results, versions=library_versions())
    report.summary = summarise(report)
    return report


def _export_folder(export_dir: str | os.PathLike) -> Path:
    path = Path(export_dir)
    if not path.exists():
        raise UserError(f"export folder not found: {path} (run `alexnet-deploy export WEIGHTS --out {path}`)")
    if not path.is_dir():
        raise UserError(f"{path} is a file; validate takes the export folder that holds manifest.json")
    return path


def select_choices(manifest: Manifest, backends: list[str] | None):
    """Every (runner, artifact) pair to validate. A backend the user names must be able to run:
    one with nothing to run or that cannot run here is a usage error, not a silent skip."""
    from alexnet_deploy.runtimes import get_runner, runners_for

    choices = runners_for(manifest, backends)
    for name in backends or []:
        mine = [c for c in choices if c.runner == name]
        if not mine:
            held = sorted({a.format for a in manifest.artifacts})
            raise UserError(f"backend {name} has nothing to run in {manifest.root}: it runs "
                            f"{', '.join(get_runner(name).formats)}; the export holds "
                            f"{', '.join(held) or 'no artifacts'}")
        if not any(c.available for c in mine):
            raise UserError(f"backend {name} cannot run here: {mine[0].reason}")
    return choices


def limits_for(precision: str, overrides: dict[str, float | None]) -> Limits:
    """The precision's default limits with the user's overrides. atol/rtol overrides tighten or
    loosen an elementwise check; they do not add one where the precision has none (int8, bf16)."""
    base = DEFAULT_LIMITS.get(precision, DEFAULT_LIMITS["fp32"])
    kw = dict(overrides)
    if base.atol is None:
        kw.pop("atol", None)
        kw.pop("rtol", None)
    return base.override(**kw)


def check_input_size(manifest: Manifest, rows: int) -> None:
    """Refuse, before allocating, an input batch beyond MAX_INPUT_BYTES (huge --batch-sizes)."""
    per_row = 4 * int(np.prod(manifest.card.input.shape))
    if rows * per_row > MAX_INPUT_BYTES:
        raise UserError(f"validate would need {rows:,} inputs of {'x'.join(map(str, manifest.card.input.shape))} "
                        f"({rows * per_row / 2**30:.1f} GiB, more than the {MAX_INPUT_BYTES / 2**30:.0f} GiB "
                        "bound): pass smaller --batch-sizes or fewer --images")


def batch_sizes_for(artifact: Artifact, requested: list[int] | None,
                    cap: int = DEFAULT_MAX_BATCH) -> list[int]:
    """The batch sizes fed to `artifact`: the requested ones within its range, or by default
    1, a non-power-of-two and its max batch up to `cap` (so the dynamic batch dimension is
    exercised without allocating for a max batch of 65536).

    `cap` bounds the default max (at most DEFAULT_MAX_BATCH): validate passes the largest max
    batch among the export's artifacts, so the weights are fed as the artifacts are.
    """
    lo, hi = artifact.batch.get("min", 1), min(artifact.batch.get("max", 1), max(cap, 1), DEFAULT_MAX_BATCH)
    hi = max(hi, lo)
    if requested:
        sizes = [b for b in requested if lo <= b <= artifact.batch.get("max", 1)]
        return sizes or [min(max(requested[0], lo), hi)]
    return sorted({lo, min(max(NON_POWER_OF_TWO, lo), hi), hi})


def make_inputs(manifest: Manifest, data_dir, images: int, random_inputs: int, needed: int,
                seed: int) -> Inputs:
    """Real labelled images (from `data_dir`, else the card's val data when it exists), then
    seeded random tensors: at least `random_inputs`, more when the batch cycle needs them."""
    from alexnet_deploy.data import load_labelled

    card = manifest.card
    source = data_dir if data_dir is not None else card.data.get("val")
    if source is not None and data_dir is None and not Path(source).is_dir():
        source = None  # the card's data moved or was never here: random inputs only
    shape = tuple(card.input.shape)
    real = np.zeros((0, *shape), np.float32)
    labels = np.zeros(0, np.int64)
    if source is not None and images > 0:
        labelled = load_labelled(source, card, limit=images, seed=seed)
        real, labels = labelled.images, labelled.labels
    n_random = max(random_inputs, needed - len(real))
    noise = np.random.default_rng(seed).standard_normal((n_random, *shape), dtype=np.float32)
    return Inputs(np.concatenate([real, noise]), labels, len(real),
                  str(source) if len(real) else None)


def reference_logits(manifest: Manifest, batch: np.ndarray) -> np.ndarray:
    """torch eager fp32 on the export's own weights: integrity-checked, then loaded safely."""
    import torch

    from alexnet_deploy.model import load_weights

    weights = manifest.weights_artifact()
    problem = verify_integrity(manifest, weights)
    if problem:
        raise CheckFailed(f"the reference weights fail their check, nothing can be validated: {problem}")
    model, _ = load_weights(manifest.path_of(weights))
    out = []
    with torch.inference_mode():
        for start in range(0, len(batch), REFERENCE_CHUNK):
            out.append(model(torch.from_numpy(batch[start:start + REFERENCE_CHUNK])).float().numpy())
    logits = np.concatenate(out) if out else np.zeros((0, manifest.card.num_classes), np.float32)
    if logits.shape[1] != manifest.card.num_classes:
        raise CheckFailed(f"the card lists {manifest.card.num_classes} classes but the reference weights "
                          f"{printable(weights.path)} output {logits.shape[1]} logits: the manifest does not "
                          "match the weights; re-export")
    if not np.isfinite(logits).all():
        raise CheckFailed(f"the reference weights {printable(weights.path)} produce NaN or Inf logits: "
                          "nothing can be validated against them; retrain or re-export")
    return logits


def split_batches(n: int, sizes: list[int]) -> list[slice]:
    """Consecutive slices of 0..n whose lengths cycle through `sizes` (the last may be short)."""
    out, start, i = [], 0, 0
    while start < n:
        out.append(slice(start, min(start + sizes[i % len(sizes)], n)))
        start += sizes[i % len(sizes)]
        i += 1
    return out


NO_RUNNER = "no registered runner accepts this format"


def unrunnable(manifest: Manifest) -> list[Artifact]:
    """Artifacts no runner accepts (e.g. a Triton model folder): reported, never silently left out."""
    from alexnet_deploy.runtimes import RUNNERS

    return [a for a in manifest.artifacts if not any(cls.accepts(a) for cls in RUNNERS.values())]


def _blank(runner: str | None, artifact: Artifact, inputs: Inputs,
           reason: str | None = None) -> ValidationResult:
    from alexnet_deploy.runtimes import get_runner

    return ValidationResult(backend=runner or "-", format=artifact.format, precision=artifact.precision,
                            device=get_runner(runner).device if runner else artifact.device,
                            artifact=artifact.path, images=inputs.real,
                            random_inputs=len(inputs.batch) - inputs.real, reason=reason)


def _check(result: ValidationResult, runner_cls, manifest: Manifest, artifact: Artifact,
           inputs: Inputs, reference: np.ndarray) -> None:
    """Fill `result` in place: integrity, run, compare."""
    problem = verify_integrity(manifest, artifact)
    if problem:
        _fail(result, problem)
        return
    try:
        outputs = _run(result, runner_cls.from_artifact(manifest, artifact), inputs.batch)
    except Exception as e:  # any runtime's failure to load or run is this artifact's FAIL
        _fail(result, f"{type(e).__name__}: {_first_line(e)}")
        return
    if outputs.shape != reference.shape:
        _fail(result, f"output shape {outputs.shape} differs from the reference's {reference.shape}")
        return
    if not np.isfinite(outputs).all():
        bad = int((~np.isfinite(outputs).all(axis=1)).sum())
        _fail(result, f"NaN or Inf logits for {bad} of {len(outputs)} inputs")
        return
    decide = slice(0, inputs.real) if inputs.real else None
    verdict = judge(outputs, reference, Limits(**result.limits), decide=decide,
                    labels=inputs.labels if inputs.real else None)
    ew, dec = verdict.elementwise, verdict.decisions
    for key in ("max_abs", "max_rel", "p99_abs", "min_atol", "cosine"):
        setattr(result, key, getattr(ew, key))
    result.top1_agreement, result.top5_overlap = dec.top1_agreement, dec.top5_overlap
    for key in ("accuracy_top1", "accuracy_top5", "reference_accuracy_top1",
                "reference_accuracy_top5", "accuracy_drop"):
        setattr(result, key, getattr(verdict, key))
    result.failures = verdict.failures
    result.passed = verdict.passed
    result.status = OK if verdict.passed else FAIL
    result.reason = None if verdict.passed else "; ".join(verdict.failures)


def _run(result: ValidationResult, runner, batch: np.ndarray) -> np.ndarray:
    with runner:
        result.load_s = runner.load_s
        t0 = time.perf_counter()
        outs = [runner.infer(np.ascontiguousarray(batch[s])) for s in
                split_batches(len(batch), result.batch_sizes)]
        result.infer_s = time.perf_counter() - t0
    return np.concatenate(outs)


def _fail(result: ValidationResult, message: str) -> None:
    result.status, result.passed, result.reason = FAIL, False, message
    result.failures = [message]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def _json_safe(obj: Any) -> Any:
    """NaN and inf are not JSON: they become null (the failure line says what happened)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Presentation: one-line summary, Markdown, rich table
# ---------------------------------------------------------------------------------------------
def summarise(report: ValidationReport) -> str:
    checked = [r for r in report.results if r.status != SKIPPED]
    skipped = len(report.results) - len(checked)
    inputs = f"{report.images} images + {report.random_inputs} random inputs"
    tail = f", {skipped} skipped" if skipped else ""
    if not checked:
        return f"nothing was validated: every runner was skipped{tail}"
    if report.passed:
        return f"PASSED: {len(checked)} of {len(checked)} checks match torch eager fp32 on {inputs}{tail}"
    first = report.failed[0]
    return (f"FAILED: {len(report.failed)} of {len(checked)} checks failed on {inputs}{tail}; "
            f"first: {first.backend} [{first.precision}] {first.artifact}: {first.reason}")


COLUMNS = ("backend", "format", "precision", "status", "max abs", "p99 abs", "min atol", "cosine",
           "top-1 agree", "top-5 overlap", "top-1 acc", "acc drop (pts)")


def _row(r: ValidationResult) -> list[str]:
    def num(v, fmt="{:.2e}"):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    def pct(v):
        return num(v, "{:.1%}")

    return [r.backend, r.format, r.precision, r.status, num(r.max_abs), num(r.p99_abs),
            num(r.min_atol), num(r.cosine, "{:.6f}"), pct(r.top1_agreement), pct(r.top5_overlap),
            pct(r.accuracy_top1), num(r.accuracy_drop, "{:+.2f}")]


def to_markdown(report: ValidationReport) -> str:
    from alexnet_deploy.report import markdown_table

    ref = report.results[0].reference_accuracy_top1 if report.results else None
    lines = [f"# Validation of `{report.export_dir}`\n", f"**{report.summary}**\n",
             f"Reference: torch eager fp32 on `{report.reference.get('weights')}`"
             + (f" (top-1 {ref:.1%} on {report.images} images of `{report.data}`)" if ref is not None else "")
             + ".\n", markdown_table(COLUMNS, [_row(r) for r in report.results])]
    notes = [f"- {r.status} `{r.backend}` [{r.precision}] `{r.artifact}`: {r.reason}"
             for r in report.results if r.reason]
    if notes:
        lines += ["## Failures and skips\n", "\n".join(notes) + "\n"]
    lines += ["## Limits\n", _limits_text(report)]
    return "\n".join(lines)


def _limits_text(report: ValidationReport) -> str:
    seen: dict[str, dict] = {}
    for r in report.results:
        seen.setdefault(r.precision, r.limits)
    out = []
    for precision, lim in seen.items():
        ew = (f"|y-ref| <= {lim['atol']:g} + {lim['rtol']:g}*|ref|" if lim.get("atol") is not None
              else "no elementwise limit")
        drop = (f", accuracy drop <= {lim['max_accuracy_drop']:g} pts"
                if lim.get("max_accuracy_drop") is not None else "")
        out.append(f"- {precision}: {ew}, top-1 agreement >= {lim['min_top1_agreement']:.1%}{drop}")
    return "\n".join(out) + "\n"


def print_report(report: ValidationReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"validation of {report.export_dir}"))
    for c in COLUMNS:
        left = c in ("backend", "format", "precision", "status")
        table.add_column(c, justify="left" if left else "right", no_wrap=left)
    style = {OK: "green", FAIL: "bold red", SKIPPED: "dim"}
    for r in report.results:
        row = [escape(c) for c in _row(r)]
        row[3] = f"[{style[r.status]}]{r.status}[/]"
        table.add_row(*row)
    console.print(table)
    for r in report.results:
        if r.reason:
            console.print(f"[{style[r.status]}]{r.status}[/] {escape(r.label)}: {escape(r.reason)}",
                          highlight=False)


# ---------------------------------------------------------------------------------------------
# --list
# ---------------------------------------------------------------------------------------------
def list_runners(export_dir: str | os.PathLike, backends: list[str] | None = None) -> list[dict]:
    """Every registered runner against every artifact it accepts, with availability and reason;
    runners with nothing to run in this export appear once, saying so."""
    from alexnet_deploy.runtimes import RUNNERS, runners_for

    manifest = Manifest.read(_export_folder(export_dir))
    choices = runners_for(manifest, backends)
    rows = [{"backend": c.runner, "format": c.artifact.format, "precision": c.artifact.precision,
             "device": RUNNERS[c.runner].device, "artifact": c.artifact.path,
             "available": c.available, "reason": c.reason or ""} for c in choices]
    for name, cls in RUNNERS.items():
        if (backends and name not in backends) or any(c.runner == name for c in choices):
            continue
        rows.append({"backend": name, "format": ", ".join(cls.formats), "precision": "-",
                     "device": cls.device, "artifact": "-", "available": False,
                     "reason": f"no {' / '.join(cls.formats)} artifact in this export"})
    if not backends:
        rows += [{"backend": "-", "format": a.format, "precision": a.precision, "device": a.device,
                  "artifact": a.path, "available": False, "reason": NO_RUNNER}
                 for a in unrunnable(manifest)]
    return rows


def print_list(rows: list[dict], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="runners")
    for c in ("backend", "format", "precision", "device", "artifact", "available", "reason"):
        table.add_column(c)
    for r in rows:
        avail = "[green]yes[/]" if r["available"] else "[red]no[/]"
        table.add_row(*(escape(r[k]) for k in ("backend", "format", "precision", "device", "artifact")),
                      avail, escape(r["reason"]))
    console.print(table)


# ---------------------------------------------------------------------------------------------
# The CLI entry point
# ---------------------------------------------------------------------------------------------
def run_validate(export_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 images: int = 200, batch_sizes: list[int] | None = None,
                 backends: list[str] | None = None, atol: float | None = None,
                 rtol: float | None = None, min_agreement: float | None = None,
                 max_accuracy_drop: float | None = None, report: str | os.PathLike | None = None,
                 fail_fast: bool = False, list_only: bool = False) -> ValidationReport | None:
    """Validate, print the table, write JSON + Markdown; CheckFailed (exit 1) if any check failed."""
    from rich.console import Console

    from alexnet_deploy.report import write_report

    console = Console(width=max(Console().width, 140))
    if list_only:
        print_list(list_runners(export_dir, backends), console)
        return None
    result = validate(export_dir, data_dir=data_dir, images=images, batch_sizes=batch_sizes,
                      backends=backends, atol=atol, rtol=rtol, min_agreement=min_agreement,
                      max_accuracy_drop=max_accuracy_drop, fail_fast=fail_fast,
                      progress=lambda msg: console.print(msg, style="dim", highlight=False, markup=False))
    json_path = Path(report) if report is not None else Path(export_dir) / "validation.json"
    json_path, md_path = write_report(json_path, result.to_dict(), to_markdown(result))
    print_report(result, console)
    console.print(f"report: {json_path} and {md_path}", highlight=False, markup=False)
    if not result.passed:
        raise CheckFailed(f"{result.summary} (report: {json_path})")
    console.print(result.summary, style="green", highlight=False, markup=False)
    return result
