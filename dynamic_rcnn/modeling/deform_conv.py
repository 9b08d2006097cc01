"""
Deformable convolution (DCNv1, and the modulated DCNv2) for detectron2 installs without the compiled
ops of ``detectron2._C``, by ``torchvision.ops.deform_conv2d``, and :func:`build_model`, which uses
them only where it has to.

A pure-Python detectron2 replaces ``DeformConv`` / ``ModulatedDeformConv`` with placeholders that raise
when built, so a ResNet with ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` cannot even be constructed.
torchvision's op computes the same thing (detectron2's own CPU forward of ``DeformConv`` calls it), on
CPU and GPU, with autograd. The classes here take detectron2's constructor arguments and have its
parameters (``weight``, ``bias`` where it has one, ``norm.*``), so checkpoints load either way.

Conventions, those of detectron2's CUDA kernel, pinned by tests/test_deform_conv.py: ``offset`` is
``(N, deformable_groups * 2 * kh * kw, H_out, W_out)``, per group and kernel position ``k = i * kw + j``
channel ``2k`` the row offset and ``2k + 1`` the column offset; ``mask`` is
``(N, deformable_groups * kh * kw, H_out, W_out)``; deformable group ``g`` moves input channels
``[g * C / G, (g + 1) * C / G)``; a sample outside the image counts as 0.
"""
import contextlib
import logging
from typing import Optional

import torch
from detectron2.layers.wrappers import _NewEmptyTensorOp
from detectron2.modeling import build_model as _d2_build_model
from detectron2.modeling.backbone import resnet
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "build_model", "deformable_fallback", "missing_deformable_ops"]

logger = logging.getLogger("detectron2." + __name__)


class _DeformConvBase(nn.Module):
    """What both classes share: detectron2's constructor and parameters, the forward by torchvision."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deformable_groups=1, bias=False, norm=None, activation=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must be divisible "
                             f"by groups {groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deformable_groups = groups, deformable_groups
        self.norm, self.activation = norm, activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _conv(self, x, offset, mask=None):
        if x.numel() == 0:
            # An empty input gets an empty output of the right shape, as in detectron2 (torchvision
            # refuses an output of no pixel).
            size = [(i + 2 * p - (d * (k - 1) + 1)) // s + 1 for i, p, d, k, s in
                    zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride)]
            return _NewEmptyTensorOp.apply(x, [x.shape[0], self.weight.shape[0]] + size)
        # torchvision infers the deformable groups from the offset's channels; a mismatch with
        # `deformable_groups` would silently move the wrong channels.
        positions = self.kernel_size[0] * self.kernel_size[1]
        for name, t, per in (("offset", offset, 2), ("mask", mask, 1)):
            if t is not None and t.shape[1] != per * self.deformable_groups * positions:
                raise ValueError(
                    f"{name} has {t.shape[1]} channels; {type(self).__name__} with deformable_groups="
                    f"{self.deformable_groups} and kernel {self.kernel_size} needs {per * self.deformable_groups * positions}."
                )
        x = deform_conv2d(x, offset, self.weight, bias=self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, mask=mask)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}")


class DeformConv(_DeformConvBase):
    """detectron2's ``DeformConv`` (DCNv1): ``forward(x, offset)``; no bias, as detectron2's."""

    def __init__(self, *args, bias=False, **kwargs):
        if bias:
            raise ValueError("DeformConv has no bias, as detectron2's")
        super().__init__(*args, bias=False, **kwargs)

    def forward(self, x, offset):
        return self._conv(x, offset)


class ModulatedDeformConv(_DeformConvBase):
    """detectron2's ``ModulatedDeformConv`` (DCNv2): ``forward(x, offset, mask)``; a bias by default."""

    def __init__(self, *args, bias=True, **kwargs):
        super().__init__(*args, bias=bias, **kwargs)

    def forward(self, x, offset, mask):
        return self._conv(x, offset, mask)


def missing_deformable_ops() -> Optional[str]:
    """Why detectron2's compiled deformable ops cannot run (a sentence), or None when they can."""
    try:
        from detectron2 import _C
    except (ImportError, OSError) as e:
        return f"detectron2._C cannot be imported ({e})"
    missing = [op for op in ("deform_conv_forward", "modulated_deform_conv_forward") if not hasattr(_C, op)]
    return f"detectron2._C lacks {', '.join(missing)}" if missing else None


@contextlib.contextmanager
def deformable_fallback(cfg):
    """
    While it is active, a model built from ``cfg`` (by detectron2's ``build_model``, its
    ``DefaultPredictor``...) gets this module's classes in its deformable blocks, when the config's
    ResNet has deformable convolutions (``MODEL.RESNETS.DEFORM_ON_PER_STAGE``) and detectron2's
    compiled ops are missing, and the log says so; otherwise it changes nothing.
    """
    reason = missing_deformable_ops() if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) else None
    if reason is None:
        yield
        return
    logger.info("Deformable convolution: torchvision.ops.deform_conv2d, since %s.", reason)
    # detectron2's DeformBottleneckBlock picks its conv class from these two names of the resnet
    # module when it is built: they are ours only while the context is active.
    saved = resnet.DeformConv, resnet.ModulatedDeformConv
    resnet.DeformConv, resnet.ModulatedDeformConv = DeformConv, ModulatedDeformConv
    try:
        yield
    finally:
        resnet.DeformConv, resnet.ModulatedDeformConv = saved


def build_model(cfg):
    """detectron2's ``build_model(cfg)`` within :func:`deformable_fallback`."""
    with deformable_fallback(cfg):
        return _d2_build_model(cfg)
