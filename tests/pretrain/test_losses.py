"""Loss functions against float64 references written from the papers' formulas on tiny tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoders.pretrain.byol import byol_loss
from encoders.pretrain.moco import info_nce
from encoders.pretrain.simclr import nt_xent
from encoders.pretrain.swav import sinkhorn, swapped_prediction


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_info_nce_with_queue_matches_hand_computation():
    q, k, queue = _unit(2, 3, seed=1), _unit(2, 3, seed=2), _unit(4, 3, seed=3)
    t = 0.2
    expected = 0.0
    for i in range(2):
        pos = sum(q[i, d].item() * k[i, d].item() for d in range(3))
        negs = [sum(q[i, d].item() * queue[j, d].item() for d in range(3)) for j in range(4)]
        denom = math.exp(pos / t) + sum(math.exp(n / t) for n in negs)
        expected += -math.log(math.exp(pos / t) / denom) / 2
    assert info_nce(q, k, queue, t).item() == pytest.approx(expected, abs=1e-12)


def _sinkhorn_reference(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Alternate normalisation of exp(S/eps) (K x B): prototypes to mass 1/K, samples to mass 1/B."""
    q = np.exp(scores / eps).T
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iters):
        q = q / q.sum(1, keepdims=True) / k
        q = q / q.sum(0, keepdims=True) / b
    return (q * b).T


def test_sinkhorn_matches_reference_and_marginals_are_uniform():
    scores = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    codes = sinkhorn(scores, epsilon=0.05, iters=3)
    np.testing.assert_allclose(codes.numpy(), _sinkhorn_reference(scores.numpy(), 0.05, 3), rtol=1e-10)
    # Converged: as a joint distribution Q/B, sample marginal 1/B and prototype marginal 1/K.
    joint = sinkhorn(scores, epsilon=0.05, iters=500).numpy() / 6
    np.testing.assert_allclose(joint.sum(1), np.full(6, 1 / 6), atol=1e-12)
    np.testing.assert_allclose(joint.sum(0), np.full(5, 1 / 5), atol=1e-9)


def test_swav_swapped_prediction_matches_hand_computation():
    t = 0.1
    g = torch.Generator().manual_seed(4)
    scores = [torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.3 for _ in range(3)]  # 2 global + 1 local
    codes = [torch.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), 1) for _ in range(2)]

    def ce(q, s):  # mean over samples of -sum_k q_k log softmax(s/t)_k
        total = 0.0
        for b in range(3):
            z = [s[b, k].item() / t for k in range(4)]
            lse = math.log(sum(math.exp(v) for v in z))
            total += -sum(q[b, k].item() * (z[k] - lse) for k in range(4))
        return total / 3

    expected = ((ce(codes[0], scores[1]) + ce(codes[0], scores[2])) / 2
                + (ce(codes[1], scores[0]) + ce(codes[1], scores[2])) / 2) / 2
    assert swapped_prediction(scores, codes, t).item() == pytest.approx(expected, abs=1e-12)


def test_nt_xent_matches_hand_computation():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1).numpy()
    expected = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        sims = [float(z[i] @ z[j]) / t for j in range(6) if j != i]
        expected += -(float(z[i] @ z[pos]) / t - math.log(sum(math.exp(s) for s in sims))) / 6
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, abs=1e-12)


def test_byol_loss_is_two_minus_two_cosine():
    p, z = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64), torch.tensor([[0.0, 2.0], [3.0, 3.0]],
                                                                                     dtype=torch.float64)
    assert byol_loss(p, z).item() == pytest.approx(((2 - 0) + (2 - 2)) / 2, abs=1e-12)
