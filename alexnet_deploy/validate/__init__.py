"""`alexnet-deploy validate`: does every artifact answer as the trained model does?

For each (runner, artifact) pair the registry offers, on one shared set of inputs (real images
with the card's preprocessing, then seeded random tensors), fed in a cycle of batch sizes:
  1. integrity first: the artifact's sha256 must match the manifest, else it is not loaded;
  2. run it, and compare its logits with torch-eager fp32 on the same weights and inputs
     (the one comparison path, checks.py; limits per precision in tolerances.py);
  3. record a serialisable result with every figure, OK / FAIL / SKIPPED and why.

    results.py  the result and report dataclasses (fractions throughout)
    run.py      choosing the pairs, the inputs, the reference; `validate()` and `run_validate()`
    render.py   the summary line, Markdown, rich tables (percentages made here)

`validate()` is the library entry point (pipeline and notebooks); `run_validate()` is the CLI's.
"""

import sys
import types

from alexnet_deploy.checks import split_batches
from alexnet_deploy.validate.render import print_list, print_report, summarise, to_markdown
from alexnet_deploy.validate.results import FAIL, OK, SKIPPED, Inputs, ValidationReport, ValidationResult
from alexnet_deploy.validate.run import (
    batch_sizes_for,
    check_input_size,
    list_runners,
    make_inputs,
    reference_logits,
    run_validate,
    select_choices,
    validate,
)

__all__ = ["FAIL", "OK", "SKIPPED", "Inputs", "ValidationReport", "ValidationResult", "batch_sizes_for",
           "check_input_size", "list_runners", "make_inputs", "print_list", "print_report",
           "reference_logits", "run_validate", "select_choices", "split_batches", "summarise",
           "to_markdown", "validate"]


class _CallablePackage(types.ModuleType):
    """`ad.validate(dir, data=...)` calls alexnet_deploy.api.validate. Why: importing this package
    sets the attribute `alexnet_deploy.validate` to the package, whatever it held before, so the
    API function of that name can only be the package itself."""

    def __call__(self, *args, **kwargs):
        from alexnet_deploy.api import validate as api_validate

        return api_validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
