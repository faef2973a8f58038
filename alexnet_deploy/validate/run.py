"""validate's running: which (runner, artifact) pairs, on which inputs, against which reference;
each pair goes through the one comparison path (checks.check_artifact)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from alexnet_deploy.card import printable
from alexnet_deploy.checks import check_artifact, reference_model, resolve_limits
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.tolerances import Limits
from alexnet_deploy.validate.precision import Signatures, measure_precision
from alexnet_deploy.validate.render import (
    print_list,
    print_report,
    summarise,
    to_markdown,
    write_layer_plot,
)
from alexnet_deploy.validate.results import FAIL, SKIPPED, Inputs, ValidationReport, ValidationResult

log = logging.getLogger(__name__)

RANDOM_INPUTS = 8  # seeded N(0, 1) tensors added to the real images (at least)
NON_POWER_OF_TWO = 3  # a batch size that catches kernels specialised for powers of two
DEFAULT_MAX_BATCH = 64  # the biggest batch fed by default, whatever the artifact's range allows
MAX_INPUT_BYTES = 2 << 30  # the shared input batch is refused beyond this, before it is allocated
REFERENCE_CHUNK = 64
NO_RUNNER = "no registered runner accepts this format"
SIGNATURE_ROWS = 16  # inputs whose error signature tells the precision computed in


def validate(export_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             images: int = 200, batch_sizes: list[int] | None = None,
             backends: list[str] | None = None, atol: float | None = None, rtol: float | None = None,
             min_agreement: float | None = None, max_accuracy_drop: float | None = None,
             fail_fast: bool = False, random_inputs: int = RANDOM_INPUTS, seed: int = 0,
             layers: bool | str = False) -> ValidationReport:
    """Validate every artifact of `export_dir` (or the `backends` named) against torch eager.
    `min_agreement` and `max_accuracy_drop` are fractions (0.01 = one percentage point).
    `layers`: True compares every artifact module by module (validate/layers.py); "failed" only
    those whose logits failed."""
    from alexnet_deploy.machine import library_versions

    if max_accuracy_drop is not None and not 0 <= max_accuracy_drop < 1:
        raise UserError(f"--max-accuracy-drop takes a fraction: 0.01 is one percentage point "
                        f"(got {max_accuracy_drop:g})")
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
    weights = manifest.weights_artifact()
    log.info(f"reference: torch eager fp32 on {weights.path}, "
        f"{inputs.real} images + {len(inputs.batch) - inputs.real} random inputs")
    reference = reference_logits(manifest, inputs.batch)
    signatures = Signatures(reference_model(manifest), inputs.batch[:SIGNATURE_ROWS])

    results: list[ValidationResult] = []
    stop: str | None = None
    for choice in choices:
        result = _blank(choice.runner, choice.artifact, inputs)
        result.limits = asdict(resolve_limits(choice.artifact.precision, overrides))
        if not choice.available:
            result.reason = choice.reason
        elif stop:
            result.reason = stop
        else:
            log.info(f"validating {result.label}")
            result.batch_sizes = sizes[id(choice)]
            decide = slice(0, inputs.real) if inputs.real else None
            check = check_artifact(manifest, choice.artifact, choice.runner_cls, inputs.batch,
                                   reference, Limits(**result.limits), batch_sizes=result.batch_sizes,
                                   decide=decide, labels=inputs.labels if inputs.real else None)
            result.take(check)
            if check.outputs is not None:
                verify_precision(result, check.outputs[:SIGNATURE_ROWS], signatures)
            if layers is True or (layers == "failed" and result.status == FAIL):
                add_layers(result, manifest, choice, inputs.batch)
            if result.status == FAIL and fail_fast:
                stop = f"not run: --fail-fast stopped after {result.backend} [{result.precision}] failed"
        results.append(result)

    if not backends:
        results += [_blank(None, a, inputs, reason=NO_RUNNER) for a in unrunnable(manifest)]
    checked = [r for r in results if r.status != SKIPPED]
    passed = bool(checked) and all(r.passed for r in checked)
    report = ValidationReport(
        passed=passed, export_dir=str(manifest.root), data=inputs.source, images=inputs.real,
        random_inputs=len(inputs.batch) - inputs.real, seed=seed,
        reference={"backend": "torch eager fp32", "weights": weights.path, "sha256": weights.sha256},
        results=results, versions=library_versions(), labels_by_position=inputs.by_position)
    report.summary = summarise(report)
    return report


def verify_precision(result: ValidationResult, outputs: np.ndarray, signatures: Signatures) -> None:
    """computes_in from the error signature; an fp32 label that computed in less fails."""
    measured = measure_precision(result.precision, outputs, signatures)
    result.computes_in, result.precision_errors = measured.computes_in, measured.errors
    result.precision_note = measured.note
    if measured.failure:
        result.add_failure(measured.failure)


def add_layers(result: ValidationResult, manifest: Manifest, choice, batch: np.ndarray) -> None:
    """Module-by-module figures on `result`; a runner that cannot read its layers says why in
    layers_note, and a failure to compare them is a note too: the verdict stays with the logits."""
    from alexnet_deploy.errors import exception_line
    from alexnet_deploy.validate.layers import compare_layers

    if not choice.runner_cls.layer_taps:
        result.layers_note = f"layers not compared: {choice.runner_cls.no_layers_reason}"
        return
    log.info(f"comparing the layers of {result.label}")
    try:
        lim = result.limits
        found = compare_layers(manifest, choice.artifact, choice.runner_cls, batch, lim.get("max_layer_rel_l2"),
                               cap=lim.get("max_layer_rel_l2_cap"), floor=lim.get("max_layer_rel_l2_floor"))
    except Exception as e:  # any runtime's failure to build or run the tapped model
        result.layers_note = f"layers not compared: {exception_line(e)}"
        return
    result.layers = [asdict(layer) for layer in found.layers]
    result.first_divergence = found.first_divergence
    result.layers_note = (f"{found.rows} inputs, {len(found.layers)} modules in {found.slices} slice(s), "
                          f"largest slice {found.recorded_mb:.1f} MB recorded")
    if found.remeasured:
        result.layers_note += (f"; {len(found.remeasured)} module(s) that failed beside other marked "
                               f"tensors measured again alone ({', '.join(found.remeasured)})")
    if choice.runner_cls.layers_caveat:  # the figures are of a twin, not of the artifact itself
        result.layers_note += f"; {choice.runner_cls.layers_caveat}"


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
    lo, top = artifact.batch.min, artifact.batch.max
    hi = max(min(top, max(cap, 1), DEFAULT_MAX_BATCH), lo)
    if requested:
        sizes = [b for b in requested if lo <= b <= top]
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
    by_position = None
    if source is not None and images > 0:
        labelled = load_labelled(source, card, limit=images, seed=seed)
        real, labels, by_position = labelled.images, labelled.labels, labelled.by_position
    n_random = max(random_inputs, needed - len(real))
    noise = np.random.default_rng(seed).standard_normal((n_random, *shape), dtype=np.float32)
    return Inputs(np.concatenate([real, noise]), labels, len(real),
                  str(source) if len(real) else None, by_position)


def reference_logits(manifest: Manifest, batch: np.ndarray) -> np.ndarray:
    """torch eager fp32 on the export's own weights (integrity-checked, see checks.reference_model),
    checked to be finite and as wide as the card's class list."""
    import torch

    model = reference_model(manifest)
    weights = manifest.weights_artifact()
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


# ---------------------------------------------------------------------------------------------
# The CLI entry point
# ---------------------------------------------------------------------------------------------
def run_validate(export_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 images: int = 200, batch_sizes: list[int] | None = None,
                 backends: list[str] | None = None, atol: float | None = None,
                 rtol: float | None = None, min_agreement: float | None = None,
                 max_accuracy_drop: float | None = None, report: str | os.PathLike | None = None,
                 fail_fast: bool = False, list_only: bool = False,
                 layers: bool | str = False) -> ValidationReport | None:
    """Validate, print the table, write JSON + Markdown; CheckFailed (exit 1) if any check failed."""
    from alexnet_deploy.console import make_console
    from alexnet_deploy.report import write_report

    console = make_console(min_width=140)
    if list_only:
        print_list(list_runners(export_dir, backends), console)
        return None
    result = validate(export_dir, data_dir=data_dir, images=images, batch_sizes=batch_sizes,
                      backends=backends, atol=atol, rtol=rtol, min_agreement=min_agreement,
                      max_accuracy_drop=max_accuracy_drop, fail_fast=fail_fast, layers=layers)
    json_path = Path(report) if report is not None else Path(export_dir) / "validation.json"
    picture = write_layer_plot(result, json_path.with_suffix(".png"))
    json_path, md_path = write_report(json_path, result.to_dict(), to_markdown(result, picture))
    print_report(result, console)
    console.print(f"report: {json_path} and {md_path}", highlight=False, markup=False)
    if not result.passed:
        raise CheckFailed(f"{result.summary} (report: {json_path})")
    console.print(result.summary, style="green", highlight=False, markup=False)
    return result
