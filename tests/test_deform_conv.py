"""The torchvision fallback of detectron2's deformable convolutions, and the DCN configs."""
import logging
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import DeformConv as D2DeformConv
from detectron2.layers import ModulatedDeformConv as D2ModulatedDeformConv
from detectron2.modeling.backbone import resnet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from dynamic_rcnn.modeling import deform_conv as dc
from dynamic_rcnn.engine import load_config
from dynamic_rcnn.modeling import build_model

from conftest import ROOT, tiny_cfg

CLASSES = [dc.DeformConv, dc.ModulatedDeformConv]
# A small R-50 (detectron2's R-18 has no deformable blocks): half the width, GroupNorm.
DCN_R50 = ["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.WIDTH_PER_GROUP", 32, "MODEL.RESNETS.RES2_OUT_CHANNELS", 128,
           "MODEL.RESNETS.NORM", "GN"]


@pytest.fixture(autouse=True)
def one_thread():
    # These small ops run faster on one thread; on 2 cores shared with other jobs, two threads that
    # wait for each other made the training test 10-50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(cls, cin, cout, kernel, seed=0, **kwargs):
    """A conv of `cls` with reproducible random weights (and bias, where it has one)."""
    torch.manual_seed(seed)
    conv = cls(cin, cout, kernel, **kwargs)
    with torch.no_grad():
        conv.weight.normal_()
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


def run(conv, x, offset, mask=None):
    """Call either class: DeformConv takes no mask (its samples are not modulated)."""
    if isinstance(conv, dc.ModulatedDeformConv):
        if mask is None:
            mask = torch.ones(offset.shape[0], offset.shape[1] // 2, *offset.shape[2:])
        return conv(x, offset, mask)
    assert mask is None
    return conv(x, offset)


def shift(t, dy, dx):
    """out[..., h, w] = t[..., h + dy, w + dx], 0 where that falls outside t: integer resampling."""
    ay, ax = abs(dy), abs(dx)
    height, width = t.shape[-2:]
    padded = F.pad(t, (ax, ax, ay, ay))
    return padded[..., ay + dy: ay + dy + height, ax + dx: ax + dx + width]


def offsets(n, groups, kernel, size, dy, dx):
    """An offset tensor giving every sample of every kernel position the same (dy, dx), per group."""
    pos = kernel[0] * kernel[1]
    o = torch.zeros(n, groups, pos, 2, *size)
    o[:, :, :, 0], o[:, :, :, 1] = dy, dx
    return o.reshape(n, groups * pos * 2, *size)


# ------------------------------------------------------------------ where the fallback is used


def test_missing_ops_follow_the_compiled_module(monkeypatch):
    fake = types.ModuleType("detectron2._C")
    monkeypatch.setitem(sys.modules, "detectron2._C", fake)
    assert dc.missing_deformable_ops() == "detectron2._C lacks deform_conv_forward, modulated_deform_conv_forward"
    fake.deform_conv_forward = lambda *a: None
    assert dc.missing_deformable_ops() == "detectron2._C lacks modulated_deform_conv_forward"
    fake.modulated_deform_conv_forward = lambda *a: None
    assert dc.missing_deformable_ops() is None
    # With both ops, a DCN model is built with detectron2's own classes.
    with dc.deformable_fallback(tiny_cfg(*DCN_R50, "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True])):
        assert (resnet.DeformConv, resnet.ModulatedDeformConv) == (D2DeformConv, D2ModulatedDeformConv)


def test_importing_dynamic_rcnn_changes_nothing_of_detectron2():
    # conftest imported dynamic_rcnn: detectron2's resnet still builds detectron2's classes.
    assert (resnet.DeformConv, resnet.ModulatedDeformConv) == (D2DeformConv, D2ModulatedDeformConv)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _built_with_log(cfg):
    # A handler of the module's own logger: a detectron2 setup_logger elsewhere may stop propagation.
    records, level = _Records(), dc.logger.level
    dc.logger.addHandler(records)
    dc.logger.setLevel(logging.INFO)
    try:
        return dc.build_model(cfg), records.messages
    finally:
        dc.logger.removeHandler(records)
        dc.logger.setLevel(level)


def test_the_fallback_is_used_only_where_a_dcn_model_is_built_without_the_ops():
    reason = dc.missing_deformable_ops()
    if reason is None:
        pytest.skip("this detectron2 has its compiled deformable ops: the fallback is never used")
    model, messages = _built_with_log(tiny_cfg(*DCN_R50, "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, False, True, True]))
    assert type(model.backbone.bottom_up.res4[0].conv2) is dc.DeformConv
    assert messages == [f"Deformable convolution: torchvision.ops.deform_conv2d, since {reason}."]
    # Once built, detectron2's names are detectron2's again; a model without DCN logs nothing.
    assert (resnet.DeformConv, resnet.ModulatedDeformConv) == (D2DeformConv, D2ModulatedDeformConv)
    assert _built_with_log(tiny_cfg())[1] == []


@pytest.mark.parametrize("cls, bias, expected", [
    (dc.DeformConv, False, {"weight": (6, 4, 3, 3)}),
    (dc.ModulatedDeformConv, True, {"weight": (6, 4, 3, 3), "bias": (6,)}),
], ids=["DeformConv", "ModulatedDeformConv"])
def test_parameters_are_detectron2s(cls, bias, expected):
    """detectron2's names and shapes (weight: out x in / groups x k x k; bias for DCNv2 only): one checkpoint for both."""
    ours = cls(8, 6, 3, padding=1, groups=2, deformable_groups=2, bias=bias, norm=torch.nn.GroupNorm(2, 6))
    norm = {"norm.weight": (6,), "norm.bias": (6,)}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {**expected, **norm}
    if dc.missing_deformable_ops() is None:
        theirs = {dc.DeformConv: D2DeformConv, dc.ModulatedDeformConv: D2ModulatedDeformConv}[cls](
            8, 6, 3, padding=1, groups=2, deformable_groups=2, bias=bias, norm=torch.nn.GroupNorm(2, 6))
        assert ours.load_state_dict(theirs.state_dict()) is not None  # strict: same names
    with pytest.raises(ValueError, match="no bias"):
        dc.DeformConv(4, 4, 3, bias=True)


# ------------------------------------------------------------------ against detectron2's compiled op


def test_outputs_and_gradients_equal_detectron2s_compiled_op():
    reason = dc.missing_deformable_ops()
    if reason is not None:
        pytest.skip(f"{reason}: nothing to compare with; the tests below check hand computations")
    if not torch.cuda.is_available():
        pytest.skip("detectron2's compiled deformable ops run on CUDA only, and no GPU is visible")
    torch.manual_seed(0)
    for ours_cls, theirs_cls in [(dc.DeformConv, D2DeformConv), (dc.ModulatedDeformConv, D2ModulatedDeformConv)]:
        for stride, padding, dilation, groups, dgroups in [(1, 1, 1, 1, 1), (2, 2, 2, 2, 2), (1, 1, 1, 1, 2)]:
            kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                          deformable_groups=dgroups, bias=False)
            ours = make(ours_cls, 4, 6, 3, **kwargs).cuda()
            theirs = theirs_cls(4, 6, 3, **kwargs).cuda()
            theirs.load_state_dict(ours.state_dict())
            x = torch.randn(2, 4, 9, 7, device="cuda")
            out_h, out_w = ((n + 2 * padding - 2 * dilation - 1) // stride + 1 for n in (9, 7))
            offset = 1.5 * torch.randn(2, dgroups * 18, out_h, out_w, device="cuda")
            mask = torch.rand(2, dgroups * 9, out_h, out_w, device="cuda")
            results = []
            for conv in (ours, theirs):
                inputs = [t.clone().requires_grad_() for t in (x, offset, mask)]
                args = inputs if ours_cls is dc.ModulatedDeformConv else inputs[:2]
                out = conv(*args)
                out.backward(torch.ones_like(out))
                results.append([out] + [t.grad for t in args] + [conv.weight.grad])
            for a, b in zip(*results):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ against hand computations


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 1)])
def test_zero_offsets_are_a_plain_convolution(cls, stride, padding, dilation, groups):
    bias = {} if cls is dc.DeformConv else {"bias": True}
    conv = make(cls, 4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, **bias)
    x = torch.randn(2, 4, 9, 7)
    expected = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = run(conv, x, torch.zeros(2, 18, *expected.shape[-2:]))
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_integer_offsets_are_a_convolution_of_the_shifted_input(cls, stride, padding, dilation):
    # (dy, dx) = (1, -2): rows and columns differ, on a non-square input, so swapping them fails.
    conv = make(cls, 3, 5, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(2, 3, 8, 6)
    # Shift the zero-padded input, then convolve it without padding: samples outside x are 0.
    expected = F.conv2d(shift(F.pad(x, (padding,) * 4), 1, -2), conv.weight, stride=stride, dilation=dilation)
    out = run(conv, x, offsets(2, 1, (3, 3), expected.shape[-2:], 1.0, -2.0))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, run(conv, x, offsets(2, 1, (3, 3), expected.shape[-2:], -2.0, 1.0)))


def test_offset_and_mask_channels_follow_the_kernel_positions():
    # Only kernel position (row 0, column 2), k = 2, moves by (dy, dx) = (1, -1) and is weighted 0.5:
    # offset channels 2k (dy) and 2k + 1 (dx), mask channel k.
    conv = make(dc.ModulatedDeformConv, 3, 4, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 6, 5)
    offset = torch.zeros(1, 18, 6, 5)
    offset[:, 4], offset[:, 5] = 1.0, -1.0
    mask = torch.ones(1, 9, 6, 5)
    mask[:, 2] = 0.5
    moved = torch.zeros_like(conv.weight)
    moved[:, :, 0, 2] = conv.weight[:, :, 0, 2]
    expected = F.conv2d(x, conv.weight - moved, padding=1) + 0.5 * F.conv2d(shift(F.pad(x, (1,) * 4), 1, -1), moved)
    torch.testing.assert_close(conv(x, offset, mask), expected, rtol=1e-5, atol=1e-5)


def test_a_mask_of_half_halves_the_output_and_a_mask_of_one_is_dcn_v1():
    v2 = make(dc.ModulatedDeformConv, 4, 6, 3, padding=1, bias=False)
    v1 = dc.DeformConv(4, 6, 3, padding=1)
    v1.load_state_dict(v2.state_dict())
    x = torch.randn(2, 4, 7, 7)
    offset = 2 * torch.randn(2, 18, 7, 7)
    full = v2(x, offset, torch.ones(2, 9, 7, 7))
    assert full.abs().mean() > 0.1
    torch.testing.assert_close(v2(x, offset, torch.full((2, 9, 7, 7), 0.5)), 0.5 * full)
    torch.testing.assert_close(v1(x, offset), full, rtol=1e-5, atol=1e-5)


# The image 1..9 row by row; a 1x1 kernel of weight 1 returns the bilinear sample itself.
IMAGE = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_fractional_offset_samples_bilinearly(cls):
    conv = cls(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    # (dy, dx) = (0.25, 0.5): e.g. output (0, 0) reads (0.25, 0.5) = 0.75 * (0.5 * 1 + 0.5 * 2)
    # + 0.25 * (0.5 * 4 + 0.5 * 5) = 2.25; output (0, 2) reads (0.25, 2.5), whose right neighbours are
    # outside: 0.75 * 0.5 * 3 + 0.25 * 0.5 * 6 = 1.875.
    out = run(conv, IMAGE, offsets(1, 1, (1, 1), (3, 3), 0.25, 0.5))
    expected = torch.tensor([[2.25, 3.25, 1.875], [5.25, 6.25, 3.375], [5.625, 6.375, 3.375]])
    torch.testing.assert_close(out[0, 0], expected)
    # (dy, dx) = (-0.5, -0.25): (0, 0) reads (-0.5, -0.25), only its lower right neighbour inside:
    # 0.5 * 0.75 * 1 = 0.375; (1, 1) reads (0.5, 0.75) = 0.125 * 1 + 0.375 * 2 + 0.125 * 4 + 0.375 * 5.
    out = run(conv, IMAGE, offsets(1, 1, (1, 1), (3, 3), -0.5, -0.25))
    assert (out[0, 0, 0, 0].item(), out[0, 0, 1, 1].item(), out[0, 0, 2, 2].item()) == (0.375, 3.25, 7.25)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("groups, deformable_groups", [(1, 2), (2, 2), (2, 1)])
def test_deformable_groups_move_their_own_channels(cls, groups, deformable_groups):
    # Deformable group g moves input channels [2g, 2g + 2) of 4; group 0 stays, group 1 moves by (1, -1)
    # (with a single group all channels move). Modulated: group 1's samples are also weighted 0.5.
    conv = make(cls, 4, 6, 3, padding=1, groups=groups, deformable_groups=deformable_groups, bias=False)
    modulated = cls is dc.ModulatedDeformConv
    x = torch.randn(2, 4, 7, 6)
    moves = [(0, 0), (1, -1)][-deformable_groups:]
    weights = [1.0, 0.5 if modulated else 1.0][-deformable_groups:]
    offset = torch.cat([offsets(2, 1, (3, 3), (7, 6), dy, dx) for dy, dx in moves], dim=1)
    mask = torch.cat([torch.full((2, 9, 7, 6), w) for w in weights], dim=1) if modulated else None
    chunks = x.chunk(deformable_groups, dim=1)
    sampled = torch.cat(
        [w * shift(F.pad(c, (1,) * 4), dy, dx) for c, (dy, dx), w in zip(chunks, moves, weights)], dim=1
    )
    expected = F.conv2d(sampled, conv.weight, groups=groups)
    torch.testing.assert_close(run(conv, x, offset, mask), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_wrong_offset_channels_and_empty_inputs(cls):
    conv = make(cls, 4, 6, 3, padding=1, deformable_groups=2, bias=False)
    with pytest.raises(ValueError, match="offset has 18 channels; .* deformable_groups=2 .* needs 36"):
        run(conv, torch.randn(1, 4, 5, 5), torch.zeros(1, 18, 5, 5))
    assert run(conv, torch.randn(0, 4, 5, 5), torch.zeros(0, 36, 5, 5)).shape == (0, 6, 5, 5)


def test_gradients_of_every_input_match_finite_differences():
    conv = make(dc.ModulatedDeformConv, 2, 3, 3, padding=1, bias=True).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # Fractional offsets, away from the integers where bilinear interpolation has kinks.
    offset = (0.2 + 0.6 * torch.rand(1, 18, 4, 4, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(1, 9, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, offset, mask, weight, bias):
        return dc.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    assert torch.autograd.gradcheck(f, (x, offset, mask, conv.weight, conv.bias), fast_mode=True)
    # ... and the module passes them through: each input receives a gradient.
    conv(x, offset, mask).sum().backward()
    assert all(t.grad.abs().sum() > 0 for t in (x, offset, mask, conv.weight, conv.bias))


# ------------------------------------------------------------------ models


def _deform_blocks(model):
    bottom_up = model.backbone.bottom_up
    return {name: [type(b).__name__ for b in getattr(bottom_up, name)] for name in ("res2", "res3", "res4", "res5")}


@pytest.mark.parametrize(
    "name, depth, conv_cls, offset_channels",
    [
        ("dynamic_rcnn_R_101_FPN_dcnv2_ms_3x.yaml", 101, "ModulatedDeformConv", 27),
        ("dynamic_rcnn_R_50_FPN_dcn_1x.yaml", 50, "DeformConv", 18),
    ],
)
def test_dcn_configs_build_deformable_res3_to_res5(name, depth, conv_cls, offset_channels):
    cfg = load_config(os.path.join(ROOT, "configs", name), ["MODEL.DEVICE", "cpu"])
    base = load_config(os.path.join(ROOT, "configs", cfg_base(name)), ["MODEL.DEVICE", "cpu"])
    # The configs add the deformable convolutions, nothing else.
    deform = {"DEFORM_ON_PER_STAGE": [False, True, True, True], "DEFORM_MODULATED": conv_cls.startswith("Mod")}
    base.MODEL.RESNETS.update(deform)
    assert cfg == base and cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS == 1 and cfg.MODEL.RESNETS.DEPTH == depth

    model = build_model(cfg)
    blocks = _deform_blocks(model)
    assert set(blocks["res2"]) == {"BottleneckBlock"}
    assert all(set(blocks[s]) == {"DeformBottleneckBlock"} for s in ("res3", "res4", "res5"))
    assert sum(map(len, blocks.values())) == {50: 16, 101: 33}[depth]
    block = model.backbone.bottom_up.res4[0]
    assert type(block.conv2).__name__ == conv_cls and block.conv2_offset.out_channels == offset_channels
    if dc.missing_deformable_ops() is not None:
        assert type(block.conv2) is getattr(dc, conv_cls)


def cfg_base(name):
    return {
        "dynamic_rcnn_R_101_FPN_dcnv2_ms_3x.yaml": "dynamic_rcnn_R_101_FPN_ms_3x.yaml",
        "dynamic_rcnn_R_50_FPN_dcn_1x.yaml": "dynamic_rcnn_R_50_FPN_1x.yaml",
    }[name]


def test_a_dcn_v2_faster_rcnn_trains_on_the_cpu():
    # R-50-FPN with modulated deformable res3-res5, halved in width, on 64 px images.
    cfg = tiny_cfg(
        *DCN_R50,
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True],
        "MODEL.RESNETS.DEFORM_MODULATED", True,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    offset_conv = model.backbone.bottom_up.res4[0].conv2_offset
    assert offset_conv.weight.abs().sum() == 0  # detectron2 starts from zero offsets, mask 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def batch(i):
        g = torch.Generator().manual_seed(i)
        inputs = []
        for _ in range(2):
            instances = Instances((64, 64))
            instances.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 20.0, 60.0, 50.0]]))
            instances.gt_classes = torch.tensor([0, 2])
            inputs.append({"image": 255 * torch.rand(3, 64, 64, generator=g), "instances": instances})
        return inputs

    totals = []
    for step in range(3):
        with EventStorage(step):  # detectron2's heads log their statistics there
            losses = model(batch(step))
        total = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            # Both the offsets (first 18 output channels) and the mask (last 9) receive a gradient.
            grad = offset_conv.weight.grad
            assert grad[:18].abs().sum() > 0 and grad[18:].abs().sum() > 0
        optimizer.step()
        totals.append(total.item())
    assert len(set(totals)) == 3
    assert offset_conv.weight.abs().sum() > 0
