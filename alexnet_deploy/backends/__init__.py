"""One package per toolchain: what it exports (export.py), what it runs (runner.py) and what both
share (util.py). A backend imports only its own modules and the shared contract (manifest, card,
the Exporter and Runner interfaces); the registries in exporters.py and runtimes.py list them in order."""
