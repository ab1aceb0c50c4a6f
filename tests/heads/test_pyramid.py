"""Dense heads read taps by stride: which tap feeds which input, for every kind of backbone, and what
the record says of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.common.taps import Tap
from heads import HEADS, HeadInputError, count_parameters
from heads.pyramid import HOW_DILATED, HOW_POOL, HOW_TAP, HOW_UPSAMPLED, deeplab_levels, unet_levels


def _task(outputs: int = 1, frames: int = 1) -> SimpleNamespace:
    return SimpleNamespace(num_outputs=outputs, frames=frames, name="t")


def _taps(*spec: tuple) -> dict[str, Tap]:
    return {t[0]: Tap(*t) for t in spec}


RESNET50 = _taps(("conv", 64, 2), ("block1", 256, 4), ("block2", 512, 8), ("block3", 1024, 16),
                 ("block4", 2048, 32), ("embedding", 2048, None), ("block4_os16", 2048, 16, True))
CONVNEXT = _taps(("block1", 96, 4), ("block2", 192, 8), ("block3", 384, 16), ("block4", 768, 32),
                 ("embedding", 768, None))
SQUEEZE = _taps(("conv", 64, 2), ("block1", 128, 4), ("block2", 256, 8), ("block3", 512, 16), ("embedding", 512, None))
VIT16 = {**{f"block{i}": Tap(f"block{i}", 384, 16) for i in range(1, 13)}, "embedding": Tap("embedding", 384, None)}
VIT8 = {**{f"block{i}": Tap(f"block{i}", 64, 8) for i in range(1, 3)}, "embedding": Tap("embedding", 64, None)}


def _pick(levels):
    return [(lv.stride, lv.tap, lv.how) for lv in levels]


def test_unet_reads_the_deepest_map_at_each_stride_and_starts_from_the_finest_there_is():
    assert _pick(unet_levels(RESNET50)) == [(32, "block4", HOW_TAP), (16, "block3", HOW_TAP), (8, "block2", HOW_TAP),
                                            (4, "block1", HOW_TAP), (2, "conv", HOW_TAP)]  # never the derived tap
    assert [lv.stride for lv in unet_levels(CONVNEXT)] == [32, 16, 8, 4]
    assert [lv.stride for lv in unet_levels(SQUEEZE)] == [16, 8, 4, 2]
    # Two maps at one stride (a stage's inner layer and its output): the one declared last (deeper) is read.
    two = _taps(("a", 8, 4), ("b", 16, 4), ("c", 32, 8))
    assert [lv.tap for lv in unet_levels(two)] == ["c", "b"]


def test_a_vit_gets_the_simple_pyramid_from_its_last_block():
    levels = unet_levels(VIT16)
    assert [(lv.stride, lv.channels, lv.tap) for lv in levels] == [
        (32, 384, "block12"), (16, 384, "block12"), (8, 192, "block12"), (4, 96, "block12")]
    assert levels[0].how == HOW_POOL
    low, high = deeplab_levels(VIT16)
    assert (low.stride, low.channels, high.stride, high.channels) == (4, 96, 16, 384)  # the /16 grid itself
    low8, high8 = deeplab_levels(VIT8)  # a /8 ViT: stride 16 is the pooled level, stride 4 one deconv
    assert (low8.stride, high8.stride, high8.how) == (4, 16, HOW_POOL)


def test_deeplab_prefers_the_dilated_stage_then_upsamples_stride_32():
    low, high = deeplab_levels(RESNET50)
    assert (low.tap, high.tap, high.how) == ("block1", "block4_os16", HOW_DILATED)
    low, high = deeplab_levels(CONVNEXT)
    assert (low.tap, high.tap, high.stride, high.how) == ("block1", "block4", 16, HOW_UPSAMPLED)
    low, high = deeplab_levels(SQUEEZE)  # ends at stride 16: that map as it is
    assert (low.tap, high.tap, high.how) == ("block1", "block3", HOW_TAP)
    coarse = _taps(("s8", 32, 8), ("s16", 64, 16))  # nothing at 4: the finest
    assert deeplab_levels(coarse)[0].tap == "s8"


def test_deeplab_parameters_for_resnet50_by_hand():
    n = 21
    aspp = (2048 * 256 + 512) + 3 * (2048 * 256 * 9 + 512) + (2048 * 256 + 512) + (5 * 256 * 256 + 512)
    low = 256 * 48 + 96
    fuse = (304 * 256 * 9 + 512) + (256 * 256 * 9 + 512)
    assert count_parameters(HEADS["deeplabv3plus"].build(RESNET50, _task(n))) == aspp + low + fuse + 256 * n + n


def test_the_simple_pyramid_is_trained_with_the_head():
    head = HEADS["unet"].build(VIT16, _task())
    deconv = [m for m in head.pyramid.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    # x2: 384 -> 192; x4: 384 -> 192 -> 96 (2x2 kernels, with bias)
    assert [(m.in_channels, m.out_channels) for m in deconv] == [(384, 192), (384, 192), (192, 96)]
    assert all(p.requires_grad for p in head.pyramid.parameters())
    feats = {"block12": torch.randn(2, 384, 4, 4)}
    out = head.train()(feats, size=(64, 64))
    out.mean().backward()
    assert out.shape == (2, 1, 64, 64) and all(m.weight.grad is not None for m in deconv)
    # From stride 4 the decoder learns its way to stride 2 (one more up block) before the final layer.
    assert len(head.decoder.refine) == 1


@pytest.mark.parametrize("head", ["unet", "siamese_unet", "deeplabv3plus"])
def test_no_spatial_tap_is_one_clear_error(head):
    only_embedding = _taps(("embedding", 512, None))
    with pytest.raises(HeadInputError, match="needs .*spatial.* no spatial maps"):
        HEADS[head].taps(_task(frames=2 if head == "siamese_unet" else 1), only_embedding)


def test_linear_needs_a_pooled_embedding():
    with pytest.raises(HeadInputError, match="embedding"):
        HEADS["linear"].taps(_task(3), _taps(("block1", 8, 4)))


def test_describe_says_which_tap_feeds_which_input():
    rec = HEADS["deeplabv3plus"].describe(_task(5), RESNET50)
    assert rec == [{"input": "low-level", "stride": 4, "channels": 256, "tap": "block1", "how": HOW_TAP},
                   {"input": "aspp", "stride": 16, "channels": 2048, "tap": "block4_os16", "how": HOW_DILATED}]
    assert [r["input"] for r in HEADS["unet"].describe(_task(), CONVNEXT)] == [
        "stride 32", "stride 16", "stride 8", "stride 4"]


def test_an_encoder_that_cannot_feed_a_head_fails_that_task_alone(tmp_path, monkeypatch):
    """One failed record naming the encoder, the head and the strides; the other task still runs."""
    from encoders.base import EncoderInfo, FrozenEncoder, TapModel
    from harness import runner
    from tasks.registry import resolve_tasks

    class PooledOnly(TapModel):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 8)
            self.taps = (Tap("embedding", 8, None),)

        def forward(self, x, taps):
            return {"embedding": self.proj(x.mean((2, 3)))}

    monkeypatch.setattr(runner, "create_encoder",
                        lambda name, seed=0, **kw: FrozenEncoder(PooledOnly(), EncoderInfo(name="pooled", arch="x")))
    opts = runner.EvalOptions(encoder="pooled", tasks=resolve_tasks(["synth_depth", "synth_count"]), out=tmp_path,
                              limit=40, epochs=1, grid="single", device="cpu", use_cache=False)
    records = {r["task"]: r for r in runner.run_eval(opts)}
    assert records["synth_count"]["status"] == "ok"
    err = records["synth_depth"]["error"]
    assert records["synth_depth"]["status"] == "failed" and "\n" not in err
    assert "encoder pooled" in err and "unet head" in err and "no spatial maps" in err and "strides 2" in err
