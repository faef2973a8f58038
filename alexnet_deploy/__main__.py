"""`python -m alexnet_deploy ...` runs the CLI (what torchrun launches)."""

from alexnet_deploy.cli import main

main()
