"""The ensemble's last step: logits -> the top-K class indices, labels and softmax scores."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from alexnet_deploy.backends.triton.python_models.common import parameters, read_card, run_batched


class TritonPythonModel:
    def initialize(self, args):
        self.classes = np.array(read_card(args).classes, dtype=object)
        params = parameters(args)
        self.input, self.k = params["input"], int(params["top_k"])

    def execute(self, requests):
        def read(request):
            return pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().astype(np.float32)

        def compute(logits):
            top = np.argsort(-logits, axis=1, kind="stable")[:, :self.k]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            labels = np.vectorize(lambda c: c.encode("utf-8"), otypes=[object])(self.classes[top])
            return [top.astype(np.int64), labels, np.take_along_axis(probs, top, axis=1).astype(np.float32)]

        return run_batched(pb_utils, requests, read, compute, ["top_classes", "top_labels", "top_scores"])
