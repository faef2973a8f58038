"""A Python-backend model that runs one exported file with alexnet-deploy's runner for it (the
`runner` and `file` parameters of its config): the same code `validate` checks, served on CPU
where Triton's own onnxruntime / openvino backends are not installed."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from alexnet_deploy.backends.triton.python_models.common import (
    model_folder,
    parameters,
    read_card,
    run_batched,
)


class TritonPythonModel:
    def initialize(self, args):
        from alexnet_deploy.manifest import BatchRange
        from alexnet_deploy.runtimes import get_runner

        params = parameters(args)
        folder = model_folder(args) / args["model_version"]
        card = read_card(args)
        runner = get_runner(params["runner"])
        threads = int(params["threads"]) if params.get("threads") else None
        self.runner = runner(folder / params["file"], card, BatchRange(1, int(params["max_batch"])),
                             threads=threads, precision=params["precision"]).activate()
        self.input, self.output = params["input"], params["output"]

    def execute(self, requests):
        def read(request):
            return pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()

        def compute(batch):
            return [self.runner.infer(batch)]

        return run_batched(pb_utils, requests, read, compute, [self.output])

    def finalize(self):
        self.runner.deactivate()
