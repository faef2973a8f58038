"""PyTorch: TorchScript, torch.export and AOTInductor exports, and the torch runners (eager is the reference)."""
