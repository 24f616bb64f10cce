"""Probes against torch.linalg and the invariants they promise."""
import math

import pytest
import torch

from nslab import probes


@pytest.fixture
def w():
    return torch.randn(40, 8, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_singular_values_match_torch_linalg(w, method):
    ref = torch.linalg.svdvals(w.reshape(40, -1))
    got = probes.singular_values(w, method)
    assert got.shape == ref.shape
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-9)
    assert torch.all(got[:-1] >= got[1:])


def test_float32_weights_svd_close_to_float64_reference(w):
    got = probes.singular_values(w.float())
    torch.testing.assert_close(got.double(), torch.linalg.svdvals(w.reshape(40, -1)), rtol=1e-5, atol=1e-5)


def test_ranks_and_norms(w):
    m = w.reshape(40, -1)
    sv = torch.linalg.svdvals(m)
    fro = probes.frobenius_norm(w)
    assert fro == pytest.approx(torch.linalg.matrix_norm(m, "fro").item(), rel=1e-12)
    sr = probes.stable_rank(fro, sv[0].item())
    assert sr == pytest.approx((sv**2).sum().item() / sv[0].item() ** 2, rel=1e-10)
    assert 1 <= sr <= 40
    p = sv / sv.sum()
    assert probes.effective_rank(sv) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-10)
    assert probes.numerical_rank(sv, 1e-3) == torch.linalg.matrix_rank(m, rtol=1e-3).item()


def test_effective_and_numerical_rank_of_known_spectra():
    assert probes.effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert probes.effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    low_rank = torch.randn(30, 3, dtype=torch.float64) @ torch.randn(3, 20, dtype=torch.float64)
    assert probes.numerical_rank(probes.singular_values(low_rank), 1e-6) == 3


def test_layer_stats_row(w):
    row, sv = probes.layer_stats(w, rtol=1e-3)
    assert row["shape"] == "40x8x3x3"
    assert row["sigma_max"] == pytest.approx(torch.linalg.matrix_norm(w.reshape(40, -1), 2).item(), rel=1e-6)
    assert row["numerical_rank"] == 40 and len(sv) == 40


def test_bad_input():
    with pytest.raises(ValueError, match="2 or more dimensions"):
        probes.singular_values(torch.ones(5))
    with pytest.raises(ValueError, match="method='qr' is not allowed"):
        probes.singular_values(torch.ones(3, 3), "qr")
