import pytest
import torch
import torch.nn.functional as F

from codec.quantize.lookup import chunk_rows_for, nearest_codes


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None])
def test_euclidean_lookup_matches_brute_force_at_any_chunk_size(chunk_rows):
    x = torch.randn(300, 16)
    book = torch.randn(50, 16)
    expected = torch.cdist(x, book).argmin(dim=1)
    assert torch.equal(nearest_codes(x, book, "euclidean", chunk_rows), expected)


@pytest.mark.parametrize("chunk_rows", [3, None])
def test_cosine_lookup_is_argmax_of_normalised_dot_product(chunk_rows):
    x = torch.randn(200, 8)
    book = torch.randn(40, 8) * torch.rand(40, 1) * 10  # codewords of very different norms
    expected = (F.normalize(x, dim=1) @ F.normalize(book, dim=1).t()).argmax(dim=1)
    got = nearest_codes(x, book, "cosine", chunk_rows)
    assert torch.equal(got, expected)
    # Scale-free: rescaling each row by a positive factor changes nothing.
    assert torch.equal(nearest_codes(x * torch.rand(200, 1) * 100, book, "cosine", chunk_rows), got)
    # ...whereas the Euclidean lookup prefers the small codewords for small inputs.
    assert not torch.equal(nearest_codes(x, book, "euclidean"), got)


def test_chunk_size_bounds_the_distance_matrix():
    assert chunk_rows_for(1024, 2**22) == 4096
    assert chunk_rows_for(10**9, 2**22) == 1  # never zero rows


def test_unknown_metric_is_rejected_by_name():
    with pytest.raises(ValueError, match="manhattan"):
        nearest_codes(torch.randn(4, 2), torch.randn(3, 2), "manhattan")
