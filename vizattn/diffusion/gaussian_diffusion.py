"""Gaussian diffusion used to train and sample DiT (the IDDPM / ADM formulation).

This is vizattn's implementation of the process defined by facebookresearch/DiT ``diffusion/`` (itself derived from
openai/improved-diffusion and guided-diffusion), restricted to what DiT uses and giving the same numbers:

- beta schedules "linear" (1e-4 to 0.02, scaled by 1000 / steps) and "squaredcos_cap_v2", computed in float64;
- timestep respacing ("" = all steps, "250", "ddim25", "10,15,20" sections); a respaced process has betas
  ``1 - abar[t_k] / abar[t_{k-1}]`` over the kept steps, and the model is always called with the original timestep
  numbers (respaced index k -> kept step t_k), as the official wrapper does;
- epsilon or x0 prediction, learned-range / fixed-large / fixed-small variance, losses MSE (+ VLB when the variance is
  learned, on the detached mean), rescaled MSE, rescaled KL;
- ancestral (DDPM) and DDIM samplers.

Schedules are float64 numpy arrays; as in the official code every per-timestep coefficient is cast to float32 when it
is gathered, so the arithmetic on tensors is float32 (or the input dtype if wider).

Randomness: the samplers draw their noise from the global torch generator in the official order (the initial noise
if none is given, then one ``torch.randn_like(x)`` per step after the model call; DDIM draws it even when
``eta == 0``), so a seeded run reproduces the official sampler's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["GaussianDiffusion", "create_diffusion", "get_named_beta_schedule", "space_timesteps"]

_MEAN_TYPES = ("epsilon", "start_x")
_VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
_LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Beta schedule by name, float64 of shape (num_steps,).

    Args:
        name: "linear" (Ho et al., 1e-4 .. 0.02 at 1000 steps, endpoints scaled by 1000 / num_steps) or
            "squaredcos_cap_v2" (Nichol & Dhariwal's cosine schedule, betas capped at 0.999).
        num_steps: number of diffusion steps.
    """
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)]
        )
    raise ValueError(f"Unknown noise schedule {name!r}; use 'linear' or 'squaredcos_cap_v2'.")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Steps of the original process kept by a respacing.

    Args:
        num_timesteps: steps of the original process.
        section_counts: "ddimN" (the DDIM paper's fixed integer stride giving exactly N steps), a comma-separated
            string or a list of counts: the process is cut into that many near-equal sections (the first
            ``num_timesteps % len`` sections one step longer) and each section keeps its count of evenly spaced steps,
            first and last included (positions rounded with Python's round-half-even).

    Returns:
        The kept step indices.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"Cannot take exactly {wanted} of {num_timesteps} steps with an integer stride.")
        section_counts = [int(part) for part in section_counts.split(",")]
    base, extra = divmod(num_timesteps, len(section_counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(section_counts):
        size = base + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"Cannot take {count} steps from a section of {size} steps.")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.dim())))


def _normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    # KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element. The terms nearly cancel in float32, so they are
    # summed in the official order to reproduce its rounding.
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation of the standard normal CDF used by the IDDPM decoder likelihood.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def _discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    # Log-probability of the 8-bit bin [x - 1/255, x + 1/255] of data scaled to [-1, 1], the outer bins open-ended.
    # DiT applies it to VAE latents unchanged (only the t = 0 term of the VLB uses it).
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """A discrete Gaussian diffusion process, optionally respaced, with DiT's losses and samplers.

    Args:
        betas: (T,) betas of the original process, in (0, 1].
        use_timesteps: original steps to keep (all when ``None``); the process then has ``len(use_timesteps)`` steps.
        model_mean_type: "epsilon" or "start_x", what the model's first ``C`` channels predict.
        model_var_type: "learned_range" (the model's last ``C`` channels v in [-1, 1] interpolate the log variance
            between the posterior variance (v = -1) and beta (v = 1)), "fixed_large" or "fixed_small".
        loss_type: "mse", "rescaled_mse", "kl" or "rescaled_kl".

    Attributes:
        num_timesteps: steps of this (respaced) process.
        timestep_map: (num_timesteps,) int64, the original step of each respaced index.
        betas, alphas_cumprod, ...: float64 numpy schedules of the respaced process.

    A ``model`` is any callable ``model(x, t, **model_kwargs)`` returning (B, C, ...) or, with a learned variance,
    (B, 2C, ...); ``t`` holds original step numbers.
    """

    def __init__(
        self,
        betas: Iterable[float] | np.ndarray,
        use_timesteps: Iterable[int] | None = None,
        *,
        model_mean_type: str = "epsilon",
        model_var_type: str = "learned_range",
        loss_type: str = "mse",
    ):
        for value, allowed, what in (
            (model_mean_type, _MEAN_TYPES, "model_mean_type"),
            (model_var_type, _VAR_TYPES, "model_var_type"),
            (loss_type, _LOSS_TYPES, "loss_type"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}.")
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type

        base = np.asarray(betas, dtype=np.float64)
        if base.ndim != 1 or not ((base > 0).all() and (base <= 1).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1].")
        self.original_num_steps = len(base)
        kept = sorted(set(range(len(base)) if use_timesteps is None else use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= len(base):
            raise ValueError(f"use_timesteps must be non-empty steps in 0..{len(base) - 1}.")
        if len(kept) < 2:
            raise ValueError("A diffusion needs at least 2 timesteps (a 1-step process has zero posterior variance).")
        # The official code re-derives betas from the cumulative products even without respacing; so do we, so that
        # the float64 schedules agree bit for bit.
        base_alphas_cumprod = np.cumprod(1.0 - base)
        new_betas, previous = [], 1.0
        for step in kept:
            new_betas.append(1.0 - base_alphas_cumprod[step] / previous)
            previous = base_alphas_cumprod[step]
        self.timestep_map = torch.tensor(kept, dtype=torch.int64)
        self._set_schedule(np.array(new_betas, dtype=np.float64))
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    def _set_schedule(self, betas: np.ndarray) -> None:
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # Posterior q(x_{t-1} | x_t, x_0). Its variance is 0 at t = 0, so the log is taken with the t = 1 value there.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)
        # Fixed-large variance is beta, except at t = 0 where the posterior variance of t = 1 gives a better decoder.
        self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Gather schedule ``name`` at (B,) indices ``t``, cast to float32, shaped (B, 1, ...) with ``ndim`` dims."""
        key = (name, t.device)
        table = self._tables.get(key)
        if table is None:
            table = torch.from_numpy(getattr(self, name)).float().to(t.device)
            self._tables[key] = table
        return table[t].view(-1, *([1] * (ndim - 1)))

    def _call_model(self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> Any:
        original_t = self.timestep_map.to(t.device)[t]
        return model(x, original_t, **kwargs)

    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0), each (B, C, ...); ``t`` (B,), 0 means one step."""
        n = x_start.dim()
        mean = self._extract("sqrt_alphas_cumprod", t, n) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, n).expand_as(x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, n).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

        Args:
            x_start: (B, C, ...) clean data.
            t: (B,) int64 step indices of this process.
            noise: (B, C, ...) standard normal noise; drawn with ``torch.randn_like`` when ``None``.

        Returns:
            (B, C, ...) noisy data.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}.")
        n = x_start.dim()
        return (
            self._extract("sqrt_alphas_cumprod", t, n) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, n) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of the posterior q(x_{t-1} | x_t, x_0), each (B, C, ...)."""
        n = x_t.dim()
        mean = self._extract("posterior_mean_coef1", t, n) * x_start + self._extract("posterior_mean_coef2", t, n) * x_t
        variance = self._extract("posterior_variance", t, n).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, n).expand_as(x_t)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = x_t.dim()
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, n) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, n) * eps
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        n = x_t.dim()
        return (self._extract("sqrt_recip_alphas_cumprod", t, n) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, n
        )

    def _p_from_output(
        self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a model output: 'mean', 'variance', 'log_variance', 'pred_xstart'."""
        b, c = x.shape[:2]
        n = x.dim()
        if self.model_var_type == "learned_range":
            if output.shape != (b, 2 * c, *x.shape[2:]):
                raise ValueError(
                    f"A learned-variance diffusion needs a model output of shape {(b, 2 * c, *x.shape[2:])}, got "
                    f"{tuple(output.shape)}."
                )
            output, var_values = output.split(c, dim=1)
            min_log = self._extract("posterior_log_variance_clipped", t, n)
            max_log = self._extract("log_betas", t, n)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if output.shape != x.shape:
                raise ValueError(f"The model output shape {tuple(output.shape)} differs from x {tuple(x.shape)}.")
            if self.model_var_type == "fixed_large":
                var_name, log_name = "fixed_large_variance", "fixed_large_log_variance"
            else:
                var_name, log_name = "posterior_variance", "posterior_log_variance_clipped"
            variance = self._extract(var_name, t, n).expand_as(x)
            log_variance = self._extract(log_name, t, n).expand_as(x)
        if self.model_mean_type == "start_x":
            pred_xstart = output
        else:
            pred_xstart = self._predict_xstart_from_eps(x, t, output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_mean_variance(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the model and return p(x_{t-1} | x_t).

        Args:
            model: callable ``(x, original_t, **model_kwargs)``.
            x: (B, C, ...) samples at step ``t``.
            t: (B,) int64 step indices of this process.
            clip_denoised: clamp the predicted x_0 to [-1, 1] (pixel-space data; DiT's latents use False).
            model_kwargs: extra model arguments, e.g. ``{'y': labels}``.

        Returns:
            'mean', 'variance', 'log_variance', 'pred_xstart', each (B, C, ...).
        """
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}.")
        output = self._call_model(model, x, t, model_kwargs or {})
        return self._p_from_output(output, x, t, clip_denoised)

    def p_sample(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} ('sample', 'pred_xstart'); no noise is added where t == 0."""
        out = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        noise = torch.randn_like(x)
        nonzero = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step (Song et al., eq. 12) x_t -> x_{t-1} ('sample', 'pred_xstart'); ``eta=0`` is deterministic."""
        out = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        # Epsilon is re-derived from x_0 so that x_0-predicting models work too.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        n = x.dim()
        alpha_bar = self._extract("alphas_cumprod", t, n)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, n)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        # Drawn even when eta == 0, to consume the generator like the official sampler does.
        noise = torch.randn_like(x)
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, *([1] * (n - 1)))
        return {"sample": mean + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}

    def _loop(
        self,
        step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        model: Callable[..., torch.Tensor],
        shape: Sequence[int],
        noise: torch.Tensor | None,
        device: torch.device | str | None,
        progress: bool,
    ) -> torch.Tensor:
        if not isinstance(shape, (tuple, list, torch.Size)):
            raise ValueError(f"shape must be a tuple or list, got {type(shape).__name__}.")
        if device is None:
            device = noise.device if noise is not None else _model_device(model)
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise shape {tuple(noise.shape)} differs from shape {tuple(shape)}.")
            x = noise
        else:
            x = torch.randn(*shape, device=device)
        steps: Iterable[int] = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, total=self.num_timesteps)
        with torch.no_grad():
            for i in steps:
                x = step(x, torch.full((shape[0],), i, dtype=torch.int64, device=device))["sample"]
        return x

    def p_sample_loop(
        self,
        model: Callable[..., torch.Tensor],
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Ancestral sampling through all steps of this process (``sample.py`` uses respacing "250").

        Args:
            model: callable ``(x, original_t, **model_kwargs)``, e.g. ``dit.forward_with_cfg`` (in eval mode).
            shape: (B, C, H, W) of the samples.
            noise: (B, C, H, W) starting noise x_T; drawn with ``torch.randn`` when ``None``.
            clip_denoised: clamp predicted x_0 to [-1, 1] (False for latents).
            model_kwargs: extra model arguments, e.g. ``{'y': labels, 'cfg_scale': 4.0}``.
            device: where to sample; default: the noise's device, else the model's, else the CPU.
            progress: show a tqdm bar.

        Returns:
            (B, C, H, W) samples, without gradient.
        """

        def step(x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.p_sample(model, x, t, clip_denoised, model_kwargs)

        return self._loop(step, model, shape, noise, device, progress)

    def ddim_sample_loop(
        self,
        model: Callable[..., torch.Tensor],
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """DDIM sampling through all steps of this process (use a "ddimN" or "N" respacing); arguments as
        :meth:`p_sample_loop`, plus ``eta`` (0 = deterministic DDIM, 1 = DDPM-like noise)."""

        def step(x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.ddim_sample(model, x, t, clip_denoised, model_kwargs, eta)

        return self._loop(step, model, shape, noise, device, progress)

    def _vb_bits(
        self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ) -> torch.Tensor:
        """Per-sample VLB term in bits: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or the decoder NLL at t == 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self._p_from_output(output, x_t, t, clip_denoised)
        kl = _mean_flat(_normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """DiT's training loss at steps ``t``.

        With the MSE losses: 'mse' is the mean squared error of the prediction (epsilon or x_0); with a learned
        variance 'vb' is the VLB term (bits, see ``_vb_bits``) computed with the mean prediction detached, so it
        trains only the variance, multiplied by num_timesteps / 1000 for "rescaled_mse"; 'loss' = mse + vb. With the
        KL losses 'loss' is the VLB term (times num_timesteps for "rescaled_kl").

        Args:
            model: callable ``(x, original_t, **model_kwargs)``.
            x_start: (B, C, ...) clean data.
            t: (B,) int64 step indices of this process (``train.py`` draws them uniformly).
            model_kwargs: extra model arguments, e.g. ``{'y': labels}``.
            noise: (B, C, ...) the noise to remove; drawn with ``torch.randn_like`` when ``None``.

        Returns:
            Per-sample (B,) tensors: 'loss', and 'mse' / 'vb' where they apply.
        """
        if t.shape != (x_start.shape[0],):
            raise ValueError(f"t must have shape ({x_start.shape[0]},), got {tuple(t.shape)}.")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        output = self._call_model(model, x_t, t, model_kwargs or {})
        terms: dict[str, torch.Tensor] = {}
        if self.loss_type in ("kl", "rescaled_kl"):
            terms["loss"] = self._vb_bits(output, x_start, x_t, t, clip_denoised=False)
            if self.loss_type == "rescaled_kl":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        prediction = output
        if self.model_var_type == "learned_range":
            c = x_t.shape[1]
            if output.shape != (x_t.shape[0], 2 * c, *x_t.shape[2:]):
                raise ValueError(
                    f"A learned-variance diffusion needs a model output of shape {(x_t.shape[0], 2 * c)} + spatial, "
                    f"got {tuple(output.shape)}."
                )
            prediction, var_values = output.split(c, dim=1)
            # The VLB trains the variance only: the mean prediction enters it detached.
            frozen = torch.cat([prediction.detach(), var_values], dim=1)
            terms["vb"] = self._vb_bits(frozen, x_start, x_t, t, clip_denoised=False)
            if self.loss_type == "rescaled_mse":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = noise if self.model_mean_type == "epsilon" else x_start
        if prediction.shape != target.shape:
            raise ValueError(
                f"The model prediction shape {tuple(prediction.shape)} differs from {tuple(target.shape)}."
            )
        terms["mse"] = _mean_flat((target - prediction) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms


def _model_device(model: Callable[..., Any]) -> torch.device:
    # Accept modules and bound methods of modules (``dit.forward_with_cfg``); plain functions sample on the CPU.
    owner = getattr(model, "__self__", model)
    if isinstance(owner, torch.nn.Module):
        for tensor in owner.parameters():
            return tensor.device
    return torch.device("cpu")


def create_diffusion(
    timestep_respacing: str | int | Sequence[int] | None = "",
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
) -> GaussianDiffusion:
    """The diffusion of DiT's ``train.py`` / ``sample.py`` (official ``create_diffusion`` defaults).

    Args:
        timestep_respacing: "" or ``None`` for all ``diffusion_steps`` (training), "250" or 250 (``sample.py``),
            "ddim25", "10,15,20" (steps per equal section), or a list of section counts.
        noise_schedule: "linear" or "squaredcos_cap_v2".
        use_kl: train on the rescaled VLB only.
        sigma_small: with ``learn_sigma=False``, use the posterior variance instead of beta.
        predict_xstart: the model predicts x_0 instead of epsilon.
        learn_sigma: the model predicts the variance interpolation (DiT: True).
        rescale_learned_sigmas: scale the VLB term by num_timesteps / 1000 (loss "rescaled_mse").
        diffusion_steps: steps of the original process.

    Returns:
        The (respaced) :class:`GaussianDiffusion`.
    """
    betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = "rescaled_kl"
    elif rescale_learned_sigmas:
        loss_type = "rescaled_mse"
    else:
        loss_type = "mse"
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    elif isinstance(timestep_respacing, int):
        timestep_respacing = [timestep_respacing]
    if learn_sigma:
        var_type = "learned_range"
    else:
        var_type = "fixed_small" if sigma_small else "fixed_large"
    return GaussianDiffusion(
        betas,
        space_timesteps(diffusion_steps, timestep_respacing),
        model_mean_type="start_x" if predict_xstart else "epsilon",
        model_var_type=var_type,
        loss_type=loss_type,
    )
