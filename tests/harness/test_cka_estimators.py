"""CKA estimators against a float64 numpy reference written from the published formulas (Kornblith et al.
2019, Nguyen et al. 2021; harness/cka.py names them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import rbf_kernel

from harness import cka as cka_mod
from harness.cka import MinibatchCKA, cka, features_2d, gram, hsic_matrix
from harness.common.errors import UsageError

# ----------------------------------------------------------------------------- numpy reference


def ref_hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def ref_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term = np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float(term / (n * (n - 3)))


def ref_cka(k: np.ndarray, l: np.ndarray, hsic) -> float:
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def ref_linear_feature_space(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def ref_rbf_gram(x: np.ndarray, threshold: float) -> np.ndarray:
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return rbf_kernel(x, gamma=1.0 / (2.0 * threshold ** 2 * np.median(sq)))


def _data(n: int = 60, p: int = 12, q: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.5 * rng.normal(size=(n, q))
    return x, y


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# ----------------------------------------------------------------------------- agreement


def test_biased_linear_matches_reference_within_1e6():
    x, y = _data()
    expected = ref_cka(x @ x.T, y @ y.T, ref_hsic_biased)
    assert abs(expected - ref_linear_feature_space(x, y)) < 1e-10  # the two textbook forms agree
    got = cka(_t(x).float(), _t(y).float(), estimator="biased")  # float32 input, float64 inside
    assert abs(got - expected) < 1e-6
    assert abs(cka(_t(x), _t(y), estimator="biased") - expected) < 1e-12


def test_unbiased_linear_matches_reference():
    x, y = _data(n=40, seed=1)
    expected = ref_cka(x @ x.T, y @ y.T, ref_hsic_unbiased)
    assert abs(cka(_t(x), _t(y), estimator="unbiased") - expected) < 1e-10
    assert abs(expected - ref_cka(x @ x.T, y @ y.T, ref_hsic_biased)) > 1e-3  # the estimators do differ


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_rbf_matches_sklearn_kernel_reference(threshold):
    x, y = _data(n=50, seed=2)
    k, l = ref_rbf_gram(x, threshold), ref_rbf_gram(y, threshold)
    assert np.allclose(gram(_t(x), "rbf", threshold).numpy(), k, atol=1e-12)
    assert abs(cka(_t(x), _t(y), "rbf", "biased", threshold) - ref_cka(k, l, ref_hsic_biased)) < 1e-10
    assert abs(cka(_t(x), _t(y), "rbf", "unbiased", threshold) - ref_cka(k, l, ref_hsic_unbiased)) < 1e-10


def test_chunked_gram_equals_direct_product(monkeypatch):
    x = torch.randn(16, 3, 7, 5, dtype=torch.float32)
    full = gram(x)
    monkeypatch.setattr(cka_mod, "_GRAM_CHUNK_ELEMENTS", 16 * 4)  # 4 columns per chunk
    chunked = gram(x)
    flat = x.reshape(16, -1).double()
    assert torch.allclose(chunked, flat @ flat.T, atol=1e-9)
    assert torch.allclose(chunked, full, atol=1e-9)


# ----------------------------------------------------------------------------- minibatch estimator


def test_minibatch_matches_reference_of_same_estimator_on_all_pairs():
    """Every pair of streams of different widths/shapes, batch by batch, against numpy float64."""
    rng = np.random.default_rng(3)
    n, b = 48, 12
    streams = [rng.normal(size=(n, 4, 3, 3)), rng.normal(size=(n, 7)), None]
    streams[2] = np.maximum(streams[1] @ rng.normal(size=(7, 9)), 0)  # related to stream 1
    acc = MinibatchCKA(["a", "b", "c"], estimator="unbiased")
    for i in range(0, n, b):
        acc.update([_t(s[i:i + b]).float() for s in streams])
    got = acc.compute().numpy()
    flat = [s.reshape(n, -1).astype(np.float32).astype(np.float64) for s in streams]
    for i in range(3):
        for j in range(3):
            h = [np.mean([ref_hsic_unbiased(u[s:s + b] @ u[s:s + b].T, v[s:s + b] @ v[s:s + b].T)
                          for s in range(0, n, b)]) for u, v in ((flat[i], flat[j]), (flat[i], flat[i]),
                                                                  (flat[j], flat[j]))]
            assert abs(got[i, j] - h[0] / np.sqrt(h[1] * h[2])) < 1e-6, (i, j)
    assert acc.n == n and acc.batches == n // b


def test_minibatch_converges_to_full_batch_unbiased():
    n = 512
    errors = {b: [] for b in (8, 64, 256, 512)}
    for seed in range(3):
        x, y = _data(n=n, p=16, q=24, seed=seed)
        full = cka(_t(x), _t(y), estimator="unbiased")
        for b, errs in errors.items():
            acc = MinibatchCKA(["x", "y"])
            for i in range(0, n, b):
                acc.update([_t(x[i:i + b]), _t(y[i:i + b])])
            errs.append(abs(float(acc.compute()[0, 1]) - full))
    mean = {b: float(np.mean(e)) for b, e in errors.items()}
    assert mean[8] > mean[64] > mean[512]
    assert mean[256] < 5e-3 < mean[8]
    assert mean[512] < 1e-12  # one batch of all n images is the full-batch estimate


def test_batch_smaller_than_four_is_refused():
    acc = MinibatchCKA(["x", "y"])
    with pytest.raises(UsageError, match="at least 4"):
        acc.update([torch.randn(3, 5), torch.randn(3, 6)])
    with pytest.raises(UsageError, match="at least 4"):
        hsic_matrix(torch.randn(2, 3, 3), "unbiased")
    MinibatchCKA(["x", "y"], estimator="biased").update([torch.randn(3, 5), torch.randn(3, 6)])  # fine for biased


def test_unknown_options_are_usage_errors():
    with pytest.raises(UsageError, match="kernel"):
        cka(torch.randn(8, 2), torch.randn(8, 2), kernel="poly")
    with pytest.raises(UsageError, match="estimator"):
        MinibatchCKA(["a"], estimator="debiasd")
    with pytest.raises(UsageError, match="same n"):
        cka(torch.randn(8, 2), torch.randn(9, 2))


def test_pool_averages_spatial_maps_and_flatten_keeps_them():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(features_2d(x, "pool"), x.mean(dim=(2, 3)))
    assert features_2d(x, "flatten").shape == (2, 12)
    assert features_2d(torch.ones(2, 5), "pool").shape == (2, 5)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kernel,estimator", [("linear", "biased"), ("linear", "unbiased"), ("rbf", "biased")])
def test_properties(kernel, estimator):
    x, y = _data(n=80, p=10, q=14, seed=4)
    tx, ty = _t(x), _t(y)
    base = cka(tx, ty, kernel, estimator)
    assert abs(cka(tx, tx, kernel, estimator) - 1.0) < 1e-12
    assert abs(cka(ty, tx, kernel, estimator) - base) < 1e-12
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(10, 10)))
    assert abs(cka(_t(x @ q), ty, kernel, estimator) - base) < 1e-10  # orthogonal transform
    # isotropic scaling (the RBF bandwidth follows the median distance, so it is invariant too)
    assert abs(cka(tx * 7.5, ty, kernel, estimator) - base) < 1e-10
    a = np.random.default_rng(6).normal(size=(10, 10)) @ np.diag(np.linspace(0.1, 5.0, 10))
    assert np.linalg.matrix_rank(a) == 10
    assert abs(cka(_t(x @ a), ty, kernel, estimator) - base) > 1e-2  # not invariant to invertible maps
    if estimator == "biased":
        assert 0.0 <= base <= 1.0
