"""Training: fit() = data -> model -> optimizer -> [train_one_epoch, evaluate, checkpoint] x epochs.

Read top to bottom. The layout follows torchvision's classification reference (train_one_epoch,
evaluate, a plain-dict checkpoint, distributed set-up read from torchrun's environment) with a
small config dataclass saved into every checkpoint, as nanoGPT does.

Reproducibility contract: with --deterministic on CPU, a run killed at any moment and restarted
with --resume ends with bitwise the same weights as an uninterrupted run. That holds because every
epoch's randomness (shuffling, augmentation, dropout, DataLoader worker seeds) is derived from
(seed, epoch, rank) at the start of the epoch, and the checkpoint is written atomically after it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from alexnet_deploy import data as data_lib
from alexnet_deploy.errors import UserError
from alexnet_deploy.files import (
    atomic_path,
    check_output_dir,
    pid_alive,
    remove_stale_temp_files,
    write_text,
)
from alexnet_deploy.models import (
    INITS,
    MODELS,
    InputSpec,
    ModelCard,
    build_model,
    check_input_size,
    default_input,
    load_weights,
    save_weights,
)
from alexnet_deploy.models.user import definition_of, is_user, output_width

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CACHE_MAX_BYTES = 256 << 20  # data sets up to this size on disk are decoded once and kept in memory
WEIGHTS = "weights.safetensors"
METRICS = "metrics.jsonl"
CURVES = "curves.png"

# Defaults that depend on the optimizer (SGD: the paper's momentum 0.9 and weight decay 5e-4).
OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.01, "weight_decay": 5e-4},
                      "adamw": {"lr": 3e-4, "weight_decay": 0.05}}

# Settings for the built-in demo data: `data` are `alexnet-deploy data demo` options, `train` are
# TrainConfig fields; the pipeline (`make demo`) uses them when it generates the demo data itself.
# Measured on 2 CPU cores with AMX (bf16 autocast): about 2 minutes of training, 96.6% val top-1,
# 95.7% test top-1 (6 epochs give 88%; see train/README.md). The levers, in order of effect: He init
# (torchvision's leaves AlexNet at chance for ~300 steps), 4000 rather than 1200 training images
# (the smaller set overfits at ~45%), lr 1e-3 with AdamW; fused AdamW, bf16 autocast and glibc keeping
# freed memory make each step 2.85x faster (benchmarks/results/train_speed_recipe_cpu.md).
DEMO_RECIPE: dict[str, dict[str, Any]] = {
    "data": {"classes": 10, "per_class": 400, "size": 72, "seed": 0},
    "train": {"image_size": 64, "epochs": 8, "batch_size": 64, "optimizer": "adamw", "lr": 1e-3,
              "weight_decay": 0.05, "warmup_epochs": 1, "min_crop_scale": 0.8, "dropout": 0.0,
              "init": "kaiming", "workers": 0},
}


@dataclass
class TrainConfig:
    """Every option of `alexnet-deploy train`; saved into the checkpoint and the model card."""

    data: str
    out: str
    arch: str = "alexnet"
    epochs: int = 10
    batch_size: int = 64  # per process; the global batch is batch_size x world size
    lr: float | None = None  # None: OPTIMIZER_DEFAULTS
    weight_decay: float | None = None
    optimizer: str = "sgd"
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    image_size: int | None = None  # None: the architecture's own (224, Inception 299)
    min_crop_scale: float = 0.08  # RandomResizedCrop's smallest area fraction
    dropout: float = 0.5  # classifier dropout (torchvision's 0.5); lower learns small data sets sooner
    init: str = "kaiming"  # from scratch: model.INITS ("arch" keeps torchvision's / the paper's)
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (fp16 + GradScaler without bf16) and on bf16-capable CPUs
    compile: bool = False
    workers: int = 2
    seed: int = 0
    resume: bool = False
    weights: str | None = None
    deterministic: bool = False
    quiet: bool = False  # no output at all (library callers such as the pipeline)

    def __post_init__(self) -> None:
        if self.arch not in MODELS:
            raise UserError(f"unknown architecture {self.arch!r}; choose one of: {', '.join(MODELS)}")
        if self.image_size is None:
            self.image_size = default_input(self.arch).crop
        check_input_size(self.arch, self.image_size)
        if self.optimizer not in OPTIMIZER_DEFAULTS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of: "
                            f"{', '.join(OPTIMIZER_DEFAULTS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init not in INITS:
            raise UserError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if not 0 < self.min_crop_scale <= 1:
            raise UserError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")
        defaults = OPTIMIZER_DEFAULTS[self.optimizer]
        self.lr = defaults["lr"] if self.lr is None else self.lr
        self.weight_decay = defaults["weight_decay"] if self.weight_decay is None else self.weight_decay
        if not self.lr > 0:  # also refuses nan
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")


@dataclass
class TrainResult:
    val_top1: float  # a fraction 0..1 (as every accuracy the tool reports), last epoch
    val_top5: float
    test_top1: float | None  # None when the data has no test/
    test_top5: float | None
    epochs: int
    images_per_s: float  # training throughput, median over epochs, all processes together
    weights: str
    run_dir: str
    seconds: float  # wall time of this call
    params_sha256: str = ""  # digest of the final weights: equal runs give equal digests
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# fit: the whole run
# ---------------------------------------------------------------------------------------------
def fit(cfg: TrainConfig) -> TrainResult:
    t_start = time.perf_counter()
    env = setup_distributed(cfg.device)
    log = Logger(enabled=env.is_main and not cfg.quiet)
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    try:
        with freed_memory_kept() if env.device.type == "cpu" else nullcontext():
            return _fit(cfg, env, log, t_start)
    finally:
        torch.use_deterministic_algorithms(previous_determinism)
        if env.world_size > 1:
            dist.destroy_process_group()


def _fit(cfg: TrainConfig, env: DistEnv, log: Logger, t_start: float) -> TrainResult:
    run = Path(cfg.out)
    device = env.device
    configure_backends(device, cfg.deterministic)

    # The run folder, then the data: bad paths should fail before anything heavy happens.
    check_output_dir(run)
    if env.is_main:  # a checkpoint write cut by kill -9 leaves its temporary file
        remove_stale_temp_files(run, Path(CHECKPOINT).stem, say=log.line)
    splits = DataSplits.load(cfg, env)
    num_classes = len(splits.classes)

    # Model, optimizer, schedule. Same seed on every rank so the replicas start equal.
    seed_everything(cfg.seed)
    # channels_last on every device: ~3x faster convolutions on CPU too (benchmarks/train_speed.py)
    model = make_model(cfg, num_classes).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(splits.train_sampler) / cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    amp_dtype = autocast_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, history = 0, []
    ckpt_path = run / CHECKPOINT
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, cfg, splits.classes)
        restore_checkpoint(ckpt_path, ckpt, model, optimizer, scheduler, scaler)
        start_epoch, history = ckpt["epoch"] + 1, list(ckpt["history"])
        log.line(f"resuming {run} after epoch {start_epoch} of {cfg.epochs}")
    elif ckpt_path.exists():
        raise UserError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")

    raw_model = model  # what checkpoints and weights are written from
    if env.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    log.line(f"training {cfg.arch} on {splits.describe()} | device {device}"
             f"{f' x{env.world_size}' if env.world_size > 1 else ''} | "
             f"{'amp ' + str(amp_dtype).removeprefix('torch.') if amp_dtype else 'fp32'} | "
             f"{cfg.optimizer} lr {cfg.lr:g} | {cfg.epochs} epochs of {steps_per_epoch} steps")
    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)

    for epoch in range(start_epoch, cfg.epochs):
        seed_epoch(cfg.seed, epoch, env.rank, splits)
        train_stats = train_one_epoch(model, criterion, optimizer, scheduler, scaler, splits.train_loader,
                                      device, amp_dtype, env, log, f"epoch {epoch + 1}/{cfg.epochs}")
        val_stats = evaluate(model, criterion, splits.val_loader, device, amp_dtype, env)
        history.append({"epoch": epoch + 1, **train_stats, **{f"val_{k}": v for k, v in val_stats.items()}})
        if env.is_main:
            save_checkpoint(ckpt_path, raw_model, optimizer, scheduler, scaler, epoch, cfg,
                            splits.classes, history)
            write_metrics(run / METRICS, history)
        log.epoch(history[-1])

    metrics = {k: history[-1][k] for k in ("val_top1", "val_top5", "val_loss")} if history else {}
    test_stats = None
    if splits.test_loader is not None:
        test_stats = evaluate(model, criterion, splits.test_loader, device, amp_dtype, env)
        metrics.update({f"test_{k}": v for k, v in test_stats.items()})
        log.line(f"test top-1 {test_stats['top1']:.2%}  top-5 {test_stats['top5']:.2%}")

    weights_path = run / WEIGHTS
    if env.is_main:
        card = ModelCard(arch=cfg.arch, num_classes=num_classes, classes=splits.classes,
                         input=training_input(cfg),
                         data={"root": str(Path(cfg.data).resolve()), "val": str(splits.val_dir.resolve())},
                         training=asdict(cfg), metrics=metrics, model_def=definition_of(cfg.arch))
        save_weights(raw_model, card, weights_path)
        write_metrics(run / METRICS, history)
        plot_curves(run / CURVES, history)
        log.line(f"weights written to {weights_path}")
    if env.world_size > 1:
        dist.barrier()  # nobody returns before rank 0's files are complete

    return TrainResult(
        val_top1=metrics.get("val_top1", float("nan")), val_top5=metrics.get("val_top5", float("nan")),
        test_top1=test_stats["top1"] if test_stats else None,
        test_top5=test_stats["top5"] if test_stats else None,
        epochs=len(history),
        images_per_s=statistics.median(h["images_per_s"] for h in history) if history else 0.0,
        weights=str(weights_path), run_dir=str(run), seconds=time.perf_counter() - t_start,
        params_sha256=state_digest(raw_model), history=history)


# ---------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
# ---------------------------------------------------------------------------------------------
AUX_LOSS_WEIGHT = 0.3  # GoogLeNet's (Szegedy et al. 2015) weight for each auxiliary classifier


def training_loss(criterion, output, targets: torch.Tensor) -> torch.Tensor:
    """The loss of a training-mode output. GoogLeNet and Inception v3 return their main logits
    with auxiliary classifiers' (a named tuple); those add AUX_LOSS_WEIGHT each, as in the papers.
    In eval mode (export, validate) they return the main logits alone."""
    if isinstance(output, torch.Tensor):
        return criterion(output, targets)
    main, *aux = [o for o in output if isinstance(o, torch.Tensor)]
    return criterion(main, targets) + sum(AUX_LOSS_WEIGHT * criterion(a, targets) for a in aux)


def train_one_epoch(model, criterion, optimizer, scheduler, scaler, loader, device, amp_dtype, env,
                    log, title) -> dict[str, float]:
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    t0 = time.perf_counter()
    with log.progress(title, len(loader)) as advance:
        for images, targets in batches(loader):
            images, targets = to_device(images, targets, device)
            with autocast(device, amp_dtype):
                loss = training_loss(criterion, model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach().double() * images.shape[0]
            seen += images.shape[0]
            advance()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(seen, dtype=torch.float64, device=device)]),
                            env)
    if not torch.isfinite(totals[0]):  # checked once per epoch: a per-step check would stall the GPU
        raise UserError(f"training diverged (loss is {totals[0].item()}) in {title}; lower --lr or "
                        "raise --warmup-epochs")
    return {"train_loss": (totals[0] / totals[1]).item(), "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": totals[1].item() / seconds, "epoch_s": seconds}


@torch.inference_mode()
def evaluate(model, criterion, loader, device, amp_dtype, env) -> dict[str, float]:
    """Loss, top-1 and top-5 (fractions 0..1) over the whole split, summed over every process."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct@1, correct@5, count
    for images, targets in batches(loader):
        images, targets = to_device(images, targets, device)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        sums += torch.stack([criterion(logits, targets).double() * len(targets),
                             hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                             torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
    loss, c1, c5, n = all_reduce_sum(sums, env).tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": c1 / n, "top5": c5 / n}


def batches(loader):
    """Iterate a DataLoader; a bad image found by a worker still reaches the user as one line."""
    try:
        yield from loader
    except UserError as e:
        raise UserError(data_lib.worker_error_message(e)) from None


def to_device(images, targets, device):
    non_blocking = device.type == "cuda"
    images = images.to(device, non_blocking=non_blocking).contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=non_blocking)


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the hardware computes it natively (no loss scaling needed); fp16 with a GradScaler
    on older GPUs; fp32 on CPUs without bf16 instructions, where emulated bf16 is slower than fp32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    from alexnet_deploy.machine import cpu_has_bf16

    return torch.bfloat16 if cpu_has_bf16() else None


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def training_input(cfg: TrainConfig) -> InputSpec:
    """What the model is trained and evaluated on: the architecture's own preprocessing (ratio,
    mean, std from torchvision's weights meta) at cfg.image_size."""
    return default_input(cfg.arch).resized_to(cfg.image_size)


@dataclass
class DataSplits:
    classes: list[str]
    train_dir: Path
    val_dir: Path
    test_dir: Path | None
    train_sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader | None
    generator: torch.Generator  # seeds the train loader's workers; re-seeded every epoch

    @classmethod
    def load(cls, cfg: TrainConfig, env: DistEnv) -> DataSplits:
        train_dir, val_dir, test_dir = data_lib.training_splits(cfg.data)
        spec = training_input(cfg)
        train_tf = data_lib.train_transform(cfg.image_size, spec.mean, spec.std, min_scale=cfg.min_crop_scale)
        eval_tf = data_lib.eval_transform(spec.resize, spec.crop, spec.mean, spec.std)
        # In-process loading of a small data set: keep decoded images (decoding dominates otherwise).
        cache = cfg.workers == 0 and data_lib.folder_bytes(cfg.data) < CACHE_MAX_BYTES
        train_ds = data_lib.image_folder(train_dir, train_tf, cache=cache)
        classes = list(train_ds.classes)
        val_ds = data_lib.image_folder(val_dir, eval_tf, classes=classes, cache=cache)
        test_ds = data_lib.image_folder(test_dir, eval_tf, classes=classes, cache=cache) if test_dir else None

        # DistributedSampler also serves one process: its shuffle is seeded from (seed, epoch).
        sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=cfg.seed)
        generator = torch.Generator()
        cuda = env.device.type == "cuda"
        workers = dict(multiprocessing_context=worker_context(),
                       worker_init_fn=functools.partial(exit_with_trainer, os.getpid())) if cfg.workers > 0 else {}
        common = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=cuda, **workers)
        train_loader = DataLoader(train_ds, sampler=sampler, generator=generator, **common)

        def eval_loader(ds):
            return DataLoader(ds, sampler=ShardSampler(len(ds), env.world_size, env.rank), **common)

        return cls(classes, train_dir, val_dir, test_dir, sampler, train_loader, eval_loader(val_ds),
                   eval_loader(test_ds) if test_ds else None, generator)

    def describe(self) -> str:
        n = len(self.train_loader.dataset)
        return f"{len(self.classes)} classes, {n} train / {len(self.val_loader.dataset)} val images"


def worker_context():
    """Start DataLoader workers from a small fork server, not by forking the trainer.

    Why: workers are re-created every epoch (their seeds come from (seed, epoch), which keeps
    resume bitwise exact), and after each fork the trainer copy-on-write faults every page it
    writes (weights, gradients, optimizer state) while the worker lives: measured 20 s of system
    time in a 20 s CPU run. The fork server preloads the data module, so a worker starts in
    milliseconds. Elsewhere (no fork server: macOS, Windows) PyTorch's default applies."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["alexnet_deploy.data"])
    return ctx


def exit_with_trainer(trainer_pid: int, worker_id: int) -> None:
    """worker_init_fn: end this DataLoader worker as soon as the trainer process is gone.

    Why: a worker started by the fork server has the fork server as its parent, so PyTorch's own
    watchdog (is my parent alive?) never sees the trainer die, and the fork server stays up while
    any worker holds its "alive" pipe. After kill -9 of the trainer both would live on forever,
    holding memory and the trainer's output pipes. A daemon thread waits for the trainer's exit
    (a pidfd where Linux has one, a once-a-second check elsewhere)."""
    import select
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(trainer_pid)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):  # no pidfd here
            while pid_alive(trainer_pid):
                time.sleep(1.0)
        else:
            select.select([fd], [], [])  # readable once the process has exited
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-trainer", daemon=True).start()


class ShardSampler(Sampler[int]):
    """Every index exactly once across processes (DistributedSampler pads, which skews metrics)."""

    def __init__(self, n: int, world_size: int, rank: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# ---------------------------------------------------------------------------------------------
def make_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    if cfg.weights is None:
        model = build_model(cfg.arch, num_classes, dropout=cfg.dropout, init=cfg.init)
        if is_user(cfg.arch) and (width := output_width(model, cfg.image_size, cfg.arch)) != num_classes:
            raise UserError(f"your module {cfg.arch} outputs {width} classes, the data has {num_classes}: "
                            f"build it with that many (e.g. --model-arg num_classes={num_classes})")
        return model
    model, card = load_weights(cfg.weights, num_classes=num_classes)
    if card.arch != cfg.arch:
        raise UserError(f"--weights {cfg.weights} holds {card.arch!r} but --arch is {cfg.arch!r}; "
                        f"pass --arch {card.arch}")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
    return model


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases: standard practice, and the paper's biases of 1 stay meaningful.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step instead of one per tensor; on CPU AdamW's step over AlexNet's 61 M
    # parameters drops from ~150 ms to ~35 ms, which at 64 px was most of the step.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: linear warm-up over warmup_epochs, then cosine decay to zero at the last step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# Devices, distributed, determinism
# ---------------------------------------------------------------------------------------------
@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process when it is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu or auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank, world_size, local_rank, dev)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def configure_backends(device: torch.device, deterministic: bool) -> None:
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic


# glibc's two malloc thresholds, by the environment names it reads at start-up: their mallopt
# parameters (malloc.h), what freed_memory_kept sets, glibc's initial values, and their GLIBC_TUNABLES names
MALLOPT_PARAMS = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": 1 << 30, "MALLOC_TRIM_THRESHOLD_": 2**31 - 1}
GLIBC_DEFAULT_THRESHOLDS = {"MALLOC_MMAP_THRESHOLD_": 128 << 10, "MALLOC_TRIM_THRESHOLD_": 128 << 10}
MALLOC_THRESHOLD_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


@functools.cache
def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def set_malloc_thresholds(values: dict[str, int]) -> bool:
    """Set glibc's thresholds in this process (keys: MALLOPT_PARAMS'); False off glibc."""
    libc = _glibc()
    if libc is None:
        return False
    for name, value in values.items():
        libc.mallopt(MALLOPT_PARAMS[name], value)
    return True


def malloc_thresholds_set_by_user() -> bool:
    """Whether the environment sets either of glibc's two thresholds (glibc reads it at start-up)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return (any(name in os.environ for name in MALLOPT_PARAMS)
            or any(name in tunables for name in MALLOC_THRESHOLD_TUNABLES))


@contextmanager
def freed_memory_kept():
    """While inside, glibc keeps large freed blocks instead of handing each back to the OS.

    Why: each CPU step allocates and frees hundreds of MB (gradients, bf16 copies of the weights).
    By default glibc serves those with mmap and unmaps them on free, so the next step page-faults
    all of it again: 204 -> 129 ms per step on the demo recipe, system time to ~0
    (benchmarks/results/train_speed_recipe_cpu.md). PyTorch's CPU tuning guide suggests jemalloc or
    tcmalloc for the same reason; this needs no preload. On exit the thresholds go back to glibc's
    defaults and the kept memory is released, so later work in the same process (a benchmark's
    peak-memory figures) is unaffected. No-op off glibc, and in a process started with glibc's
    thresholds set (`malloc_thresholds_set_by_user`): those are the user's choice, and going back to
    glibc's defaults on exit would undo it."""
    if malloc_thresholds_set_by_user() or not set_malloc_thresholds(KEEP_FREED_MEMORY):
        yield
        return
    try:
        yield
    finally:
        set_malloc_thresholds(GLIBC_DEFAULT_THRESHOLDS)
        _glibc().malloc_trim(0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int, splits: DataSplits) -> None:
    """All randomness of one epoch comes from (seed, epoch, rank): a resumed run replays it exactly."""
    s = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    seed_everything(s)
    splits.train_sampler.set_epoch(epoch)  # same permutation on every rank, disjoint shards
    splits.generator.manual_seed(s)  # base seed of this epoch's DataLoader workers


def state_digest(model: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-d batch-norm counters
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors and Python scalars, so torch.load(weights_only=True) works
# ---------------------------------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state holds an ndarray, which weights_only refuses: store it as a tensor
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, epoch: int, cfg: TrainConfig,
                    classes: list[str], history: list[dict]) -> None:
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "rng": rng_states(), "config": asdict(cfg), "classes": list(classes), "history": history}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: Path, cfg: TrainConfig, classes: list[str]) -> dict[str, Any]:
    """The checkpoint of a run compatible with `cfg` and the data, or one clear error."""
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, disk error: all mean "unusable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a readable checkpoint ({first}); delete it and train "
                        "without --resume") from None
    keys = {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "rng", "config", "classes", "history"}
    if not isinstance(ckpt, dict) or not keys <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint written by alexnet-deploy train")
    _check_checkpoint_fields(path, ckpt)
    arch = ckpt["config"].get("arch")
    if arch != cfg.arch:
        raise UserError(f"{path} is a checkpoint of {arch!r}, not {cfg.arch!r}; pass --arch {arch} "
                        "or choose another --out")
    trained_with = ckpt["config"].get("optimizer")
    if trained_with != cfg.optimizer:
        raise UserError(f"{path.name} was trained with {trained_with}; resume with --optimizer "
                        f"{trained_with} or start a new --out")
    if list(ckpt["classes"]) != list(classes):
        raise UserError(f"{path} was trained on {len(ckpt['classes'])} classes but {cfg.data} has "
                        f"{len(classes)} ({'different names' if len(classes) == len(ckpt['classes']) else 'another count'}); "
                        "resume with the same data or choose another --out")
    return ckpt


# What each checkpoint field must be: a checkpoint that loads with weights_only can still hold
# anything (a string config, a list for the model), which must not become a traceback.
_CHECKPOINT_TYPES = {"model": dict, "optimizer": dict, "lr_scheduler": dict, "scaler": dict, "epoch": int,
                     "rng": dict, "config": dict, "classes": list, "history": list}


def _check_checkpoint_fields(path: Path, ckpt: dict[str, Any]) -> None:
    for key, kind in _CHECKPOINT_TYPES.items():
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise UserError(f"{path} is not a checkpoint of this tool ({key} is "
                            f"{type(ckpt[key]).__name__}); delete it and train without --resume")
    if ckpt["epoch"] < 0 or not all(isinstance(c, str) for c in ckpt["classes"]):
        raise UserError(f"{path} is not a checkpoint of this tool (bad epoch or classes); delete it "
                        "and train without --resume")


def restore_checkpoint(path: Path, ckpt: dict[str, Any], model, optimizer, scheduler, scaler) -> None:
    """Load every state of `ckpt`; a tensor of another shape or a foreign state is one line."""
    own = model.state_dict()
    for name, t in ckpt["model"].items():
        if name in own and isinstance(t, torch.Tensor) and t.shape != own[name].shape:
            raise UserError(f"{path.name} does not fit this model: {name} has shape {tuple(t.shape)} "
                            f"in the checkpoint but {tuple(own[name].shape)} here; start a new --out")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path} is not a checkpoint of this tool ({type(e).__name__}: {first}); "
                        "delete it and train without --resume") from None


# ---------------------------------------------------------------------------------------------
# Outputs: metrics.jsonl, curves.png, console
# ---------------------------------------------------------------------------------------------
def write_metrics(path: Path, history: list[dict]) -> None:
    import json

    write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def plot_curves(path: Path, history: list[dict]) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [100 * h["val_top1"] for h in history], label="val top-1")
    ax_acc.plot(epochs, [100 * h["val_top5"] for h in history], label="val top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


class Logger:
    """Rank 0's voice: log records (see console.py), a rich progress bar on a terminal, nothing
    when quiet or on the other ranks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()

    def line(self, text: str) -> None:
        if self.enabled:
            logger.info(text)

    def epoch(self, h: dict[str, Any]) -> None:
        self.line(f"epoch {h['epoch']}: loss {h['train_loss']:.4f}  val loss {h['val_loss']:.4f}  "
                  f"top-1 {h['val_top1']:.2%}  top-5 {h['val_top5']:.2%}  "
                  f"{h['images_per_s']:.0f} img/s  {h['epoch_s']:.1f} s")

    def progress(self, title: str, total: int):
        if not self.tty:
            return nullcontext(lambda: None)
        return _RichBar(title, total)


class _RichBar:
    def __init__(self, title: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.task = self.progress.add_task(title, total=total)

    def __enter__(self):
        self.progress.start()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc) -> None:
        self.progress.stop()
