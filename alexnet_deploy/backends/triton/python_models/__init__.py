"""Triton Python-backend models (each file is copied into a model directory as 1/model.py).

They run inside Triton's Python stub, in the environment `alexnet-deploy serve` starts the server
with, and call this package's own code: the runners validate uses, the card's preprocessing."""
