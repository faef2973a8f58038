"""The `alexnet-deploy` command line: each command parses options and calls ONE library function.

Library modules are imported inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
import warnings
from pathlib import Path

import click

from alexnet_deploy.errors import expected_failure, internal_error_line
from alexnet_deploy.tolerances import LIMITS

DEBUG_ENV = "ALEXNET_DEPLOY_DEBUG"
_debug = {"on": os.environ.get(DEBUG_ENV, "") not in ("", "0")}


def _csv(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return [kind(v) for v in items]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None
    return convert


def _format_names(value: str | None, option: str = "--formats") -> list[str] | None:
    """Comma-separated format names; a value with no names (',' or '') is a usage error, not 'all'."""
    if value is None:
        return None
    names = [f.strip() for f in value.split(",") if f.strip()]
    if not names:
        raise click.UsageError(f"{option} {value!r} names no format; pass names such as "
                               "onnx,torchscript or 'all'")
    return names


class _RegistryChoice(click.Choice):
    """A Choice whose names are the keys of a library registry ("module:NAME"), read whenever they
    are needed (parsing or help), so what the library registers is what the CLI accepts."""

    def __init__(self, where: str) -> None:
        self._where = where
        super().__init__([])

    @property
    def choices(self):
        module, attr = self._where.split(":")
        return tuple(getattr(importlib.import_module(module), attr))

    @choices.setter
    def choices(self, _value) -> None:  # click.Choice.__init__ assigns; the registry is the truth
        pass


def _runner_names(ctx, param, value):
    """Comma-separated runner names, each checked against the runner registry (which lists its
    names without importing any backend); an unknown one is one line naming the valid ones."""
    names = _csv(str)(ctx, param, value)
    if names:
        from alexnet_deploy.runtimes import get_runner

        for name in names:
            get_runner(name)  # UserError: unknown backend 'x'; choose from: ...
    return names


class _BackendsOption(click.Option):
    """--backends, whose help lists the registered runner names (read only when help is shown)."""

    def get_help_record(self, ctx):
        from alexnet_deploy.runtimes import RUNNERS

        self.help = "Comma-separated runner names [default: every one that applies]: " + ", ".join(RUNNERS) + "."
        return super().get_help_record(ctx)


def _positive_ints(ctx, param, value):
    values = _csv(int)(ctx, param, value)
    if values is not None and any(v < 1 for v in values):
        raise click.BadParameter(f"every value must be >= 1, got {value}")
    return values


def _model_def_options(f):
    """--model-def / --model-arg: a user's own module, registered (as `user:NAME`) before the
    command runs, so every stage builds it the way it builds a registered architecture."""
    f = click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for --model-def's NAME (repeatable; VALUE read as JSON) "
                          "[default: the ones the card records].")(f)
    # a short metavar: a long one widens the option column and wraps the runner names in --backends
    return click.option("--model-def", default=None, metavar="SPEC",
                        help="Your own nn.Module class or a function returning one, as FILE.py:NAME or "
                             "package.module:NAME. This imports and runs that code.")(f)


def _register_model_def(kwargs: dict, arch_option: str | None = None) -> None:
    """Register --model-def (popping both options from `kwargs`); with `arch_option`, the
    command's --arch becomes the registered name (giving both is a usage error)."""
    spec, args = kwargs.pop("model_def"), kwargs.pop("model_args")
    if spec is None:
        if args:
            raise click.UsageError("--model-arg is an argument of --model-def: pass --model-def too")
        return
    from alexnet_deploy.models.user import parse_model_args, register_model_def

    name = register_model_def(spec, parse_model_args(args))
    if arch_option is not None:
        ctx = click.get_current_context()
        if ctx.get_parameter_source(arch_option) is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--arch and --model-def both name the architecture: pass one")
        kwargs[arch_option] = name


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="alexnet-deploy")
@click.option("--debug", is_flag=True,
              help=f"Show the Python traceback of a failure (also: {DEBUG_ENV}=1).")
def cli(debug: bool) -> None:
    """Train AlexNet, export it to every deployment format, validate and benchmark the artifacts."""
    from alexnet_deploy.console import setup_logging

    if debug:
        _debug["on"] = True
    setup_logging(debug=_debug["on"])


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Data sets: generate the built-in demo data."""


@data.command("demo")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--classes", default=10, show_default=True, type=click.IntRange(2, 12),
              help="Number of shape classes.")
# Defaults are training.DEMO_RECIPE["data"] (not imported here: --help stays instant; a test keeps them equal).
@click.option("--per-class", default=400, show_default=True, type=click.IntRange(1, 100_000),
              help="Training images per class; val/ and test/ get a quarter of it each.")
@click.option("--size", default=72, show_default=True, type=click.IntRange(32, 1024),
              help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def data_demo(out, classes, per_class, size, seed):
    """Write a deterministic ImageFolder (train/ val/ test/) of drawn shapes."""
    from alexnet_deploy.data import make_demo
    from alexnet_deploy.files import check_output_dir

    check_output_dir(out, staged=True)

    path = make_demo(out, classes=classes, per_class=per_class, size=size, seed=seed)
    click.echo(f"demo data written to {path}")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="ImageFolder root holding train/ and val/ (and optionally test/).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--arch", default="alexnet", show_default=True, type=_RegistryChoice("alexnet_deploy.models:MODELS"))
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate [default: per optimizer].")
@click.option("--weight-decay", default=None, type=click.FloatRange(min=0))
@click.option("--optimizer", default="sgd", show_default=True,
              type=_RegistryChoice("alexnet_deploy.training:OPTIMIZER_DEFAULTS"))
@click.option("--warmup-epochs", default=1, show_default=True, type=click.IntRange(min=0))
@click.option("--label-smoothing", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--image-size", default=None, type=click.IntRange(min=63),
              help="Input side in pixels [default: the architecture's own: 224, Inception 299].")
@click.option("--min-crop-scale", default=0.08, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Smallest area fraction RandomResizedCrop keeps (raise it for small objects).")
@click.option("--dropout", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Classifier dropout.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--init", default="kaiming", show_default=True, type=_RegistryChoice("alexnet_deploy.models:INITS"),
              help="Initialisation when training from scratch; 'arch' keeps torchvision's (alexnet) or the "
                   "paper's (alexnet-2012), which leave AlexNet near chance for hundreds of steps.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="bf16 autocast on CUDA and on CPUs with bf16 instructions (AMX / AVX512-BF16).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--weights", default=None, help="Start from these weights (.safetensors, .pth or 'torchvision').")
@click.option("--deterministic", is_flag=True, help="Bitwise-reproducible kernels (slower).")
@_model_def_options
def train(data_dir, out, **kwargs):
    """Train or fine-tune on an ImageFolder; writes OUT/weights.safetensors with the model card."""
    from alexnet_deploy.training import TrainConfig, fit

    _register_model_def(kwargs, "arch")
    cfg = TrainConfig(data=str(data_dir), out=str(out), compile=kwargs.pop("compile_"), **kwargs)
    fit(cfg)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
class _FormatsOption(click.Option):
    """--formats, whose help lists the registered format names; the registry is read only when
    that help is shown (it names the formats without importing any backend)."""

    def get_help_record(self, ctx):
        from alexnet_deploy.exporters import EXPORTERS

        self.help = ("Comma-separated formats, or 'all' (every format this machine can export; the "
                     "rest are listed as skipped in the manifest): " + ", ".join(EXPORTERS) + ".")
        return super().get_help_record(ctx)


@cli.command()
@click.argument("weights")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export folder.")
@click.option("--formats", cls=_FormatsOption, default="all", show_default=True)
@click.option("--max-batch", default=64, show_default=True, type=int,
              help="Largest batch every artifact accepts (dynamic batch 1..N).")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (18 or newer).")
@click.option("--calib-data", default=None, type=click.Path(path_type=Path),
              help="Images for int8 calibration [default: the card's val data, else demo data].")
@click.option("--calib-images", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--weight-compression", is_flag=True,
              help="Also write OpenVINO IRs whose weights NNCF compressed (fewer bytes read at batch 1): "
                   "int8w (int8 weights), int4w (int4 Linears), int4w-a8 (int8 activations, int4 "
                   "Linears). Needs openvino in --formats and nncf.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Device the torch formats (aoti, torchscript, torch-export) are built for.")
# The choices are bench.recommend.TARGETS (not imported here: --help stays instant; a test keeps them equal).
@click.option("--target", default=None, type=click.Choice(["cpu"]),
              help="After the export, run `alexnet-deploy recommend OUT` on it: validate and time every "
                   "runner x artifact here and write the fastest per precision (fp32, bf16, int8, and the weight-compressed ones) to "
                   "OUT/recommendation.json.")
@click.option("--arch", default=None, type=_RegistryChoice("alexnet_deploy.models:MODELS"),
              help="Architecture of a bare state dict [default: detected from its tensor names and "
                   "shapes; a safetensors file's card names its own].")
@click.option("--classes", default=None, type=click.Path(path_type=Path),
              help="Class names for a bare state dict: a text file (one per line) or the ImageFolder "
                   "it was trained on (its sorted class folders) [default: the card's, else class_0..].")
@click.option("--image-size", default=None, type=int,
              help="Input side in pixels of a bare state dict or your own module [default: the card's, "
                   "else the architecture's (224, Inception 299)].")
@_model_def_options
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
def export(weights, out, formats, target, **kwargs):
    """Export WEIGHTS (our .safetensors, a state dict .pth of a registered architecture, or
    'torchvision') to deployment formats.

    Each artifact is loaded back and checked against eager PyTorch before it is listed (a failed
    check exits 1). With --target, this is `export` followed by `recommend OUT`."""
    from alexnet_deploy.exporters import export_all

    _register_model_def(kwargs, "arch")
    export_all(weights, out, formats=_format_names(formats), **kwargs)
    if target is not None:
        from alexnet_deploy.bench.recommend import recommend_export

        recommend_export(out, target=target, show=True)


# ---------------------------------------------------------------------------------------------
# recommend
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Intra-op threads while timing [default: physical cores].")
@click.option("--latency-ms", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Also answer: which candidate, at which batch size, gives the most images/s with "
                   "p99 within this budget (and why each other one lost).")
# The choices are bench.loadgen.SCENARIOS (not imported here: --help stays instant; a test keeps them equal).
@click.option("--scenario", default=None, type=click.Choice(["single-stream", "multi-stream", "server", "offline"]),
              help="Judge the candidates by this MLPerf LoadGen scenario instead (server: the highest "
                   "rate whose p99 stays within --latency-ms); only LoadGen-VALID runs can win.")
@click.option("--max-accuracy-drop", default=None, type=float,  # its range: recommend (one rule, one line)
              help="Only candidates whose top-1 accuracy on the labelled images drops by at most this "
                   "fraction (0.01 = one point) [default: validate's limit per precision].")
@click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
              help="Labelled images for the gate [default: the card's val data when it exists].")
@click.option("--images", default=200, show_default=True, type=click.IntRange(min=0),
              help="Labelled images validate's gate uses.")
@click.option("--report", default=None, type=click.Path(path_type=Path),
              help="JSON path [default: EXPORT_DIR/recommendation.json]; Markdown beside it.")
@click.option("--backends", cls=_BackendsOption, default=None, callback=_runner_names)
def recommend(export_dir, **kwargs):
    """Which runner x artifact of EXPORT_DIR to ship on this machine: every candidate must pass
    validate's gate, those that do are timed, and the fastest per precision (fp32, bf16, int8, ...) is
    written to EXPORT_DIR/recommendation.json (`benchmark` marks them).

    The timing is brief (a choice between runtimes, not a published figure: use `benchmark` for that)."""
    from alexnet_deploy.bench.recommend import recommend_export

    recommend_export(export_dir, show=True, **kwargs)  # it checks the report path before any work


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
              help="Labelled images [default: the card's val data when it exists].")
@click.option("--images", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--batch-sizes", default=None, callback=_positive_ints,
              help="Comma-separated [default: 1, a non-power-of-two, the max batch].")
@click.option("--backends", cls=_BackendsOption, default=None, callback=_runner_names)
@click.option("--atol", default=None, type=click.FloatRange(min=0),
              help="Override the precision's default atol.")
@click.option("--rtol", default=None, type=click.FloatRange(min=0),
              help="Override the precision's default rtol.")
@click.option("--min-agreement", default=None, type=click.FloatRange(0, 1),
              help="Override the minimum top-1 agreement, a fraction (0.995 = 99.5 %).")
@click.option("--max-accuracy-drop", default=None, type=float,  # its range: validate() (one rule, one line)
              help="Override the largest top-1 accuracy drop allowed, a fraction of the images "
                   "(0.01 = one percentage point; default 0.01 for bf16 and int8).")
@click.option("--report", default=None, type=click.Path(path_type=Path),
              help="JSON report path [default: EXPORT_DIR/validation.json]; Markdown beside it.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failing backend.")
@click.option("--list", "list_only", is_flag=True, help="List the runners and whether each can run here.")
@click.option("--layers", is_flag=True,
              help="Also compare every module's output and name the first that diverges (slower).")
@click.option("--layers-if-failed", is_flag=True,
              help="Compare the layers of the artifacts whose logits failed only (what pipeline does).")
@_model_def_options
def validate(export_dir, **kwargs):
    """Check every artifact in EXPORT_DIR against the PyTorch reference. Exit 0 pass, 1 fail, 2 usage."""
    from alexnet_deploy.validate import run_validate

    _register_model_def(kwargs)
    if not kwargs["list_only"]:
        _check_report_paths(export_dir, kwargs["report"], "validation")
    if kwargs.pop("layers_if_failed") and not kwargs["layers"]:
        kwargs["layers"] = "failed"
    run_validate(export_dir, **kwargs)


@cli.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--inputs", required=True, type=click.Path(path_type=Path),
              help="The float32 N x C x H x W batch the outputs were computed from (.npy).")
@click.option("--outputs", required=True, type=click.Path(path_type=Path),
              help="Their logits, N x classes (.npy): a C++ program's --dump-logits, a Triton response, "
                   "another machine's run.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(list(LIMITS["validate"])),
              help="Whose limits apply: the precision the outputs were computed in.")
@click.option("--label", default=None, help="Name of what produced them [default: the outputs file name].")
@click.option("--atol", default=None, type=click.FloatRange(min=0), help="Override the precision's default atol.")
@click.option("--rtol", default=None, type=click.FloatRange(min=0), help="Override the precision's default rtol.")
@click.option("--min-agreement", default=None, type=click.FloatRange(0, 1),
              help="Override the minimum top-1 agreement, a fraction (0.995 = 99.5 %).")
@click.option("--report", default=None, type=click.Path(path_type=Path),
              help="JSON report path (Markdown beside it) [default: none written].")
@_model_def_options
def compare(export_dir, **kwargs):
    """Judge logits computed elsewhere against EXPORT_DIR's PyTorch reference, by validate's rules.
    Exit 0 pass, 1 fail, 2 usage."""
    from alexnet_deploy.validate.outside import run_compare

    _register_model_def(kwargs)
    if kwargs["report"] is not None:
        _check_report_paths(export_dir, kwargs["report"], "comparison")
    run_compare(export_dir, **kwargs)


def _check_report_paths(export_dir: Path, report: Path | None, default: str,
                        plot: Path | None = None) -> None:
    """Reports are written after minutes of work: check they can be written before it starts.
    The default report goes inside the export folder, which may be read-only (a shared mount)."""
    from alexnet_deploy.files import check_output_file

    if report is None and not export_dir.is_dir():
        return  # the command itself says the export folder is missing
    json_path = report if report is not None else export_dir / f"{default}.json"
    hint = ("pass --report elsewhere" if report is None else "choose another --report")
    check_output_file(json_path, "--report" if report is not None else "report", hint=hint)
    check_output_file(json_path.with_suffix(".md"), "--report" if report is not None else "report", hint=hint)
    if plot is not None:
        check_output_file(plot, "--plot")


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--backends", cls=_BackendsOption, default=None, callback=_runner_names)
@click.option("--batch-sizes", default="1,8,32,64", show_default=True, callback=_positive_ints)
@click.option("--warmup-s", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--duration-s", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Cap on timed seconds per runner and batch size.")
@click.option("--min-duration-s", default=None, type=click.FloatRange(min=0),
              help="Time each runner and batch size at least this long [default: 1 s, or --duration-s "
                   "when shorter].")
@click.option("--min-calls", default=10, show_default=True, type=click.IntRange(min=1),
              help="Time at least this many calls, even past --duration-s.")
@click.option("--images", default=None, type=click.Path(path_type=Path),
              help="Also time each runner from these image files to logits, one per call: decode, "
                   "preprocessing and inference apart.")
@click.option("--scenario", "scenarios", multiple=True,
              type=click.Choice(["single-stream", "multi-stream", "server", "offline"]),
              help="Also run this MLPerf LoadGen scenario on each runner (repeatable): single-stream p90, "
                   "multi-stream p99 of 8-sample queries, server: highest rate with p99 <= --latency-ms, "
                   "offline samples/s.")
@click.option("--latency-ms", default=None, type=click.FloatRange(min=0, min_open=True),
              help="The server scenario's p99 latency budget.")
@click.option("--concurrency", default="1", show_default=True, callback=_positive_ints,
              help="Requests kept in flight, comma-separated (e.g. 1,2,4): each through the runtime's own "
                   "asynchronous machinery, with wall-clock throughput; 1 always runs.")
@click.option("--streams", default=None, type=click.IntRange(min=1),
              help="OpenVINO's own streams serving the requests in flight (its NUM_STREAMS) [default: what "
                   "its THROUGHPUT hint chooses; the number used is reported either way].")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Intra-op threads [default: physical cores].")
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda"]),
              help="Only runners on this device.")
@click.option("--report", default=None, type=click.Path(path_type=Path),
              help="JSON report [default: EXPORT_DIR/benchmark.json]; Markdown beside it.")
@click.option("--plot", default=None, type=click.Path(path_type=Path),
              help="PNG plot [default: beside the report].")
@_model_def_options
def benchmark(export_dir, **kwargs):
    """Latency percentiles, throughput, memory and roofline efficiency per backend and batch size.

    Exits 1 when a result beats its roofline floor (efficiency above 1.05: the report's self-check
    fails, the floor is wrong); the report is written first."""
    from alexnet_deploy.bench import run_benchmark

    _register_model_def(kwargs)
    _check_report_paths(export_dir, kwargs["report"], "benchmark", plot=kwargs["plot"])
    run_benchmark(export_dir, **kwargs)


# ---------------------------------------------------------------------------------------------
# pipeline, predict, preprocess, info
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
              help="ImageFolder root [default: generate the demo data].")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=None, type=click.IntRange(min=1))
@click.option("--formats", default=None, help="Comma-separated export formats [default: all].")
@click.option("--quick", is_flag=True, help="Tiny sizes everywhere: a smoke run in about a minute.")
@click.option("--arch", default=None, type=_RegistryChoice("alexnet_deploy.models:MODELS"),
              help="Architecture to train [default: the demo recipe's, alexnet].")
def pipeline(data_dir, out, epochs, formats, quick, arch):
    """data -> train -> export -> validate -> benchmark, resumable, with OUT/report.md."""
    from alexnet_deploy.pipeline import run_pipeline

    run_pipeline(out, data=data_dir, epochs=epochs, formats=_format_names(formats), quick=quick, arch=arch)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--backend", default=None, help="Runner to use [default: the first that can run it].")
@_model_def_options
def predict(artifact, images, top, backend, **kwargs):
    """Classify IMAGES with an artifact, an export folder, or weights."""
    from alexnet_deploy.predict import run_predict

    _register_model_def(kwargs)
    run_predict(artifact, list(images), top=top, backend=backend)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--card", required=True, type=click.Path(path_type=Path),
              help="An export folder or a weights file whose card gives the preprocessing.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output .npy file.")
def preprocess(images, card, out):
    """Write IMAGES as one float32 NCHW .npy batch with the card's preprocessing (for C++ programs)."""
    from alexnet_deploy.files import check_output_file
    from alexnet_deploy.preprocessing import run_preprocess

    check_output_file(out)
    run_preprocess(list(images), card, out)


@cli.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the server listens on.")
@click.option("--tritonserver", default=None, type=click.Path(path_type=Path),
              help="Your tritonserver binary [default: on PATH, else the nvidia-pytriton wheel's].")
def serve(export_dir, http_port, grpc_port, metrics_port, host, tritonserver):
    """Serve EXPORT_DIR's Triton repository with a real Triton server until Ctrl-C."""
    from alexnet_deploy.serve import run_serve

    run_serve(export_dir, http_port, grpc_port, metrics_port, host, tritonserver)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@_model_def_options
def info(path, as_json, **kwargs):
    """Describe weights, an artifact, or an export folder."""
    from alexnet_deploy.info import run_info

    _register_model_def(kwargs)
    run_info(path, as_json=as_json)


def main() -> None:
    """The one error boundary: every failure reaches the user as one line and an exit code
    (2 usage or input, 1 failed check or runtime failure, 130 interrupted); a traceback only
    with --debug or ALEXNET_DEPLOY_DEBUG=1."""
    # Upstream deprecation chatter (TorchScript, onnxscript) is not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the boundary: nothing escapes as a bare traceback
        sys.exit(_report(e))


def _report(e: Exception) -> int:
    if _debug["on"]:
        traceback.print_exception(e)
    known = expected_failure(e)
    line, code = known if known is not None else (internal_error_line(e), 1)
    click.echo(f"error: {line}", err=True)
    return code


if __name__ == "__main__":
    main()
