"""LARS and the weighted kNN monitor against hand-written references."""

import math

import numpy as np
import torch

from encoders.pretrain.knn import knn_predict
from encoders.pretrain.lars import LARS


def test_lars_step_scales_by_trust_ratio_and_skips_1d_params():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.001)
    opt.step()
    g = np.array([0.6, 0.8]) + 0.01 * np.array([3.0, 4.0])
    trust = 0.001 * 5 / math.sqrt((g ** 2).sum())
    np.testing.assert_allclose(w.detach().numpy()[0], np.array([3.0, 4.0]) - 0.1 * trust * g, rtol=1e-6)
    assert abs(b.item() - (1.0 - 0.1 * 0.5)) < 1e-6
    opt.step()  # momentum: buffer = 0.9 * old + new
    assert abs(b.item() - (1.0 - 0.05 - 0.1 * (0.9 * 0.5 + 0.5))) < 1e-6


def test_weighted_knn_matches_a_brute_force_vote():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(30, 5, generator=g), torch.randn(12, 5, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    pred = knn_predict(bank, labels, queries, 3, k=7, temperature=0.1)
    bn = bank.double() / bank.double().norm(dim=1, keepdim=True)
    for i, q in enumerate(queries.double()):
        sims = (bn @ (q / q.norm())).tolist()
        top = sorted(range(30), key=lambda j: -sims[j])[:7]
        votes = [0.0] * 3
        for j in top:
            votes[int(labels[j])] += math.exp(sims[j] / 0.1)
        assert int(pred[i]) == max(range(3), key=lambda c: votes[c])
