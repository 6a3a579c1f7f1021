"""OpenMMLab integration: vizattn backbones in mmdet 3.x and mmsegmentation 1.x.

Importing this package registers :class:`VizAttnBackbone` in mmengine's root ``MODELS`` registry, which the mmdet and
mmseg registries fall back to, so a config only needs::

    custom_imports = dict(imports=["vizattn.mm"], allow_failed_imports=False)
    model = dict(backbone=dict(type="VizAttnBackbone", model_name="biformer_s", n_win=16, ...))

Needs the ``mm`` extra (``tools/install_mm.sh`` installs it); ``import vizattn`` alone never imports OpenMMLab code.
"""

try:
    import mmengine  # noqa: F401
except ImportError as err:
    raise ImportError(
        "vizattn.mm needs the OpenMMLab stack (mmengine, mmcv with ops, mmdet, mmsegmentation): run `make mm`, or "
        "tools/install_mm.sh with your environment's python (see docs/dense.md)."
    ) from err

from vizattn.mm.backbone import DENSE_FAMILIES, DenseFamily, VizAttnBackbone  # noqa: E402

__all__ = ["VizAttnBackbone", "DenseFamily", "DENSE_FAMILIES"]
