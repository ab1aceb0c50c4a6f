"""Head training in bf16 (autocast): predictions stay close to fp32, and `auto` chooses sensibly.

Tolerance (stated): on fixed random taps, the bf16 head's output differs from the fp32 head's by
at most 5% of the fp32 output's standard deviation at any pixel and by at most 1% on average
(bf16 keeps 8 significant bits; measured: max 2.0-2.3%, mean 0.3-0.4% for the three dense heads).
"""

import pytest
import torch

from encoders.resnet import build_resnet
from harness.common.device import cpu_has_bf16
from harness.train import head_autocast, resolve_head_precision
from heads import HEADS

TAPS = {t.name: t for t in build_resnet("resnet18").taps}
SHAPES = {"conv": (64, 32), "block1": (64, 16), "block2": (128, 8), "block3": (256, 4), "block4": (512, 2),
          "block4_os16": (512, 4), "embedding": (512, None)}


class Target:
    def __init__(self, outputs, frames):
        self.name, self.num_outputs, self.frames = "t", outputs, frames


def feats(frames: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, (c, s) in SHAPES.items():
        shape = (4, c) if s is None else (4, c, s, s)
        if frames > 1:
            shape = (shape[0], frames, *shape[1:])
        out[k] = torch.randn(*shape, generator=g).abs()
    return out


@pytest.mark.parametrize("name,outputs,frames", [("unet", 1, 1), ("deeplabv3plus", 5, 1), ("siamese_unet", 2, 2)])
def test_bf16_predictions_stay_within_tolerance_of_fp32(name, outputs, frames):
    torch.manual_seed(0)
    head = HEADS[name].build(TAPS, Target(outputs, frames)).eval()
    x = feats(frames)
    with torch.no_grad():
        ref = head(x, size=(64, 64)).float()
        with head_autocast(torch.device("cpu"), "bf16"):
            low = head(x, size=(64, 64))
    assert low.dtype == torch.bfloat16  # it did run in bf16
    diff = (ref - low.float()).abs()
    assert diff.max() <= 0.05 * ref.std() and diff.mean() <= 0.01 * ref.std()


def test_auto_precision():
    cpu = torch.device("cpu")
    small = HEADS["linear"].build(TAPS, Target(10, 1))
    dense = HEADS["unet"].build(TAPS, Target(1, 1))
    assert resolve_head_precision("auto", cpu, small) == "fp32"  # the casts cost more than they save
    # small heads stay fp32 on a GPU too: the stacked engine trains their whole grid at once in fp32
    assert resolve_head_precision("auto", torch.device("cuda"), small) == "fp32"
    assert resolve_head_precision("auto", cpu, dense) == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_head_precision("fp16", cpu, dense) == "fp16"
    with pytest.raises(ValueError):
        resolve_head_precision("int8", cpu, dense)
