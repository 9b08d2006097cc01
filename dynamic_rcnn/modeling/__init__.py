"""detectron2's ``build_model``, with torchvision's deformable convolution where detectron2 has no compiled ops."""
from .deform_conv import build_model, deformable_fallback

__all__ = ["build_model", "deformable_fallback"]
