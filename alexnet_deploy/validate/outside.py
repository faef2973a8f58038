"""Outputs from anywhere: judge logits that another program computed (the C++ programs'
`--dump-logits`, a Triton response, a run on another machine) by validate's rules.

Given the inputs they were computed from and the outputs, both `.npy`, the export's torch eager
fp32 reference runs on the inputs and `compare.judge` decides within the precision's row of the
limits table: the same figures, the same report and the same exit codes as validate.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from alexnet_deploy.card import printable
from alexnet_deploy.checks import CheckResult, output_problem, resolve_limits
from alexnet_deploy.compare import judge
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.tolerances import LIMITS
from alexnet_deploy.validate.results import ValidationReport, ValidationResult
from alexnet_deploy.validate.run import _export_folder, check_input_size, reference_logits

PRECISIONS = tuple(LIMITS["validate"])


def load_array(path: str | os.PathLike, option: str) -> np.ndarray:
    """A floating-point .npy array, memory-mapped (its shape is checked before it is read), never
    unpickled; every way it can be wrong is one UserError naming the option and the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file (give a .npy array)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # a pickle, a truncated or foreign file: refuse it, never run it
        raise UserError(f"{option} {path} is not a readable .npy array ({e.__class__.__name__}); "
                        "write it with numpy.save") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{option} {path} holds {getattr(array, 'dtype', 'no array')}, not floating-point values")
    return array


def _checked_inputs(manifest: Manifest, path: str | os.PathLike) -> np.ndarray:
    x = load_array(path, "--inputs")
    shape = tuple(manifest.card.input.shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape or len(x) == 0:
        raise UserError(f"--inputs {path} has shape {tuple(x.shape)}; the model takes (N, {', '.join(map(str, shape))}) "
                        "with N >= 1 (the batch the outputs were computed from)")
    check_input_size(manifest, len(x))
    x = np.array(x, dtype=np.float32, order="C")  # a copy: the memory map stays read-only
    if not np.isfinite(x).all():
        raise UserError(f"--inputs {path} holds NaN or Inf: no reference can be computed for it")
    return x


def _checked_outputs(manifest: Manifest, path: str | os.PathLike, rows: int) -> np.ndarray:
    y = load_array(path, "--outputs")
    expected = (rows, manifest.card.num_classes)
    if tuple(y.shape) != expected:
        raise UserError(f"--outputs {path} has shape {tuple(y.shape)}; expected {expected} (one row of "
                        f"{manifest.card.num_classes} logits per input)")
    return np.array(y, dtype=np.float32, order="C")


def compare_outputs(export_dir: str | os.PathLike, inputs: str | os.PathLike, outputs: str | os.PathLike,
                    precision: str = "fp32", label: str | None = None, atol: float | None = None,
                    rtol: float | None = None, min_agreement: float | None = None) -> ValidationReport:
    """Judge `outputs` (N x classes) computed elsewhere from `inputs` (N x C x H x W) against torch
    eager fp32 on the export's weights, within `precision`'s validate limits (with overrides)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    manifest = Manifest.read(_export_folder(export_dir))
    x = _checked_inputs(manifest, inputs)
    y = _checked_outputs(manifest, outputs, len(x))
    limits = resolve_limits(precision, {"atol": atol, "rtol": rtol, "min_top1_agreement": min_agreement})
    name = label or Path(outputs).name
    result = ValidationResult(backend=name, format="outputs", precision=precision, device="elsewhere",
                              artifact=str(outputs), limits=asdict(limits), batch_sizes=[len(x)],
                              random_inputs=len(x))
    reference = reference_logits(manifest, x)
    check = CheckResult(name, limits, samples=len(x))
    problem = output_problem(y, reference)
    if problem:
        check.fail(problem)
    else:
        check.verdict = judge(y, reference, limits)
        check.failures = list(check.verdict.failures)
    result.take(check)
    weights = manifest.weights_artifact()
    report = ValidationReport(
        passed=result.passed, export_dir=str(manifest.root), data=None, images=0, random_inputs=len(x), seed=0,
        reference={"backend": "torch eager fp32", "weights": weights.path, "sha256": weights.sha256,
                   "inputs": str(inputs)},
        results=[result])
    verdict = "PASSED" if result.passed else "FAILED"
    report.summary = (f"{verdict}: {printable(name)} against torch eager fp32 on the {len(x)} inputs of "
                      f"{printable(str(inputs))}, {precision} limits" + ("" if result.passed else f": {result.reason}"))
    return report


def run_compare(export_dir: str | os.PathLike, inputs: str | os.PathLike, outputs: str | os.PathLike,
                precision: str = "fp32", label: str | None = None, atol: float | None = None,
                rtol: float | None = None, min_agreement: float | None = None,
                report: str | os.PathLike | None = None) -> ValidationReport:
    """The CLI's compare: print the table, write the JSON + Markdown report when asked; CheckFailed
    (exit 1) when the outputs fail."""
    from alexnet_deploy.console import make_console
    from alexnet_deploy.report import write_report
    from alexnet_deploy.validate.render import print_report, to_markdown

    console = make_console(min_width=140)
    result = compare_outputs(export_dir, inputs, outputs, precision, label, atol, rtol, min_agreement)
    print_report(result, console)
    if report is not None:
        json_path, md_path = write_report(report, result.to_dict(), to_markdown(result))
        console.print(f"report: {json_path} and {md_path}", highlight=False, markup=False)
    if not result.passed:
        raise CheckFailed(result.summary)
    console.print(result.summary, style="green", highlight=False, markup=False)
    return result
