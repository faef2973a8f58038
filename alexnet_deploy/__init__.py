"""alexnet-deploy: train AlexNet, export it everywhere, prove every artifact, measure them all."""

__version__ = "0.1.0"
