"""Demo figures of sample.py (experiments/common/demo_metrics.py): nearest-crop class consistency and the FD
of latent directions, on inputs whose answers are known by construction."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from experiments.common.demo_metrics import (class_consistency, directions, fd_directions, nearest_by_directions,
                                             nearest_by_pixels)


def _bank(m: int = 12, n: int = 4, c: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, c, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 11), st.floats(0.1, 50.0), st.integers(0, 2 ** 16))
def test_nearest_by_directions_ignores_token_norms_and_finds_the_perturbed_entry(i: int, scale: float, seed: int):
    """A bank entry with every token rescaled by its own positive factor and slightly turned is still nearest
    (directions only), and its mean cosine is the hand-computed one."""
    bank = _bank()
    g = torch.Generator().manual_seed(seed)
    norms = scale * (0.5 + torch.rand(bank.shape[1], 1, generator=g))
    q = (bank[i] + 0.01 * bank[i].norm(dim=-1, keepdim=True) * torch.randn(bank[i].shape, generator=g)) * norms
    idx, cos = nearest_by_directions(q[None], bank)
    assert int(idx) == i
    expect = (directions(q) * directions(bank[i])).sum(-1).mean()
    assert float(cos) == pytest.approx(float(expect), abs=1e-5)
    # self-match: exactly 1 (up to float rounding)
    _, one = nearest_by_directions(bank[i:i + 1] * 3.0, bank)
    assert float(one) == pytest.approx(1.0, abs=1e-5)


def test_nearest_by_directions_is_per_grid_position_not_a_bag_of_tokens():
    """Tokens matched at their own grid position: a sample whose tokens are the bank entry's tokens permuted
    over the grid is not matched to it when another entry agrees position by position."""
    a = torch.eye(4).reshape(1, 4, 4)                            # token n points along axis n
    b = a[:, [1, 0, 3, 2]]                                       # the same tokens, positions swapped
    closer = a + 0.3 * torch.ones(1, 4, 4)                        # a, slightly turned, positions kept
    idx, cos = nearest_by_directions(a, torch.cat([b, closer]))
    assert int(idx) == 1
    assert float(cos) == pytest.approx(1.3 / math.sqrt(1.3 ** 2 + 3 * 0.3 ** 2), abs=1e-6)


def test_nearest_by_pixels_and_its_mean_squared_difference():
    bank = torch.zeros(3, 3, 2, 2)
    bank[1] += 0.5
    bank[2] -= 1.0
    q = torch.stack([torch.full((3, 2, 2), 0.4), torch.full((3, 2, 2), -0.7)])
    idx, mse = nearest_by_pixels(q, bank, chunk=1)
    assert idx.tolist() == [1, 2]
    torch.testing.assert_close(mse, torch.tensor([0.01, 0.09]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        nearest_by_pixels(q[:, :, :1], bank)


def test_class_consistency_counts_matches():
    assert class_consistency(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 3])) == 0.75
    assert class_consistency(torch.tensor([5]), torch.tensor([4])) == 0.0
    with pytest.raises(ValueError, match="equal non-empty"):
        class_consistency(torch.tensor([1, 2]), torch.tensor([1]))


def test_consistency_of_noisy_copies_of_their_class_is_one_and_of_shuffled_labels_near_chance():
    """Samples that are perturbed copies of bank crops score 1; the same samples with labels drawn at random
    from 4 classes score ≈ 1/4 (binomial, 400 samples: within 0.25 ± 0.1 with overwhelming probability)."""
    g = torch.Generator().manual_seed(1)
    bank = _bank(m=40, n=6, c=16, seed=2)
    bank_labels = torch.arange(40) % 4
    pick = torch.randint(0, 40, (400,), generator=g)
    samples = bank[pick] + 0.05 * torch.randn(400, 6, 16, generator=g)
    idx, _ = nearest_by_directions(samples, bank, chunk=64)
    assert class_consistency(bank_labels[idx], bank_labels[pick]) == 1.0
    random_labels = torch.randint(0, 4, (400,), generator=g)
    assert abs(class_consistency(bank_labels[idx], random_labels) - 0.25) < 0.1


def test_fd_directions_known_answers():
    """Directions ±e₁ (mean 0, covariance diag(1, 0, ...)·n/(n−1)) against all +e₁ (mean e₁, covariance 0):
    FD = ‖μ_g − μ_r‖² + tr Σ_g + tr Σ_r − 2 tr(...)^{½} = 1 + n/(n−1); and a set against itself is 0,
    whatever the token norms."""
    n_tok, c = 5, 3
    e1 = torch.zeros(c)
    e1[0] = 1.0
    signs = torch.tensor([1.0, -1.0]).repeat(10)                 # 20 samples
    z = signs.view(-1, 1, 1) * e1 * torch.linspace(1, 9, n_tok).view(1, -1, 1)  # norms 1..9, direction ±e₁
    ref = e1.expand(7, n_tok, c) * 4.0
    n = z.shape[0] * n_tok
    assert fd_directions(z, ref) == pytest.approx(1.0 + n / (n - 1), rel=1e-9)
    x = _bank(m=30, n=4, c=6, seed=3)
    assert fd_directions(x * 7.0, x) == pytest.approx(0.0, abs=1e-9)
    assert fd_directions(_bank(m=30, n=4, c=6, seed=4), x) > 0.0


def test_bad_shapes_and_zero_tokens_raise():
    with pytest.raises(ValueError, match=r"\[B, N, C\] queries"):
        nearest_by_directions(torch.randn(2, 3, 4), torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="norm 0"):
        directions(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="channel counts differ"):
        fd_directions(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
