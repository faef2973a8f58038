"""Runners: one class per backend behind one interface, registered by name.

Importing this package registers every runner; heavy runtimes (onnxruntime, openvino, tensorrt)
are imported only inside `activate`, so listing runners costs nothing.
"""

from alexnet_deploy.runtimes import backends  # noqa: F401,E402  (registers the runners)
from alexnet_deploy.runtimes.base import (  # noqa: F401
    RUNNERS,
    Runner,
    RunnerChoice,
    get_runner,
    register_runner,
    runners_for,
)
