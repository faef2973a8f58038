"""What the Python-backend models share: the model directory's card and parameters, and running
a batch of requests as one call with one error response per failed request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CARD = "card.json"


def model_folder(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"])


def parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def read_card(args: dict[str, Any]):
    from alexnet_deploy.card import ModelCard

    path = model_folder(args) / CARD
    return ModelCard.from_json(path.read_text(encoding="utf-8"), what=str(path))


def run_batched(pb_utils: Any, requests: list, read: Callable[[Any], np.ndarray],
                compute: Callable[[np.ndarray], list[np.ndarray]], names: list[str]) -> list:
    """Triton hands a dynamic batch as several requests: their inputs run as one batch, each gets its
    rows back; a request whose input is wrong gets an error response and the others still run."""
    from alexnet_deploy.errors import UserError

    inputs, responses = {}, [None] * len(requests)
    for i, request in enumerate(requests):
        try:
            inputs[i] = read(request)
        except UserError as e:
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
    if inputs:
        sizes = [len(x) for x in inputs.values()]
        try:
            outputs = compute(np.concatenate(list(inputs.values())))
        except UserError as e:
            error = pb_utils.TritonError(str(e))
            return [r or pb_utils.InferenceResponse(error=error) for r in responses]
        starts = np.cumsum([0, *sizes])
        for (i, _), a, b in zip(inputs.items(), starts[:-1], starts[1:], strict=False):
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o[a:b])) for n, o in zip(names, outputs, strict=False)]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
    return responses
