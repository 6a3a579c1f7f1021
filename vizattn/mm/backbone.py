"""One mmdet/mmseg backbone for every vizattn model: a timm ``features_only`` model plus the official dense extras.

The official dense-prediction backbones of the families differ from the classification models in a few ways that are
data, not code: which norms sit on the outputs, and which modules make up the stem and each stage (for
``frozen_stages``). :data:`DENSE_FAMILIES` holds them, one entry per family; a family without an entry gets no output
norms and timm's usual layout (the stem is the top-level module holding the pretrained cfg's ``first_conv``, stage ``i``
is the module that produces feature ``i``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import timm
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import update_init_info
from mmengine.registry import MODELS
from timm.layers import get_norm_layer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import vizattn  # noqa: F401  (registers the vizattn models with timm)
from vizattn.backbones._helpers import read_checkpoint, unwrap_state_dict

__all__ = ["VizAttnBackbone", "DenseFamily", "DENSE_FAMILIES"]


@dataclasses.dataclass(frozen=True)
class DenseFamily:
    """How a family's official dense-prediction backbone differs from its timm features model.

    Attributes:
        out_norm: timm norm layer name (``timm.layers.get_norm_layer``) applied to each output, or None. The output
            norms only normalise what is returned: the un-normalised map feeds the next stage.
        out_norm_kwargs: keyword arguments of the output norm (eps, ...).
        out_norm_name: module name of output ``i``'s norm, with ``{i}`` for the stage index: ``'extra_norms.{i}'``
            keeps the official ``extra_norms.0.weight`` keys (a container), ``'norm{i}'`` gives ``norm0.weight``.
        stem: module names (of the timm model) that run before stage 0; ``frozen_stages >= 0`` freezes them.
        stage: module names of stage ``i`` with ``{i}`` for the index (``{i1}`` for ``i + 1``, for families whose
            official modules count from 1), its downsampling included.
    """

    out_norm: str | None = None
    out_norm_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_norm_name: str = "norm{i}"
    stem: tuple[str, ...] | None = None
    stage: tuple[str, ...] | None = None


DENSE_FAMILIES: dict[str, DenseFamily] = {
    # Official BiFormer_mm (object_detection|semantic_segmentation/models_mm/biformer_mm.py): timm LayerNorm2d(eps
    # 1e-6) on each output as `extra_norms`; stage i runs downsample_layers[i] then stages[i], downsample_layers[0]
    # being the conv stem.
    "biformer": DenseFamily(
        out_norm="layernorm2d",
        out_norm_kwargs=dict(eps=1e-6),
        out_norm_name="extra_norms.{i}",
        stem=("downsample_layers.0",),
        stage=("downsample_layers.{i}", "stages.{i}"),
    ),
    # Official NAT/DiNAT dense backbones (detection|segmentation/nat.py): nn.LayerNorm (eps 1e-5) on each output as
    # norm0..norm3; level i runs its blocks, is output, then downsamples for level i + 1 (the downsampler belongs to i).
    "nat": DenseFamily(
        out_norm="layernorm2d",
        out_norm_kwargs=dict(eps=1e-5),
        out_norm_name="norm{i}",
        stem=("patch_embed",),
        stage=("levels.{i}",),
    ),
    # Official VAN-Segmentation `VAN`: the classification module tree (patch_embed{i+1}, block{i+1}, norm{i+1},
    # counted from 1) and its outputs are the stage norms' outputs, so no extra output norm. Its norm{i} use
    # LayerNorm's default eps 1e-5 (classification: 1e-6): the configs pass norm_eps=1e-5.
    "van": DenseFamily(
        out_norm=None,
        stem=("patch_embed1",),
        stage=("patch_embed{i1}", "block{i1}", "norm{i1}"),
    ),
}

_TIMM_PREFIX = "timm://"


@MODELS.register_module()
class VizAttnBackbone(BaseModule):
    """A vizattn (or any timm) model as an mmdet/mmseg backbone: a tuple of NCHW feature maps, strides 4 to 32.

    Wraps ``timm.create_model(model_name, features_only=True, feature_cls='getter', out_indices=...)``, so stages after
    the last output and the classification norm and head are not built, and adds the family's output norms
    (:data:`DENSE_FAMILIES`).

    Args:
        model_name: a registered model, e.g. ``'biformer_s'``.
        out_indices: stages whose outputs are returned, in order.
        frozen_stages: -1 freezes nothing, 0 the stem, ``k >= 1`` the stem and stages ``0..k-1`` with their output
            norms: no gradients, and eval mode (BatchNorm statistics, dropout, drop path) whatever ``train()`` says.
        norm_eval: keep every BatchNorm of the backbone in eval mode during training (running statistics frozen, the
            affine parameters still train), as detection does with small per-GPU batches.
        with_cp: gradient checkpointing of the stages (timm's ``set_grad_checkpointing``): less memory, slower.
        pretrained: a checkpoint, as ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)`` (mmseg's segmentors
            pass their ``pretrained`` argument here); True means timm's default weights of ``model_name``.
        init_cfg: mmengine init configs. ``dict(type='Pretrained', checkpoint=...)`` takes an official classification
            checkpoint file as released (the family's ``checkpoint_filter_fn`` unwraps and renames it, the classifier
            is dropped) or ``'timm://<model>.<tag>'`` for the weights in timm's pretrained cfg (a download). With
            ``prefix='backbone.'`` it takes this backbone's weights out of a detector or segmentor checkpoint instead.
            The checkpoint is loaded after every other initialisation, at the end of :meth:`init_weights`.
        **model_kwargs: passed to the model, e.g. ``n_win=16, auto_pad=True, drop_path_rate=0.2``.

    State dict: the timm model under ``body.model.`` (the official key names after it), the output norms under their
    family's names (``extra_norms.{i}`` for BiFormer).
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        pretrained: str | bool | None = None,
        init_cfg: dict | list[dict] | None = None,
        **model_kwargs: Any,
    ):
        init_cfgs = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
        checkpoints = [c for c in init_cfgs if c.get("type") == "Pretrained"]
        if pretrained is True:
            pretrained = f"{_TIMM_PREFIX}{model_name}"
        if pretrained:
            checkpoints.append(dict(type="Pretrained", checkpoint=pretrained))
        if len(checkpoints) > 1:
            raise ValueError(
                f"VizAttnBackbone: give one checkpoint, got {len(checkpoints)} (init_cfg Pretrained entries and "
                f"pretrained={pretrained!r})."
            )
        # mmengine's own Pretrained init would torch.load the file tensors-only (torch >= 2.6 default; the official
        # files pickle their args) and load it non-strictly into other key names; this class loads it instead.
        others = [c for c in init_cfgs if c.get("type") != "Pretrained"]
        super().__init__(init_cfg=others or None)
        self._checkpoint = checkpoints[0] if checkpoints else None

        if not timm.is_model(model_name):
            raise ValueError(
                f"VizAttnBackbone: unknown model {model_name!r}; vizattn models are {vizattn.list_models()} (timm "
                "models with forward_intermediates work too)."
            )
        self.model_name = model_name
        self.out_indices = tuple(int(i) for i in out_indices)
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = norm_eval
        self._model_kwargs = dict(model_kwargs)

        self.body = timm.create_model(
            model_name, features_only=True, feature_cls="getter", out_indices=self.out_indices, **model_kwargs
        )
        model = self.body.model
        self.out_indices = tuple(self.body.out_indices)
        self.out_channels = tuple(self.body.feature_info.channels())
        family = DENSE_FAMILIES.get(type(model).__module__.rsplit(".", 1)[-1], DenseFamily())

        self._out_norm_names: list[str | None] = []
        for i, channels in zip(self.out_indices, self.out_channels):
            if family.out_norm is None:
                self._out_norm_names.append(None)
                continue
            norm = get_norm_layer(family.out_norm)(channels, **family.out_norm_kwargs)
            name = family.out_norm_name.format(i=i)
            parent, _, leaf = name.rpartition(".")
            if parent:
                if not hasattr(self, parent):
                    self.add_module(parent, nn.ModuleDict())
                getattr(self, parent)[leaf] = norm
            else:
                self.add_module(name, norm)
            self._out_norm_names.append(name)

        self._frozen = self._frozen_modules(family, model)
        for module in self._frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False
        if with_cp:
            model.set_grad_checkpointing(True)

    def _frozen_modules(self, family: DenseFamily, model: nn.Module) -> list[nn.Module]:
        """The modules ``frozen_stages`` freezes, in forward order."""
        n_stages = len(model.feature_info)
        if not -1 <= self.frozen_stages <= n_stages:
            raise ValueError(
                f"VizAttnBackbone: frozen_stages={self.frozen_stages} must be in [-1, {n_stages}] for "
                f"{self.model_name} with out_indices {self.out_indices} ({n_stages} stages are built)."
            )
        if self.frozen_stages < 0:
            return []
        if family.stem is not None:
            names = list(family.stem)
        else:
            first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv", "")
            names = [first_conv.split(".")[0]]
        for i in range(self.frozen_stages):
            if family.stage is not None:
                names += [n.format(i=i, i1=i + 1) for n in family.stage]
            else:
                names.append(model.feature_info[i]["module"])
        modules = [model.get_submodule(n) for n in dict.fromkeys(names) if n]
        for i, name in zip(self.out_indices, self._out_norm_names):
            if name is not None and i < self.frozen_stages:
                modules.append(self.get_submodule(name))
        return modules

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W) images -> one (N, C_i, H/2^(i+2), W/2^(i+2)) map per out index (rounded up), NCHW."""
        feats = self.body(x)
        return tuple(
            f if name is None else self.get_submodule(name)(f) for f, name in zip(feats, self._out_norm_names)
        )

    def train(self, mode: bool = True) -> VizAttnBackbone:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def init_weights(self) -> None:
        """mmengine's initialisation (other init_cfg entries, children), then the checkpoint, so nothing undoes it."""
        first = not self.is_init
        super().init_weights()
        if first and self._checkpoint is not None:
            self.load_checkpoint(self._checkpoint["checkpoint"], prefix=self._checkpoint.get("prefix"))
            if hasattr(self, "_params_init_info"):
                update_init_info(self, init_info=f"Loaded from {self._checkpoint['checkpoint']}")

    def load_checkpoint(self, checkpoint: str, prefix: str | None = None) -> None:
        """Load backbone weights (see ``init_cfg`` in the class docstring for what ``checkpoint`` may be).

        Every parameter and buffer of the timm model must come from the checkpoint (a ValueError names the missing
        keys); keys the features model does not build (classification norm and head, stages after the last output)
        are dropped. The output norms keep their initialisation unless ``prefix`` loads a whole backbone.
        """
        if prefix:
            self._load_own_layout(checkpoint, prefix)
            return
        if checkpoint.startswith(_TIMM_PREFIX):
            name = checkpoint[len(_TIMM_PREFIX) :]
            if name.split(".", 1)[0] != self.model_name:
                raise ValueError(
                    f"VizAttnBackbone: checkpoint {checkpoint!r} is for another model than {self.model_name!r}."
                )
            full = timm.create_model(name, pretrained=True, **self._model_kwargs)
        else:
            path = os.path.expanduser(checkpoint)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"VizAttnBackbone: checkpoint {checkpoint!r} is not a file (give a local path, or "
                    f"'{_TIMM_PREFIX}{self.model_name}.<tag>' for timm's pretrained weights)."
                )
            # timm's loader runs the family's checkpoint_filter_fn and its classifier/in_chans adaptation on the full
            # classification model; the features model then takes the keys it has.
            full = timm.create_model(
                self.model_name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **self._model_kwargs
            )
        source = full.state_dict()
        target = self.body.model.state_dict()
        missing = [k for k in target if k not in source]
        if missing:
            raise ValueError(
                f"VizAttnBackbone: {checkpoint} lacks {len(missing)} keys of {self.model_name} (e.g. {missing[:3]})."
            )
        self.body.model.load_state_dict({k: source[k] for k in target}, strict=True)
        dropped = sorted(k for k in source if k not in target)
        print_log(
            f"VizAttnBackbone: loaded {len(target)} tensors of {self.model_name} from {checkpoint}; not used by the "
            f"features model: {len(dropped)} ({', '.join(sorted({k.split('.')[0] for k in dropped})) or 'none'}).",
            logger="current",
        )

    def _load_own_layout(self, checkpoint: str, prefix: str) -> None:
        state_dict = unwrap_state_dict(read_checkpoint(os.path.expanduser(checkpoint)), keys=("state_dict",))
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f"VizAttnBackbone: no key of {checkpoint} starts with prefix {prefix!r}.")
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        if missing:
            raise ValueError(
                f"VizAttnBackbone: {checkpoint} (prefix {prefix!r}) lacks {len(missing)} keys of this backbone (e.g. "
                f"{missing[:3]}); prefix loading takes a checkpoint of a VizAttnBackbone with the same model."
            )
        if unexpected:
            print_log(f"VizAttnBackbone: ignored {len(unexpected)} unexpected keys of {checkpoint}.", logger="current")
