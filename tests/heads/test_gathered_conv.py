"""The U-Nets' convolutions as GEMMs (heads/unet.py): the same function as ``F.conv2d``.

References: ``F.conv2d`` in float64 (forward and every gradient) for the gathered 3x3 form, to 1e-12;
and, for the layers under bf16 autocast, a float64 convolution of the bf16-rounded inputs: the bf16
output may differ from it by one bf16 rounding of the output (2^-8 relative) plus the accumulation's
rounding, stated as 1% of the reference's largest magnitude.
"""

import pytest
import torch
import torch.nn.functional as F

from heads.unet import Conv1x1, Conv3x3, gathered_conv3x3


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw", [(1, 1), (4, 3), (8, 8)])
def test_gathered_conv3x3_equals_conv2d_forward_and_backward_in_float64(channels_last, hw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, *hw, dtype=torch.float64, generator=g)
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(7, dtype=torch.float64, generator=g)
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    ours = gathered_conv3x3(x, w, b)
    ref = F.conv2d(x, w, b, padding=1)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    up = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for a, r in zip(torch.autograd.grad(ours, (x, w, b), up), torch.autograd.grad(ref, (x, w, b), up), strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def _bf16_reference(layer: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    r = [t.detach().to(torch.bfloat16).double() for t in (x, layer.weight, layer.bias)]
    return F.conv2d(*r, padding=layer.padding)


@pytest.mark.parametrize("make,hw", [(lambda: Conv3x3(16, 24), (4, 4)), (lambda: Conv3x3(16, 24), (8, 5)),
                                     (lambda: Conv1x1(32, 16), (4, 4)), (lambda: Conv1x1(32, 16), (16, 16))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_layers_under_bf16_autocast_match_a_float64_conv_of_the_rounded_inputs(make, hw, channels_last):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(2, layer.in_channels, *hw)
    if channels_last:
        layer, x = layer.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = _bf16_reference(layer, x)
    assert (out.double() - ref).abs().max() <= 0.01 * ref.abs().max()
    # the gradient reaches the fp32 weights in their own dtype and shape
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.shape == layer.weight.shape


def test_the_layers_keep_conv2d_parameters_and_state_dict_keys():
    pairs = ((Conv3x3(8, 12), torch.nn.Conv2d(8, 12, 3, padding=1)), (Conv1x1(8, 12), torch.nn.Conv2d(8, 12, 1)))
    for ours, plain in pairs:
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
        assert (ours.kernel_size, ours.padding) == (plain.kernel_size, plain.padding)
