"""The FLOP counter of `mfmseg cost` and the benchmarks (mfmseg.engine.tools.cost.flop_counter) against hand counts of a
depthwise and a grouped convolution, forward and backward: torch's own formula counts the weight gradient `groups`
times over."""

import pytest
import torch
from torch import nn

from mfmseg.engine.tools.cost import flop_counter


def counted(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs of one pass, the input and the weight both needing gradients."""
    with flop_counter() as counter:
        conv(x).sum().backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return by_op["aten.convolution"], by_op["aten.convolution_backward"]


@pytest.mark.parametrize("c_in, c_out, groups, size, padding", [
    (96, 96, 96, 16, 1),  # depthwise 3x3 (MiT's Mix-FFN, EfficientNet-Lite)
    (8, 16, 4, 10, 0),    # grouped: 4 groups of 2 input -> 4 output channels
])
def test_grouped_and_depthwise_convolution_flops_match_a_hand_count(c_in, c_out, groups, size, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=padding, groups=groups, bias=False)
    batch = 2
    x = torch.randn(batch, c_in, size, size, requires_grad=True)
    out_side = size + 2 * padding - 2
    # forward: every output value is a sum over its group's c_in / groups channels x 3 x 3 (2 FLOPs a multiply-add)
    forward = 2 * batch * c_out * out_side**2 * (c_in // groups) * 9
    # input gradient: the same (output position, weight) pairs; weight gradient: every weight entry summed over
    # the batch and the output positions, c_out x (c_in / groups) x 9 x batch x out_side^2: the forward again
    backward = forward + 2 * (c_out * (c_in // groups) * 9) * batch * out_side**2
    assert counted(conv, x) == (forward, backward)
