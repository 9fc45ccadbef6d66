"""The shipped earth-event datasets, their loader and the 80/10/10 split protocol."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
from hypothesis import given, strategies as st

from experiments.common.earth import (DATA_DIR, FILES, ROWS, EarthDataError, latlon_to_xyz, load_earth,
                                      read_latlon, split, split_sizes, xyz_to_latlon)

SHA256 = {"volerup.csv": "f7bbaf32a412f5fe82350f48e0c55100be260803969c16557343f687fd0593fc",
          "quakes_all.csv": "3e5e1a10fb2faf1899106264289334037d039f00f5265d13dad388a93d8ff2f7",
          "flood.csv": "ffb1e3182c3053afcdeceec4727c262a29da10255d20747c08144da5b0963486",
          "fire.csv": "c5c6c9490b1d8c58ba9eb78d9e2f82d1c1e62694ca5cff917c54600d3d83f459"}


@pytest.mark.parametrize("name", list(FILES))
def test_shipped_file_matches_its_published_sha256(name):
    assert hashlib.sha256((DATA_DIR / FILES[name]).read_bytes()).hexdigest() == SHA256[FILES[name]]


@pytest.mark.parametrize("name,rows,sizes", [("volcano", 827, (663, 82, 82)), ("earthquake", 6120, (4896, 612, 612)),
                                             ("flood", 4875, (3901, 487, 487)), ("fire", 12809, (10249, 1280, 1280))])
def test_row_counts_unit_vectors_and_split_sizes(name, rows, sizes):
    x = load_earth(name)
    assert x.shape == (rows, 3) and ROWS[name] == rows
    assert torch.allclose(x.norm(dim=-1), torch.ones(rows), atol=1e-6)
    s = split(x, 0)
    assert tuple(len(p) for p in s) == sizes == split_sizes(rows)
    # a partition of the rows: together the three parts are the data set again (as a multiset)
    key = lambda a: sorted(map(tuple, a.double().mul(1e6).round().tolist()))  # noqa: E731
    assert key(torch.cat(list(s))) == key(x)


def test_split_is_a_function_of_the_seed():
    x = torch.arange(100.0).unsqueeze(-1)
    a, b, c = split(x, 3), split(x, 3), split(x, 4)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a.test, c.test)
    assert sorted(torch.cat(list(a)).squeeze(-1).tolist()) == list(range(100))


@pytest.mark.parametrize("n,seed", [(827, 0), (4875, 3), (12809, 4), (20, 1)])
def test_split_is_the_anchors_random_split(n, seed):
    """The published protocol's split: ``random_split(range(n), [n - 2⌊n/10⌋, ⌊n/10⌋, ⌊n/10⌋])`` with a
    generator seeded by the seed: the same rows in the same order for every seed."""
    sizes = split_sizes(n)
    assert sizes == (n - 2 * (n // 10), n // 10, n // 10)
    x = torch.arange(float(n)).unsqueeze(-1)
    ref = torch.utils.data.random_split(range(n), list(sizes), generator=torch.Generator().manual_seed(seed))
    for ours, theirs in zip(split(x, seed), ref):
        assert ours.squeeze(-1).long().tolist() == list(theirs)


def test_split_refuses_too_few_rows():
    with pytest.raises(EarthDataError, match="at least 20 rows"):
        split_sizes(19)


def test_known_points():
    ll = torch.tensor([[0.0, 0.0], [0.0, 90.0], [90.0, 17.0], [-90.0, 0.0], [0.0, 180.0]], dtype=torch.float64)
    want = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0]], dtype=torch.float64)
    assert torch.allclose(latlon_to_xyz(ll), want, atol=1e-12)


@given(st.floats(-89.9, 89.9), st.floats(-179.9, 180.0))
def test_latlon_round_trip(lat, lon):
    ll = torch.tensor([lat, lon], dtype=torch.float64)
    x = latlon_to_xyz(ll)
    assert math.isclose(float(x.norm()), 1.0, abs_tol=1e-12)
    assert torch.allclose(xyz_to_latlon(x), ll, atol=1e-9)


def test_reader_skips_comments_and_header_and_rejects_bad_rows(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("# source\n# more\nlat,lon\n10.5,-20\n\n-3,400\n")
    with pytest.raises(EarthDataError, match=r"a.csv:6: latitude must be in \[-90, 90\]"):
        read_latlon(f)
    f.write_text("# source\nlat,lon\n10.5,-20\n1,2,3\n")
    with pytest.raises(EarthDataError, match=r"a.csv:4: expected 'lat,lon'"):
        read_latlon(f)
    f.write_text("10.5,-20\n-3,4\n")  # no header (as fire.csv)
    assert read_latlon(f).tolist() == [[10.5, -20.0], [-3.0, 4.0]]
    with pytest.raises(EarthDataError, match="not found"):
        read_latlon(tmp_path / "missing.csv")
    with pytest.raises(EarthDataError, match="unknown earth dataset 'moon'"):
        load_earth("moon")
