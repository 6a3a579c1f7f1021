"""vizattn: efficient attention blocks, timm backbones and Triton kernels for vision.

Importing the package registers every vizattn model with timm, so ``timm.create_model("biformer_s")`` works.
"""

from vizattn import backbones  # noqa: F401  (registers the models with timm)
from vizattn.backbones import list_models

__version__ = "0.1.0"
__all__ = ["list_models", "__version__"]
