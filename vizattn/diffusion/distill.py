"""CLEAR distillation of a pretrained DiT into a local-attention student (used by ``tools/distill_clear.py``).

The recipe of the CLEAR paper (https://arxiv.org/abs/2412.16112, section 3.3 and the official ``distill.py``),
moved from FLUX to the class-conditional DiT:

1. **Teacher set.** The teacher samples latents from random class labels (DDIM or respaced DDPM, classifier-free
   guidance as DiT's ``sample.py`` applies it); they are written to ``data_dir`` in shards of ``gen_batch_size`` so
   an interrupted generation resumes where it stopped (each shard is seeded by its index, so it is the same file
   whether generated in one go or not).
2. **Student.** A copy of the teacher whose attention layers become :class:`vizattn.blocks.ClearAttention` (radius
   r, optional pooled tokens); only ``attn.qkv``, ``attn.proj`` and ``spatial_weight`` train.
3. **Loss.** ``L = L_diff + 0.5 L_pred + 0.5 L_attn``: DiT's own diffusion loss (epsilon MSE + VLB of the learned
   variance) on the teacher's latents, the MSE between student and teacher outputs at the same (x_t, t, y), and
   the MSE between their pre-``proj`` attention outputs on every 4th block (configurable).

Progress is measured by the held-out relative noise-prediction error ``|eps_s - eps_t|^2 / |eps_t|^2`` on fixed
(x_t, t, y) triples drawn from latents the student never trains on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vizattn.blocks.clear import convert_to_clear, is_clear_trainable
from vizattn.diffusion.dit import DiT, create_dit
from vizattn.diffusion.gaussian_diffusion import create_diffusion
from vizattn.train.config import ConfigError, config_field, config_to_dict
from vizattn.train.engine import format_duration, run_dir

__all__ = [
    "DistillConfig",
    "DistillResult",
    "AttentionTaps",
    "build_student",
    "distill",
    "generate_teacher_set",
    "load_teacher_set",
    "noise_prediction_error",
    "noise_prediction_errors",
    "reinit_zero_layers_",
    "sample_latents",
    "synthetic_latents",
    "train_teacher",
]
_logger = logging.getLogger("vizattn.distill")
_f = config_field


@dataclass
class DistillConfig:
    """All settings of ``tools/distill_clear.py`` (YAML keys and ``--dashed-names``)."""

    # teacher
    model: str = _f("dit_xl_2", "DiT teacher: dit_{s,b,l,xl}_{2,4,8}")
    image_size: int = _f(256, "image side in pixels; the latent side is image_size / 8")
    model_kwargs: dict = _f({}, "extra keyword arguments of the DiT constructor (e.g. {depth: 4} for tests)")
    teacher_path: str | None = _f(None, "teacher weights: official DiT .pt, a DiT train.py checkpoint or a diffusers "
                                  "DiTTransformer2DModel file/folder", "str?")
    pretrained: bool = _f(False, "download the official weights (dit_xl_2 at 256 or 512 only)")
    random_teacher: bool = _f(False, "random, non-degenerate teacher weights (smoke tests and timing only)")
    # student
    radius: int = _f(8, "CLEAR radius r in latent tokens (strict distance < r)")
    down_factor: int = _f(1, "pooled key/value tokens from d x d patches (1: none)")
    kernel_backend: str = _f("auto", "backend of the CLEAR attention op: auto, triton or torch")
    # teacher set
    data_dir: str | None = _f(None, "folder of the teacher-generated latents (created and resumed) (required)", "str?")
    num_samples: int = _f(10000, "latents in the teacher set (the last eval_samples are held out)")
    gen_batch_size: int = _f(32, "latents per generated shard")
    gen_sampler: str = _f("ddim", "sampler of the teacher set: ddim or ddpm (respaced)")
    gen_steps: int = _f(50, "sampling steps of the teacher set")
    gen_cfg_scale: float = _f(4.0, "classifier-free guidance of the teacher set, as DiT's sample.py (1: none)")
    # distillation
    steps: int = _f(10000, "optimizer steps")
    batch_size: int = _f(32, "latents per step")
    opt: str = _f("adamw", "adamw or prodigy (needs the prodigyopt package; use lr 1.0)")
    lr: float = _f(1e-4, "learning rate (constant)")
    weight_decay: float = _f(0.0, "decoupled weight decay")
    clip_grad: float | None = _f(1.0, "gradient-norm clipping (null: off)", "float?")
    loss_diff_weight: float = _f(1.0, "weight of DiT's own diffusion loss on the teacher set")
    loss_pred_weight: float = _f(0.5, "weight of the output distillation term")
    loss_attn_weight: float = _f(0.5, "weight of the attention-output distillation term")
    attn_layers: list | None = _f(None, "blocks whose pre-proj attention output is distilled; default every 4th "
                                  "block from 0", "list?")
    grad_checkpointing: bool = _f(True, "recompute the student's blocks in the backward pass")
    amp: bool = _f(True, "bfloat16 autocast on CUDA for the teacher set and the distillation (ignored on the CPU)")
    eval_samples: int = _f(64, "held-out (x_t, t, y) triples for the noise-prediction error")
    eval_interval: int = _f(500, "steps between evaluations (the last step is always evaluated)")
    # run
    device: str = _f("auto", "auto, cpu or cuda")
    seed: int = _f(0, "random seed")
    output: str = _f("output", "parent of the run folder")
    experiment: str | None = _f(None, "run folder name; default: the config file's name", "str?")
    resume: str | None = _f(None, "continue from this checkpoint (last.pth of a run)", "str?")
    log_interval: int = _f(50, "steps between progress lines")
    save_interval: int = _f(1000, "steps between checkpoints (the last step is always saved)")


@dataclass
class DistillResult:
    """What a distillation run ended with."""

    output_dir: Path
    steps: int
    error_before: float  # held-out relative noise-prediction error of the undistilled student
    error_after: float
    checkpoint: Path
    seconds: float

    def line(self) -> str:
        ratio = self.error_before / max(self.error_after, 1e-12)
        return (f"distilled {self.steps} steps: held-out noise-prediction error vs teacher {self.error_before:.4f} -> "
                f"{self.error_after:.4f} ({ratio:.1f}x lower)  checkpoint {self.checkpoint}")


# ------------------------------------------------------------------------------------------------------ models


def reinit_zero_layers_(model: DiT, std: float = 0.02, generator: torch.Generator | None = None) -> DiT:
    """Give a freshly initialised DiT a non-degenerate function: its adaLN-Zero modulations and final layer start at
    exactly zero (the network is the zero map and every block the identity), so re-draw them from N(0, std^2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adaLN_modulation." in f".{name}" or name.startswith("final_layer.linear"):
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but torch sees no CUDA device.")
    return torch.device(device)


def build_teacher(cfg: DistillConfig, device: torch.device) -> DiT:
    """The frozen teacher of ``cfg`` in eval mode on ``device``."""
    _check_teacher(cfg)
    kwargs = dict(cfg.model_kwargs, input_size=cfg.image_size // 8)
    teacher = create_dit(cfg.model, pretrained=cfg.pretrained, checkpoint_path=cfg.teacher_path, **kwargs)
    if cfg.random_teacher:
        torch.manual_seed(cfg.seed)
        reinit_zero_layers_(teacher)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def _check_teacher(cfg: DistillConfig) -> None:
    if cfg.image_size % 8:
        raise ConfigError(f"image_size must be a multiple of 8 (the VAE's factor), got {cfg.image_size}.")
    sources = [bool(cfg.teacher_path), cfg.pretrained, cfg.random_teacher]
    if sum(sources) != 1:
        raise ConfigError("give exactly one teacher source: teacher_path, pretrained: true or random_teacher: true "
                          f"(got teacher_path={cfg.teacher_path!r}, pretrained={cfg.pretrained}, "
                          f"random_teacher={cfg.random_teacher}).")


def build_student(teacher: DiT, radius: int, down_factor: int = 1, backend: str = "auto") -> DiT:
    """A CLEAR copy of ``teacher``: every attention layer local, the teacher's weights kept; only the parameters
    :func:`vizattn.blocks.clear.is_clear_trainable` names require gradients. ``backend`` is the kernel backend of
    :func:`vizattn.kernels.clear.clear_attention`."""
    student = convert_to_clear(copy.deepcopy(teacher), radius, down_factor=down_factor, backend=backend)
    for name, p in student.named_parameters():
        p.requires_grad_(is_clear_trainable(name))
    return student


class AttentionTaps:
    """Collects the pre-``proj`` attention outputs (``blocks.{i}.attn.tap``) of the given blocks during one forward.

    Outputs are recorded only while armed (``with taps:``), so the recomputation of checkpointed blocks in the
    backward pass does not overwrite them.
    """

    def __init__(self, model: DiT, layers: list[int]):
        depth = len(model.blocks)
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"attn_layers {bad} are not blocks of a {depth}-block DiT (valid: 0..{depth - 1}).")
        self.layers = list(layers)
        self.outputs: dict[int, torch.Tensor] = {}
        self._armed = False
        self._handles = [model.blocks[i].attn.tap.register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            if self._armed:
                self.outputs[i] = output

        return hook

    def __enter__(self) -> AttentionTaps:
        self.outputs = {}
        self._armed = True
        return self

    def __exit__(self, *exc) -> None:
        self._armed = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ------------------------------------------------------------------------------------------------------ data


def synthetic_latents(num: int, size: int, num_classes: int, seed: int = 0, channels: int = 4):
    """A learnable stand-in for image latents with long-range structure: two blobs of a class-specific colour at a
    random place and its point reflection through the centre, over a smooth random field. Denoising one blob is
    easier when the other is seen, so a teacher trained on them uses attention across the whole grid (a purely local
    set would make a local-attention student trivially exact). Returns ``(latents (num, channels, size, size),
    labels (num,))``; the same seed gives the same set."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=g)
    colours = torch.randn(num_classes, channels, generator=torch.Generator().manual_seed(1234))
    centre = 0.12 + 0.76 * torch.rand(num, 2, generator=g)  # (x, y) in [0, 1]
    width = 0.07 + 0.03 * torch.rand(num, 1, 1, generator=g)
    axis = (torch.arange(size) + 0.5) / size
    blobs = torch.zeros(num, size, size)
    for c in (centre, 1 - centre):
        dy = axis.view(1, -1, 1) - c[:, 1].view(-1, 1, 1)
        dx = axis.view(1, 1, -1) - c[:, 0].view(-1, 1, 1)
        blobs = blobs + torch.exp(-(dx**2 + dy**2) / (2 * width**2))
    field = F.interpolate(torch.randn(num, channels, 4, 4, generator=g), size=(size, size), mode="bicubic",
                          align_corners=False)
    latents = colours[labels].view(num, channels, 1, 1) * blobs.unsqueeze(1) * 1.5 + 0.3 * field
    return latents, labels


def train_teacher(model: DiT, latents: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 16,
                  lr: float = 1e-3, seed: int = 0, log_interval: int = 0) -> DiT:
    """Train ``model`` with DiT's objective (epsilon MSE + VLB, label dropout) on a latent set; AdamW at constant
    ``lr``. For laptop-scale teachers in tests and demos; real teachers come from the official weights."""
    diffusion = create_diffusion("")
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=g)
        x0, y = latents[idx].to(device), labels[idx].to(device)
        t = torch.randint(0, diffusion.num_timesteps, (batch_size,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        loss = diffusion.training_losses(model, x0, t, dict(y=y), noise=noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_interval and (step + 1) % log_interval == 0:
            _logger.info("teacher step %d/%d  loss %.4f", step + 1, steps, loss.item())
    return model.eval()


@torch.no_grad()
def sample_latents(model: DiT, labels: torch.Tensor, sampler: str = "ddim", steps: int = 50, cfg_scale: float = 1.5,
                   noise: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Sample latents of the given classes the way DiT's ``sample.py`` does (guided half batch against the null class
    ``num_classes``, guidance on the channels DiT's ``forward_with_cfg`` guides).

    Args:
        model: a DiT (teacher or CLEAR student) in eval mode.
        labels: (B,) class indices.
        sampler: 'ddim' (eta 0) or 'ddpm' (respaced ancestral sampling).
        steps: respaced steps.
        cfg_scale: guidance scale; 1 samples without guidance.
        noise: (B, C, H, W) starting noise; default drawn from the global RNG.

    Returns:
        (B, C, H, W) latents (the VAE's input scale: decode ``latents / 0.18215``).
    """
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    device = next(model.parameters()).device
    shape = (len(labels), model.in_channels, *_latent_hw(model))
    z = torch.randn(shape, device=device) if noise is None else noise.to(device)
    diffusion = create_diffusion(f"ddim{steps}" if sampler == "ddim" else str(steps))
    labels = labels.to(device)
    if cfg_scale > 1.0:
        z = torch.cat([z, z], 0)
        y = torch.cat([labels, torch.full_like(labels, model.y_embedder.num_classes)], 0)
        fn, kwargs = model.forward_with_cfg, dict(y=y, cfg_scale=cfg_scale)
    else:
        fn, kwargs = model.forward, dict(y=labels)
    loop = diffusion.ddim_sample_loop if sampler == "ddim" else diffusion.p_sample_loop
    out = loop(fn, z.shape, z, clip_denoised=False, model_kwargs=kwargs, progress=progress, device=device)
    return out[: len(labels)] if cfg_scale > 1.0 else out


def _latent_hw(model: DiT) -> tuple[int, int]:
    """Latent (H, W) of the model's training grid."""
    gh, gw = model.grid_size
    return gh * model.patch_size, gw * model.patch_size


def _shard_path(folder: Path, idx: int) -> Path:
    return folder / f"shard_{idx:06d}.pt"


def generate_teacher_set(teacher: DiT, folder: str | Path, num_samples: int, batch_size: int = 32,
                         sampler: str = "ddim", steps: int = 50, cfg_scale: float = 1.5, seed: int = 0,
                         progress: bool = True, amp: bool = False) -> Path:
    """Write ``num_samples`` teacher latents with random labels to ``folder`` (``meta.json`` + shards), resuming
    from the shards already there; ``amp`` samples under bfloat16 autocast on CUDA. Settings that would change the
    data (model shape, sampler, seed ...) must match the folder's ``meta.json``; otherwise a :class:`ConfigError`
    says which one differs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(num_classes=teacher.y_embedder.num_classes, latent_shape=[teacher.in_channels, *_latent_hw(teacher)],
                batch_size=batch_size, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key, value in meta.items():
            if old.get(key) != value:
                raise ConfigError(f"{folder} holds a teacher set made with {key}={old.get(key)!r}, this run asks for "
                                  f"{key}={value!r}: use another data_dir or the same settings.")
    else:  # written first, so an interrupted generation is checked when it resumes
        meta_path.write_text(json.dumps(meta, indent=1))
    device = next(teacher.parameters()).device
    shards = math.ceil(num_samples / batch_size)
    todo = [i for i in range(shards) if not _shard_path(folder, i).exists()]
    if todo:
        _logger.info("teacher set: %d of %d shards to generate in %s", len(todo), shards, folder)
    start = time.time()
    for n, idx in enumerate(todo):
        count = min(batch_size, num_samples - idx * batch_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + idx)
        labels = torch.randint(0, teacher.y_embedder.num_classes, (count,), generator=g)
        noise = torch.randn(count, teacher.in_channels, *_latent_hw(teacher), generator=g)
        torch.manual_seed(seed * 1_000_003 + idx)  # DDPM draws its per-step noise from the global RNG
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            lat = sample_latents(teacher, labels, sampler, steps, cfg_scale, noise=noise)
        tmp = _shard_path(folder, idx).with_suffix(".tmp")
        torch.save(dict(latents=lat.float().cpu(), labels=labels), tmp)
        tmp.replace(_shard_path(folder, idx))  # a shard exists only once complete
        if progress:
            done = n + 1
            eta = (time.time() - start) / done * (len(todo) - done)
            _logger.info("teacher set: shard %d/%d  (%d latents)  eta %s", done, len(todo), count,
                         format_duration(eta))
    return folder


def load_teacher_set(folder: str | Path, num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents (N, C, H, W), labels (N,))`` of a folder written by :func:`generate_teacher_set`."""
    folder = Path(folder)
    files = sorted(folder.glob("shard_*.pt"))
    if not files:
        raise ConfigError(f"{folder} holds no teacher set (no shard_*.pt files).")
    parts = [torch.load(f) for f in files]
    latents = torch.cat([p["latents"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    if num_samples is not None:
        latents, labels = latents[:num_samples], labels[:num_samples]
    return latents, labels


# ------------------------------------------------------------------------------------------------------ metric


def make_eval_triples(latents: torch.Tensor, labels: torch.Tensor, num_timesteps: int = 1000, seed: int = 0):
    """Fixed held-out (x_t, t, y) triples: the latents noised at uniformly drawn timesteps with seeded noise."""
    diffusion = create_diffusion("")
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, num_timesteps, (len(latents),), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    return diffusion.q_sample(latents, t, noise=noise), t, labels


@torch.no_grad()
def noise_prediction_errors(teacher: DiT, student: DiT, triples, batch_size: int = 32, num_buckets: int = 4,
                            num_timesteps: int = 1000) -> dict[str, float]:
    """Relative MSE ``sum |eps_s - eps_t|^2 / sum |eps_t|^2`` of the noise predictions (the first ``in_channels``
    outputs) over the triples: under ``'all'``, and per timestep bucket (``'t0-249'``, ... for 4 buckets), since
    the error of nearly clean inputs (small t) and of nearly pure noise behave very differently."""
    device = next(student.parameters()).device
    x_t, t, y = triples
    num = torch.zeros(len(x_t), dtype=torch.float64)
    den = torch.zeros(len(x_t), dtype=torch.float64)
    was_training = student.training
    student.eval()
    c = teacher.in_channels
    for i in range(0, len(x_t), batch_size):
        args = (x_t[i:i + batch_size].to(device), t[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        e_t = teacher(*args)[:, :c].float()
        e_s = student(*args)[:, :c].float()
        num[i:i + batch_size] = (e_s - e_t).pow(2).flatten(1).sum(1).double().cpu()
        den[i:i + batch_size] = e_t.pow(2).flatten(1).sum(1).double().cpu()
    student.train(was_training)
    out = {"all": (num.sum() / den.sum().clamp_min(1e-30)).item()}
    width = num_timesteps // num_buckets
    for k in range(num_buckets):
        lo, hi = k * width, (k + 1) * width if k < num_buckets - 1 else num_timesteps
        sel = (t >= lo) & (t < hi)
        if sel.any():
            out[f"t{lo}-{hi - 1}"] = (num[sel].sum() / den[sel].sum().clamp_min(1e-30)).item()
    return out


def noise_prediction_error(teacher: DiT, student: DiT, triples, batch_size: int = 32) -> float:
    """The overall relative noise-prediction error of :func:`noise_prediction_errors`."""
    return noise_prediction_errors(teacher, student, triples, batch_size)["all"]


# ------------------------------------------------------------------------------------------------------ loop


def _make_optimizer(cfg: DistillConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.opt == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.opt == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ConfigError("opt: prodigy needs the prodigyopt package (pip install prodigyopt).") from None
        return Prodigy(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, decouple=True,
                       use_bias_correction=True, safeguard_warmup=True, eps=1e-8)
    raise ConfigError(f"opt must be adamw or prodigy, got {cfg.opt!r}.")


def check_config(cfg: DistillConfig) -> None:
    """Raise :class:`ConfigError` for values no run could use."""
    _check_teacher(cfg)
    if not cfg.data_dir:
        raise ConfigError("data_dir is required: the folder where the teacher set is (or will be) written.")
    for key in ("radius", "down_factor", "num_samples", "gen_batch_size", "gen_steps", "steps", "batch_size",
                "eval_interval", "log_interval", "save_interval"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.kernel_backend not in ("auto", "triton", "torch"):
        raise ConfigError(f"kernel_backend must be auto, triton or torch, got {cfg.kernel_backend!r}.")
    if cfg.gen_sampler not in ("ddim", "ddpm"):
        raise ConfigError(f"gen_sampler must be ddim or ddpm, got {cfg.gen_sampler!r}.")
    if not 0 <= cfg.eval_samples < cfg.num_samples:
        raise ConfigError(f"eval_samples must be >= 0 and below num_samples={cfg.num_samples}, got {cfg.eval_samples}.")


def distill(cfg: DistillConfig) -> DistillResult:
    """Run a CLEAR distillation: teacher set (generated or resumed), then ``cfg.steps`` optimizer steps."""
    check_config(cfg)
    start = time.time()
    device = resolve_device(cfg.device)
    out_dir = run_dir(cfg.output, cfg.experiment or f"clear_{cfg.model}_{cfg.image_size}_r{cfg.radius}", cfg.resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "args.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    torch.manual_seed(cfg.seed)

    teacher = build_teacher(cfg, device)
    if device.type == "cuda":  # as DiT's train.py and sample.py
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    generate_teacher_set(teacher, cfg.data_dir, cfg.num_samples, cfg.gen_batch_size, cfg.gen_sampler, cfg.gen_steps,
                         cfg.gen_cfg_scale, cfg.seed, amp=cfg.amp)
    latents, labels = load_teacher_set(cfg.data_dir, cfg.num_samples)
    n_train = len(latents) - cfg.eval_samples
    triples = make_eval_triples(latents[n_train:], labels[n_train:], seed=cfg.seed + 1)
    latents, labels = latents[:n_train], labels[:n_train]

    student = build_student(teacher, cfg.radius, cfg.down_factor, cfg.kernel_backend).train()
    student.y_embedder.dropout_prob = 0.0  # labels are dropped below, identically for teacher and student
    if cfg.grad_checkpointing:
        student.set_grad_checkpointing(True)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = _make_optimizer(cfg, params)
    layers = list(range(0, len(teacher.blocks), 4)) if cfg.attn_layers is None else [int(i) for i in cfg.attn_layers]
    taps_s, taps_t = AttentionTaps(student, layers), AttentionTaps(teacher, layers)
    diffusion = create_diffusion("")
    amp = cfg.amp and device.type == "cuda"
    drop_p = teacher.y_embedder.dropout_prob
    null = teacher.y_embedder.num_classes

    step, error_before, history = 0, None, []
    if cfg.resume:
        ckpt = torch.load(cfg.resume, map_location="cpu", weights_only=False)
        missing = student.load_state_dict(ckpt["student"], strict=False)
        if missing.unexpected_keys:
            raise ConfigError(f"{cfg.resume} does not fit this student: unexpected keys {missing.unexpected_keys[:5]}.")
        opt.load_state_dict(ckpt["optimizer"])
        step, error_before, history = ckpt["step"], ckpt["error_before"], ckpt.get("history", [])
        _logger.info("resumed %s at step %d", cfg.resume, step)
    if error_before is None:
        error_before = noise_prediction_error(teacher, student, triples)
        _logger.info("held-out noise-prediction error of the undistilled student: %.4f", error_before)
    error = history[-1]["error"] if history else error_before

    g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    t0, seen = time.time(), 0
    while step < cfg.steps:
        idx = torch.randint(0, n_train, (cfg.batch_size,), generator=g)
        x0, y = latents[idx].to(device), labels[idx].to(device)
        drop = torch.rand(cfg.batch_size, generator=g).to(device) < drop_p
        y = torch.where(drop, torch.full_like(y, null), y)
        t = torch.randint(0, diffusion.num_timesteps, (cfg.batch_size,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        outputs: dict[str, torch.Tensor] = {}

        def student_fn(x, tt, outputs=outputs, **kw):
            outputs["s"] = student(x, tt, **kw)
            return outputs["s"]

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with taps_s:
                l_diff = diffusion.training_losses(student_fn, x0, t, dict(y=y), noise=noise)["loss"].mean()
            with torch.no_grad(), taps_t:
                out_t = teacher(diffusion.q_sample(x0, t, noise=noise), t, y)
        l_pred = F.mse_loss(outputs["s"].float(), out_t.float())
        l_attn = torch.stack([F.mse_loss(taps_s.outputs[i].float(), taps_t.outputs[i].float()) for i in layers]).mean()
        loss = cfg.loss_diff_weight * l_diff + cfg.loss_pred_weight * l_pred + cfg.loss_attn_weight * l_attn
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        step += 1
        seen += cfg.batch_size
        last = step == cfg.steps
        if step % cfg.log_interval == 0 or last:
            rate = seen / max(time.time() - t0, 1e-9)
            _logger.info("step %d/%d  loss %.4f (diff %.4f pred %.4f attn %.4f)  %.3g latents/s  eta %s", step,
                         cfg.steps, loss.item(), l_diff.item(), l_pred.item(), l_attn.item(), rate,
                         format_duration((cfg.steps - step) * cfg.batch_size / rate))
        if step % cfg.eval_interval == 0 or last:
            errors = noise_prediction_errors(teacher, student, triples)
            error = errors["all"]
            history.append(dict(step=step, error=error, loss=loss.item(), errors=errors))
            by_t = "  ".join(f"{k} {v:.4f}" for k, v in errors.items() if k != "all")
            _logger.info("eval at step %d: held-out noise-prediction error %.4f (undistilled %.4f); by timestep: %s",
                         step, error, error_before, by_t)
        if step % cfg.save_interval == 0 or last:
            _save(out_dir / "last.pth", cfg, student, opt, step, error_before, history)
    taps_s.remove()
    taps_t.remove()
    ckpt_path = out_dir / "last.pth"
    if not ckpt_path.exists():
        _save(ckpt_path, cfg, student, opt, step, error_before, history)
    return DistillResult(out_dir, step, error_before, error, ckpt_path, time.time() - start)


def _save(path: Path, cfg: DistillConfig, student: DiT, opt, step: int, error_before: float, history: list) -> None:
    """The trainable part of the student (what CLEAR releases), the optimizer and the run state; written atomically."""
    trainable = {k: v for k, v in student.state_dict().items() if is_clear_trainable(k)}
    payload = dict(student=trainable, optimizer=opt.state_dict(), step=step, error_before=error_before,
                   history=history, config=dataclasses.asdict(cfg))
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_student(checkpoint: str | Path, teacher: DiT | None = None, **teacher_overrides: Any) -> DiT:
    """Rebuild a distilled CLEAR student from a ``distill_clear.py`` checkpoint: the teacher (given, or built from the
    run's settings, which ``teacher_overrides`` may change, e.g. ``teacher_path``), converted, then the distilled
    weights loaded. Returns it in eval mode."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "student" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{checkpoint} is not a distill_clear.py checkpoint (it has no 'student' and 'config').")
    cfg = DistillConfig(**{**ckpt["config"], **teacher_overrides})
    if teacher is None:
        teacher = build_teacher(cfg, torch.device("cpu"))
    student = build_student(teacher, cfg.radius, cfg.down_factor, cfg.kernel_backend)
    result = student.load_state_dict(ckpt["student"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint} does not fit the student: unexpected keys {result.unexpected_keys[:5]}.")
    return student.eval()
