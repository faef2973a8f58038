"""The architectures: AlexNet (torchvision-compatible), the 2012 paper variant, the tutorial
variant, torchvision's classifiers by name and a user's own module (models.user); weights I/O and
which architecture a bare state dict is.

The registry below is the single source of architecture names: the CLI's choices, export,
validate and the tests' parametrisation all read `MODELS`.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from alexnet_deploy.card import IMAGENET_MEAN, IMAGENET_STD, InputSpec, ModelCard  # noqa: F401 (re-exported)
from alexnet_deploy.errors import UserError, first_line

TORCHVISION_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"

# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
MODELS: dict[str, Callable[..., nn.Module]] = {}
USER_PREFIX = "user:"  # a user's own module, registered at run time by models.user


def register_model(name: str):
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return wrap


def build_model(arch: str, num_classes: int = 1000, dropout: float = 0.5, init: str = "arch") -> nn.Module:
    if arch.startswith(USER_PREFIX) and arch not in MODELS:
        from alexnet_deploy.models.user import check_definition

        check_definition(arch, None, f"architecture {arch}")
    if arch not in MODELS:
        raise UserError(f"unknown architecture {arch!r}; choose one of: {', '.join(MODELS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    model = MODELS[arch](num_classes=num_classes, dropout=dropout)
    if INITS[init] is not None:
        INITS[init](model)
    return model


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def _classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    # Indices match torchvision (classifier.1/.4/.6 are the Linears) so state dicts interchange.
    return nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(in_features, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )


class AlexNet(nn.Module):
    """torchvision's AlexNet ("one weird trick" widths 64-192-384-256-256), same module names."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(256 * 6 * 6, num_classes, dropout)
        self._init_torchvision()

    def _init_torchvision(self) -> None:
        # torchvision's AlexNet keeps PyTorch's default layer initialisation; re-running
        # reset_parameters makes that explicit and independent of construction order.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        return torch.flatten(x, 1)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class AlexNet2012(AlexNet):
    """The network of Krizhevsky et al. (2012) on one device: widths 96-256-384-384-256 and
    Local Response Normalization after the first two convolution blocks."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        nn.Module.__init__(self)
        lrn = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(256 * 6 * 6, num_classes, dropout)
        self._init_paper()

    def _init_paper(self) -> None:
        # Paper, section 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden
        # fully-connected layers (gives ReLUs positive inputs early), 0 elsewhere.
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        ones = {id(convs[1]), id(convs[3]), id(convs[4]), id(linears[0]), id(linears[1])}
        for m in convs + linears:
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.constant_(m.bias, 1.0 if id(m) in ones else 0.0)


class AlexNet384(nn.Module):
    """The AlexNet of the most-copied PyTorch tutorials: widths 64-192-384-384-256 (the fourth
    convolution keeps 384 channels) and no adaptive pooling (`x.view(x.size(0), 256 * 6 * 6)`), so
    its input is fixed at 224 px. Module names as torchvision's: `features.8` is the 384->384
    convolution, `classifier.6` the head, so such a state dict loads strictly."""

    fixed_input_size = 224

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = _classifier(256 * 6 * 6, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_input_size(arch: str, size: int) -> None:
    """Architectures without adaptive pooling take one input size only: say so before a shape
    error deep inside the first Linear does."""
    fixed = getattr(MODELS.get(arch), "fixed_input_size", None)
    if fixed is not None and size != fixed:
        raise UserError(f"{arch} takes {fixed} px inputs only (it has no adaptive pooling), got {size} px: "
                        f"pass --image-size {fixed}")
    if is_torchvision(arch) and (why := _refuses_size(arch, size)) is not None:
        raise UserError(f"{arch} does not take {size} px inputs ({why}): pass --image-size "
                        f"{default_input(arch).crop}, its own")


@functools.lru_cache(maxsize=256)
def _refuses_size(arch: str, size: int) -> str | None:
    """Why `arch` cannot run one `size` px image (ViT's fixed patch grid, MaxViT's window
    multiples, too small for the strides), found by running it on the meta device: no memory, no
    compute; None when it runs."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MODELS[arch](num_classes=2).eval()(torch.empty(1, 3, size, size))
    except NotImplementedError:
        return None  # an operator without a meta kernel: the export's own checks will tell
    except Exception as e:  # noqa: BLE001 - the architecture's own complaint, shown in one line
        return first_line(e)[:160]
    return None


# ---------------------------------------------------------------------------------------------
# Initialisations for training from scratch (`train --init`)
# ---------------------------------------------------------------------------------------------
def kaiming_init(model: nn.Module) -> None:
    """He et al. (2015) for every ReLU layer, a small normal output layer, zero biases.

    Why: PyTorch's default layer init (what torchvision's AlexNet keeps) scales each ReLU layer's
    output variance by about 1/6, so after eight layers the logits barely depend on the input and
    training sits at chance for hundreds of steps; He init keeps the variance through the stack.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers[:-1]:
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:  # ResNets' convolutions have none (batch norm follows)
            nn.init.zeros_(m.bias)
    nn.init.normal_(layers[-1].weight, std=0.01)
    if layers[-1].bias is not None:
        nn.init.zeros_(layers[-1].bias)


INITS: dict[str, Callable[[nn.Module], None] | None] = {
    "arch": None,  # the architecture's own: torchvision's for alexnet, the paper's for alexnet-2012
    "kaiming": kaiming_init,
}


@register_model("alexnet")
def alexnet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    return AlexNet(num_classes=num_classes, dropout=dropout)


@register_model("alexnet-2012")
def alexnet_2012(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    return AlexNet2012(num_classes=num_classes, dropout=dropout)


@register_model("alexnet-384")
def alexnet_384(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    return AlexNet384(num_classes=num_classes, dropout=dropout)


alexnet_384.fixed_input_size = AlexNet384.fixed_input_size


# torchvision's classifiers by name (`--arch resnet18`), after the AlexNets. Its "alexnet" is ours
# (same network, same tensor names), so it is not registered twice.
def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
        from torchvision import models

        del dropout  # the AlexNets' option; torchvision's architectures keep their own
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet / inception init notices
            return models.get_model(name, weights=None, num_classes=num_classes)

    build.torchvision = name
    return build


def is_torchvision(arch: str) -> bool:
    return getattr(MODELS.get(arch), "torchvision", None) is not None


def _register_torchvision() -> None:
    from torchvision import models

    for name in models.list_models(module=models):
        if name not in MODELS:
            MODELS[name] = _torchvision_builder(name)


_register_torchvision()


def default_input(arch: str) -> InputSpec:
    """The input a card of `arch` gets when nothing says otherwise: torchvision's eval transform of
    the architecture's default weights (Inception's 299 crop of 342, ...), else 224 of 256."""
    if not is_torchvision(arch):
        return InputSpec()
    from torchvision import models

    try:
        t = models.get_model_weights(MODELS[arch].torchvision).DEFAULT.transforms()
    except (ValueError, AttributeError):
        return InputSpec()
    return InputSpec(shape=[3, t.crop_size[0], t.crop_size[0]], mean=list(t.mean), std=list(t.std),
                     resize=t.resize_size[0], crop=t.crop_size[0])


# ---------------------------------------------------------------------------------------------
# Which architecture a state dict is
# ---------------------------------------------------------------------------------------------
def forget_shapes() -> None:
    """A user's definition registered again under its name may build other tensors."""
    _shapes.cache_clear()


@functools.lru_cache(maxsize=512)
def _shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]] | None:
    """Every tensor name and shape of `arch` with `num_classes` outputs; None for an architecture
    that cannot be built without memory (regnet initialises by copying)."""
    try:
        # On the meta device: no memory, no initialisation cost, whatever the architecture's size.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's notices about future init defaults
            model = MODELS[arch](num_classes=num_classes)
    except NotImplementedError:
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _head_width(arch: str, state: dict[str, torch.Tensor]) -> int | None:
    """num_classes of `state` read from the tensors that change with it in `arch`, or None when
    `state` does not have `arch`'s tensor names."""
    a = _shapes(arch, 1000)
    if a is None or a.keys() != state.keys():
        return None
    b = _shapes(arch, 7)
    widths = {state[k].shape[0] for k in a if a[k] != b[k] and state[k].dim() > 0}
    return widths.pop() if len(widths) == 1 else None


def head_keys(arch: str) -> list[str]:
    """The tensors whose shapes depend on num_classes: what fine-tuning with new classes replaces."""
    a, b = _shapes(arch, 1000), _shapes(arch, 7)
    return [k for k in a if a[k] != b[k]]


def first_mismatch(arch: str, state: dict[str, torch.Tensor], num_classes: int) -> str | None:
    """The first tensor where `state` differs from `arch` (missing, unexpected or another shape),
    in one phrase; None when it fits."""
    want = _shapes(arch, num_classes)
    if want is None:
        return None  # checked by load_state_dict instead
    for k, shape in want.items():
        if k not in state:
            return f"{k} is missing"
        if tuple(state[k].shape) != shape:
            return f"{k} is {list(state[k].shape)} in the file, {list(shape)} in {arch}"
    extra = [k for k in state if k not in want]
    return f"{extra[0]} is not a tensor of {arch}" if extra else None


def detect_arch(state: dict[str, torch.Tensor], source: str, torchvision: bool = True) -> tuple[str, int]:
    """The one registered architecture whose every tensor name and shape `state` matches, and its
    num_classes; anything else is one line listing what was tried and how to choose. The
    AlexNets are tried first; torchvision's architectures only when none of them fits (building
    all of those, even on the meta device, takes seconds)."""
    ours = [a for a in MODELS if not is_torchvision(a) and not a.startswith(USER_PREFIX)]
    groups = (ours, [a for a in MODELS if is_torchvision(a)]) if torchvision else (ours,)
    for group in groups:
        fits = []
        for arch in group:
            n = _head_width(arch, state)
            if n is not None and first_mismatch(arch, state, n) is None:
                fits.append((arch, n))
        if len(fits) == 1:
            return fits[0]
        if fits:
            raise UserError(f"{source} fits several architectures ({', '.join(a for a, _ in fits)}): "
                            "pass --arch NAME")
    raise UserError(f"{source}: no registered architecture has these tensors (tried {', '.join(ours)} "
                    "and torchvision's classifiers); pass --arch NAME")


# ---------------------------------------------------------------------------------------------
# Weights I/O
# ---------------------------------------------------------------------------------------------
def save_weights(model: nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write safetensors with the card in the metadata, atomically."""
    from safetensors.torch import save_file

    from alexnet_deploy.files import atomic_path
    from alexnet_deploy.machine import library_versions

    if not card.versions:
        card.versions = library_versions()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"card": card.to_json(), "format": "pt"})
    return Path(path)


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card of a safetensors file or of an export folder (its manifest), without the weights."""
    path = Path(path)
    if path.is_dir():
        from alexnet_deploy.manifest import Manifest

        if not (path / "manifest.json").is_file():
            raise UserError(f"{path} has no manifest.json: pass an export folder or a weights file")
        return Manifest.read(path).card
    return load_weights(str(path))[1]


def load_weights(spec: str | os.PathLike, num_classes: int | None = None,
                 device: str = "cpu", arch: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Build the model and its card from our safetensors, a torchvision .pth, or 'torchvision'.

    `num_classes`, when given and different from the weights', replaces the head with a freshly
    initialised one (fine-tuning); everything else must match exactly. `arch`, when given, is the
    architecture the tensors must fit (else the card's, or the one a bare state dict is detected as).
    """
    if arch is not None and arch not in MODELS:
        raise UserError(f"unknown architecture {arch!r}; choose one of: {', '.join(MODELS)}")
    spec = str(spec)
    if spec == "torchvision":
        state, card = _torchvision_state()
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"weights file not found: {path} (pass a .safetensors, a .pth "
                            "state dict, or the word 'torchvision')")
        if path.suffix == ".safetensors":
            state, card = _read_safetensors(path, arch)
        else:
            state, card = _read_pth(path, arch)
    if arch is not None and arch != card.arch:
        card.arch = arch
    if card.arch.startswith(USER_PREFIX):
        return _load_user(state, card, spec, num_classes, device)
    # checked before any model is built: a file that does not fit fails without initialising one
    _check_fits(state, spec, card.arch, card.num_classes)
    if num_classes is not None and num_classes != card.num_classes:
        model = with_new_head(card.arch, state, num_classes)
        card.num_classes, card.classes = num_classes, [f"class_{i}" for i in range(num_classes)]
    else:
        model = _built_from(card.arch, card.num_classes, state)
    return model.to(device).eval(), card


def _load_user(state: dict[str, torch.Tensor], card: ModelCard, source: str, num_classes: int | None,
               device: str) -> tuple[nn.Module, ModelCard]:
    """A user's module: registered by the user (never because a card names it), its tensors fit
    strictly, its number of classes what it outputs."""
    from alexnet_deploy.models.user import check_definition, definition_of, output_width

    check_definition(card.arch, card.model_def, source)
    model = build_model(card.arch)
    _load_strict(model, state, source, card.arch, card.num_classes)
    width = output_width(model, card.input.crop, source)
    if num_classes is not None and num_classes != width:
        raise UserError(f"your module {card.arch} outputs {width} classes, the data has {num_classes}: "
                        "build it with that many (e.g. --model-arg num_classes=N)")
    if width != card.num_classes:
        if card.model_def is not None:  # a card written with the module: it must still agree
            raise UserError(f"{source}: the card lists {card.num_classes} classes but your module outputs "
                            f"{width}: pass the --model-arg values it was exported with")
        card.num_classes, card.classes = width, []
        card = ModelCard.from_dict(card.to_dict())
    card.model_def = definition_of(card.arch)
    return model.to(device).eval(), card


def with_new_head(arch: str, state: dict[str, torch.Tensor], num_classes: int) -> nn.Module:
    """`arch` with `num_classes` outputs: every tensor from `state` but the head (head_keys), which
    keeps the architecture's fresh initialisation (fine-tuning on other classes)."""
    model = build_model(arch, num_classes)
    head = set(head_keys(arch))
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    assert set(missing) == head and not unexpected, (missing, unexpected)  # state fitted arch above
    return model


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str,
                 num_classes: int) -> None:
    _check_fits(state, source, arch, num_classes)
    model.load_state_dict(state, strict=True)


def _built_from(arch: str, num_classes: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """`arch` holding `state` (which fits it), built without the random initialisation that `state`
    overwrites at once (0.33 s of every AlexNet load): on the meta device, given memory, then the
    state copied in (dtype conversions as load_state_dict does them). A module with a buffer the
    state does not hold (non-persistent: computed at construction) is built as usual."""
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    held = set(model.state_dict())
    if any(name not in held for name, _ in model.named_buffers()):
        model = build_model(arch, num_classes)
    else:
        model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model


def _check_fits(state: dict[str, torch.Tensor], source: str, arch: str, num_classes: int) -> None:
    if (mismatch := first_mismatch(arch, state, num_classes)) is not None:
        hint = ("pass the --model-arg values it was built with" if arch.startswith(USER_PREFIX) else
                "pass the --arch it was trained as, or omit --arch on a bare state dict to detect it")
        raise UserError(f"{source} does not fit the {arch} architecture: {mismatch}; {hint}") from None


def _read_safetensors(path: Path, arch: str | None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); re-export or retrain it") \
            from None
    if "card" in meta:
        card = ModelCard.from_json(meta["card"], what=f"{path}: model card")
    else:
        card = _card_from_state(state, source=str(path), arch=arch)
    card.source = str(path)
    return state, card


def _read_pth(path: Path, arch: str | None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    try:
        with warnings.catch_warnings():
            # torch warns about old pickle protocols on stderr; the file is refused or read below,
            # and one line is what the user sees either way
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe pickles
        msg = first_line(e, empty=type(e).__name__)
        raise UserError(f"{path} is not a loadable state dict ({msg}); only plain tensors are "
                        "accepted (torch.load weights_only=True)") from None
    # torchvision's reference trainer saves {"model": state_dict, ...}; accept that too.
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, _card_from_state(obj, source=str(path), arch=arch)


def _card_from_state(state: dict[str, torch.Tensor], source: str, arch: str | None = None) -> ModelCard:
    """A card for a bare state dict: `arch` (or the detected one), num_classes from its head."""
    if arch is None:
        arch, n = detect_arch(state, source)
    elif arch.startswith(USER_PREFIX):
        n = 1  # what the module outputs decides, once built (_load_user)
    elif (n := _head_width(arch, state)) is None:
        raise UserError(f"{source} does not fit the {arch} architecture: "
                        f"{first_mismatch(arch, state, 1000)}; omit --arch to detect it")
    classes = imagenet_classes() if n == 1000 else []
    return ModelCard(arch=arch, num_classes=n, classes=classes, input=default_input(arch), source=source)


def from_module(module: nn.Module, card: ModelCard | dict | None = None) -> tuple[nn.Module, ModelCard]:
    """The Python API's model object and its card (a ModelCard, or a dict in manifest.json's `card`
    form with any field left out). A registered architecture's tensors (a torchvision ResNet, an
    AlexNet of any of our three kinds, detected from its state dict) are rebuilt by name, so the
    export can be validated anywhere; any other module is registered as the user's own (models.user)."""
    from alexnet_deploy.models.user import output_width, register_module

    if not isinstance(module, nn.Module):
        raise UserError(f"expected a torch.nn.Module or a weights path, got a {type(module).__name__}")
    given = card.to_dict() if isinstance(card, ModelCard) else dict(card or {})
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    arch = given.get("arch")
    if arch is None:
        from_torchvision = type(module).__module__.startswith("torchvision.")
        try:
            arch, _ = detect_arch(state, f"the {type(module).__name__} module", torchvision=from_torchvision)
        except UserError:
            arch = register_module(module)
    if arch not in MODELS:
        build_model(arch)  # the one line naming the choices (or asking for --model-def)
    rebuilt = build_model(arch, 1000 if arch.startswith(USER_PREFIX) else _head_width(arch, state) or 1000)
    _load_strict(rebuilt, state, f"the {type(module).__name__} module", arch, _head_width(arch, state) or 1)
    inp = given.get("input", default_input(arch).to_dict())
    crop = InputSpec.checked(inp, "card: input").crop
    width = output_width(rebuilt, crop, f"the {type(module).__name__} module")
    if given.get("num_classes", width) != width:
        raise UserError(f"card: num_classes is {given['num_classes']} but the module outputs {width} classes")
    defaults = {"arch": arch, "num_classes": width, "input": inp,
                "classes": imagenet_classes() if width == 1000 and "classes" not in given else [],
                "source": f"python object {type(module).__qualname__}"}
    made = ModelCard.from_dict({**defaults, **given}, what="card")
    if arch.startswith(USER_PREFIX):
        from alexnet_deploy.models.user import definition_of

        made.model_def = definition_of(arch)
    return rebuilt.eval(), made


def imagenet_classes() -> list[str]:
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_state() -> tuple[dict[str, torch.Tensor], ModelCard]:
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS_FILE
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "could not download"
        raise UserError(f"could not download torchvision's AlexNet IMAGENET1K_V1 weights ({type(e).__name__}); "
                        f"offline, place {TORCHVISION_WEIGHTS_FILE} at {cache}") from None
    card = ModelCard(arch="alexnet", num_classes=1000, classes=imagenet_classes(),
                     source="torchvision:AlexNet_Weights.IMAGENET1K_V1")
    return state, card
