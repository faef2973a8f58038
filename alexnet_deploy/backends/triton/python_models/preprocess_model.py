"""The ensemble's first step: encoded image bytes -> the card's float32 NCHW input, through the
same decode and transform as `alexnet-deploy preprocess` and `predict`."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from alexnet_deploy.backends.triton.python_models.common import parameters, read_card, run_batched


class TritonPythonModel:
    def initialize(self, args):
        self.card = read_card(args)
        params = parameters(args)
        self.input, self.output = params["input"], params["output"]

    def execute(self, requests):
        from alexnet_deploy.data import preprocess_bytes

        def read(request):
            blobs = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().reshape(-1)
            return preprocess_bytes([bytes(b) for b in blobs], self.card)

        return run_batched(pb_utils, requests, read, lambda x: [x], [self.output])
