"""The pipeline: ordered, resumable steps keyed on their settings (steps.py) and the report (report.py)."""

from alexnet_deploy.pipeline.steps import STEPS, Settings, Status, run_pipeline

__all__ = ["STEPS", "Settings", "Status", "run_pipeline"]
