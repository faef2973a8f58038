"""A user's own module: `--model-def FILE.py:NAME | package.module:NAME` and `--model-arg KEY=VALUE`.

This runs the user's code, exactly as `python FILE.py` or `import package.module` would: it is
how their module gets built, and why nothing here imports a definition because a card or a
manifest names it. Each command that needs the model takes `--model-def` again; the card records
the definition (spec, arguments, the file's sha256) so that the user can see what to pass, and
a changed file is reported.

A registered definition is an entry `user:NAME` of `MODELS`, so every stage that builds a model
from a card (export, validate's reference, the torch runners, the roofline's cost) finds it the
way it finds the AlexNets. NAME is called with the `--model-arg` values and nothing else: its
number of classes is whatever its output is (`--model-arg num_classes=4` when it takes one).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_deploy.card import ModelDefinition
from alexnet_deploy.errors import UserError, first_line
from alexnet_deploy.models import MODELS, USER_PREFIX, forget_shapes

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_model_args(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`KEY=VALUE` strings as keyword arguments; VALUE is read as JSON (`4`, `0.5`, `true`,
    `[64, 128]`, `"x"`), and as the plain string when it is not JSON (`act=relu`)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise UserError(f"--model-arg {pair!r}: expected KEY=VALUE with KEY a Python identifier "
                            "(e.g. --model-arg num_classes=4)")
        if key in args:
            raise UserError(f"--model-arg {key} is given twice")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw
    return args


def register_model_def(spec: str, args: dict[str, Any] | None = None) -> str:
    """Import `spec`'s NAME (running the user's code) and register it as `user:NAME`; returns that name."""
    args = dict(args or {})
    factory, sha256 = _load_factory(spec)
    name = USER_PREFIX + spec.rpartition(":")[2]
    definition = ModelDefinition(spec=spec, args=args, sha256=sha256)
    return _register(name, lambda: _call(spec, factory, args), definition, factory)


def register_module(module: nn.Module) -> str:
    """A module object (the Python API's `ad.export(model)`) as `user:ClassName`: it builds copies
    of that object in this process; the card records `package.module:ClassName` as its definition
    when the class can be imported by name."""
    cls = type(module)
    spec = f"{cls.__module__}:{cls.__qualname__}"
    importable = cls.__module__ not in ("__main__", "builtins") and "<locals>" not in cls.__qualname__
    definition = ModelDefinition(spec=spec if importable else f"<object of {cls.__qualname__}>", args={})
    return _register(USER_PREFIX + cls.__name__, lambda: copy.deepcopy(module), definition)


def definition_of(arch: str) -> ModelDefinition | None:
    return getattr(MODELS.get(arch), "model_def", None)


def is_user(arch: str) -> bool:
    return arch.startswith(USER_PREFIX)


def check_definition(arch: str, recorded: ModelDefinition | None, source: str) -> None:
    """The module a card names must be registered (a card never imports code); a definition file
    that changed since the card was written is said, not refused (the tensors are checked anyway)."""
    import logging

    given = definition_of(arch)
    if given is None:
        spec = recorded.spec if recorded is not None else arch.removeprefix(USER_PREFIX)
        argv = " ".join(f"--model-arg {k}={json.dumps(v)}" for k, v in (recorded.args if recorded else {}).items())
        raise UserError(f"{source} holds your own module {spec}, which is not imported unless you ask "
                        f"(it runs code): pass --model-def {spec}{' ' + argv if argv else ''}")
    factory = getattr(MODELS[arch], "factory", None)
    if recorded is not None and recorded.args and not given.args and recorded.spec == given.spec and factory:
        # --model-def without --model-arg: the arguments the card records (JSON data, not code)
        _register(arch, lambda: _call(given.spec, factory, recorded.args),
                  given.model_copy(update={"args": recorded.args}), factory)
    if recorded is not None and recorded.sha256 and given.sha256 and recorded.sha256 != given.sha256:
        logging.getLogger("alexnet_deploy").warning(
            f"{given.spec} has changed since {source} was written (sha256 differs); its tensors still fit")


def output_width(model: nn.Module, crop: int, source: str) -> int:
    """The number of classes of a user's module: the width of its output for one image."""
    try:
        with torch.inference_mode():
            out = model.eval()(torch.zeros(1, 3, crop, crop))
    except Exception as e:  # the user's forward: any failure is theirs to read, in one line
        raise UserError(f"{source}: your module's forward on a 1x3x{crop}x{crop} input raised "
                        f"{type(e).__name__}: {first_line(e)[:200]} (pass the input size it takes: "
                        "--image-size)") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{source}: your module returns {shape} for one image; a classifier returns "
                        "logits of shape [batch, classes]")
    return int(out.shape[1])


# ---------------------------------------------------------------------------------------------
def _register(name: str, make: Callable[[], nn.Module], definition: ModelDefinition,
              factory: Callable[..., Any] | None = None) -> str:
    def build(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
        del num_classes, dropout  # the module's own arguments decide (see the module docstring)
        return make()

    build.model_def, build.factory = definition, factory
    MODELS[name] = build  # a later definition of the same name replaces it (same process, new file)
    forget_shapes()
    return name


def _load_factory(spec: str) -> tuple[Callable[..., Any], str | None]:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UserError(f"--model-def {spec!r}: expected FILE.py:NAME or package.module:NAME")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module, sha256 = _import_file(Path(where), spec), _sha256(Path(where))
    else:
        module, sha256 = _import_module(where, spec), None
    factory = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            found = sorted(n for n, v in vars(module).items()
                           if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v)))
            raise UserError(f"--model-def {spec}: {name} is not defined in {where} "
                            f"(it defines: {', '.join(found[:12]) or 'nothing public'})")
    if not callable(factory):
        raise UserError(f"--model-def {spec}: {name} is a {type(factory).__name__}, not an nn.Module "
                        "class or a function that returns one")
    return factory, sha256


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise UserError(f"--model-def {spec}: {path} is not a file (pass FILE.py:NAME)")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"alexnet_deploy_user_{path.stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserError(f"--model-def {spec}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their classes up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: a SyntaxError or whatever it raises while importing
        sys.modules.pop(module_name, None)
        raise UserError(f"--model-def {spec}: importing {path} raised {type(e).__name__}: "
                        f"{first_line(e)[:200]}") from None
    return module


def _import_module(where: str, spec: str):
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        raise UserError(f"--model-def {spec}: no module named {e.name!r} (is it installed, or on "
                        "PYTHONPATH? a file is given as FILE.py:NAME)") from None
    except Exception as e:
        raise UserError(f"--model-def {spec}: importing {where} raised {type(e).__name__}: "
                        f"{first_line(e)[:200]}") from None


def _call(spec: str, factory: Callable[..., Any], args: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**args)
    except Exception as e:  # the user's constructor
        raise UserError(f"--model-def {spec}: {spec.rpartition(':')[2]}({_shown(args)}) raised "
                        f"{type(e).__name__}: {first_line(e)[:200]}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model-def {spec}: {spec.rpartition(':')[2]}({_shown(args)}) returned a "
                        f"{type(model).__name__}, not a torch.nn.Module")
    return model


def _shown(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _sha256(path: Path) -> str:
    from alexnet_deploy.files import sha256_file

    return sha256_file(path)
