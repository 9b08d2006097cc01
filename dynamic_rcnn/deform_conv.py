"""
Deformable convolution (DCNv1 and the modulated DCNv2) for detectron2 installs without its compiled
``detectron2._C``, by torchvision's ``deform_conv2d``.

detectron2's ``DeformConv`` / ``ModulatedDeformConv`` run their forward and backward in ``_C``; a
pure-Python detectron2 replaces both classes with placeholders that raise when built, so a ResNet with
``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` cannot even be constructed. ``torchvision.ops.deform_conv2d``
computes the same thing (detectron2's own CPU forward of ``DeformConv`` calls it), on CPU and GPU, with
autograd. The classes here subclass detectron2's, keeping its constructor, so the parameters (``weight``,
``bias``, ``norm.*``) have the same names and shapes and checkpoints load either way.

Conventions, checked against detectron2's CUDA kernel (``deform_conv_cuda_kernel.cu``) and torchvision's
documentation, and pinned by tests/test_deform_conv.py:

- ``offset`` is ``(N, deformable_groups * 2 * kh * kw, H_out, W_out)``: per deformable group, per kernel
  position ``k = i * kw + j``, channel ``2k`` is the row offset (dy) and ``2k + 1`` the column offset (dx);
  ``mask`` is ``(N, deformable_groups * kh * kw, H_out, W_out)``, channel ``k`` per group.
- deformable group ``g`` moves input channels ``[g * C / G, (g + 1) * C / G)``; ``groups`` splits the
  weights as in ``nn.Conv2d``.
- a sample at ``(h, w)`` is the bilinear interpolation of the four neighbouring pixels, each outside the
  image counting as 0; a sample with ``h <= -1``, ``h >= H``, ``w <= -1`` or ``w >= W`` is 0.

detectron2's ``DeformBottleneckBlock`` splits its ``conv2_offset`` output in three with ``torch.chunk``,
passes the first two thirds (its ``offset_x``, ``offset_y``, concatenated back) as ``offset`` and the
sigmoid of the last third as ``mask``: the names are misleading, but both ops read that tensor with the
layout above, so nothing is reordered here.
"""
import ast
import inspect
import logging

from detectron2.layers import deform_conv as _d2_deform_conv
from detectron2.layers.wrappers import _NewEmptyTensorOp
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "use_deform_conv_fallback"]

logger = logging.getLogger(__name__)

# The ops of detectron2._C that its two deformable classes call.
_C_OPS = ("deform_conv_forward", "modulated_deform_conv_forward")


def _detectron2_classes():
    """
    detectron2's real ``DeformConv`` and ``ModulatedDeformConv``, even when ``_C`` is missing.

    ``detectron2.layers.deform_conv`` defines both classes, then, when ``from detectron2 import _C`` fails,
    rebinds their names to placeholders. Their constructors need nothing from ``_C``, so in that case
    the module's code is run again without that final ``try`` statement, to subclass the real classes
    instead of copying them.
    """
    module = _d2_deform_conv
    if isinstance(module.DeformConv, type) and issubclass(module.DeformConv, nn.Module):
        return module.DeformConv, module.ModulatedDeformConv
    tree = ast.parse(inspect.getsource(module))

    def imports_c(node):
        return isinstance(node, ast.Try) and any(
            isinstance(n, ast.ImportFrom) and any(a.name == "_C" for a in n.names) for n in ast.walk(node)
        )

    tree.body = [node for node in tree.body if not imports_c(node)]
    namespace = {"__name__": module.__name__, "__package__": module.__package__, "__file__": module.__file__}
    exec(compile(tree, module.__file__, "exec"), namespace)
    return namespace["DeformConv"], namespace["ModulatedDeformConv"]


_D2DeformConv, _D2ModulatedDeformConv = _detectron2_classes()


def _check_groups(conv, offset, mask=None):
    # torchvision infers the number of deformable groups from the offset's channels; detectron2's
    # kernel trusts `deformable_groups`. A mismatch would silently apply offsets to the wrong channels.
    positions = conv.kernel_size[0] * conv.kernel_size[1]
    if offset.shape[1] != 2 * conv.deformable_groups * positions:
        raise ValueError(
            f"offset has {offset.shape[1]} channels; {type(conv).__name__} with deformable_groups="
            f"{conv.deformable_groups} and kernel {tuple(conv.kernel_size)} needs "
            f"{2 * conv.deformable_groups * positions}."
        )
    if mask is not None and mask.shape[1] != conv.deformable_groups * positions:
        raise ValueError(
            f"mask has {mask.shape[1]} channels; {type(conv).__name__} with deformable_groups="
            f"{conv.deformable_groups} and kernel {tuple(conv.kernel_size)} needs "
            f"{conv.deformable_groups * positions}."
        )


def _empty_output(conv, x):
    # An empty input (no image, or no pixel) gets an empty output of the right shape, as in detectron2's
    # DeformConv, whose ModulatedDeformConv version fails on its int padding; torchvision refuses an
    # output of no pixel.
    size = [
        (i + 2 * p - (d * (k - 1) + 1)) // s + 1
        for i, p, d, k, s in zip(
            x.shape[-2:], _pair(conv.padding), _pair(conv.dilation), conv.kernel_size, _pair(conv.stride)
        )
    ]
    return _NewEmptyTensorOp.apply(x, [x.shape[0], conv.weight.shape[0]] + size)


def _finish(conv, x):
    if conv.norm is not None:
        x = conv.norm(x)
    if conv.activation is not None:
        x = conv.activation(x)
    return x


class DeformConv(_D2DeformConv):
    """
    detectron2's :class:`~detectron2.layers.DeformConv` (same constructor, parameters and
    ``forward(x, offset)``), computed by ``torchvision.ops.deform_conv2d``: on CPU and GPU, with
    gradients for ``x``, ``offset`` and the weights. No bias, as detectron2's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _log_implementation_once()

    def forward(self, x, offset):
        """Output ``(N, out_channels, H_out, W_out)``; ``offset`` laid out as the module docstring says."""
        if x.numel() == 0:
            return _empty_output(self, x)
        _check_groups(self, offset)
        x = deform_conv2d(
            x, offset, self.weight, stride=self.stride, padding=self.padding, dilation=self.dilation
        )
        return _finish(self, x)


class ModulatedDeformConv(_D2ModulatedDeformConv):
    """
    detectron2's :class:`~detectron2.layers.ModulatedDeformConv` (same constructor, parameters and
    ``forward(x, offset, mask)``), computed by ``torchvision.ops.deform_conv2d`` with its ``mask``: on
    CPU and GPU, with gradients for ``x``, ``offset``, ``mask`` and the parameters. The bias (if any) is
    added before ``norm``, as in detectron2's op.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _log_implementation_once()

    def forward(self, x, offset, mask):
        """Output ``(N, out_channels, H_out, W_out)``; ``offset``, ``mask`` as the module docstring says."""
        if x.numel() == 0:
            return _empty_output(self, x)
        _check_groups(self, offset, mask)
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            bias=self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        return _finish(self, x)


def _missing_c_ops():
    """Why detectron2's compiled deformable ops cannot run (a sentence), or None when they can."""
    try:
        from detectron2 import _C
    except (ImportError, OSError) as e:
        return f"detectron2._C cannot be imported ({e})"
    missing = [op for op in _C_OPS if not hasattr(_C, op)]
    if missing:
        return f"detectron2._C lacks {', '.join(missing)}"
    return None


# The fallback's decision, made once per process: None before use_deform_conv_fallback() runs.
_implementation = None
_reason = None
_logged = False


def _log_implementation_once():
    # The decision is taken when dynamic_rcnn is imported, before scripts configure logging, so an
    # INFO record then would be lost: the fallback is announced when it is first used, i.e. when a model
    # builds its first deformable convolution.
    global _logged
    if not _logged:
        _logged = True
        logger.info(
            "Deformable convolution: torchvision.ops.deform_conv2d%s.",
            f", since {_reason}" if _reason else "",
        )


def use_deform_conv_fallback():
    """
    Make detectron2's ResNet build its deformable blocks with this module's classes when, and only
    when, detectron2's compiled ``_C`` cannot be imported or lacks ``deform_conv_forward`` /
    ``modulated_deform_conv_forward``; otherwise leave detectron2 as it is.

    Patches the names ``DeformConv`` and ``ModulatedDeformConv`` of
    ``detectron2.modeling.backbone.resnet`` (what ``DeformBottleneckBlock`` builds), nothing else.
    Idempotent: the decision is taken on the first call and repeated on later ones. One INFO record says
    which implementation is used: at this call for detectron2's ops, at the first deformable
    convolution built for the fallback.

    Returns:
        str: ``"torchvision"`` (patched) or ``"detectron2"`` (left alone).
    """
    global _implementation, _reason
    from detectron2.modeling.backbone import resnet

    if _implementation is None:
        _reason = _missing_c_ops()
        _implementation = "detectron2" if _reason is None else "torchvision"
        if _implementation == "detectron2":
            logger.info("Deformable convolution: detectron2's compiled ops (detectron2._C).")
    if _implementation == "torchvision":
        resnet.DeformConv = DeformConv
        resnet.ModulatedDeformConv = ModulatedDeformConv
    return _implementation
