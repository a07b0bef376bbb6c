"""The numpy triangle rasteriser: exact coverage, barycentrics, the z-buffer and clipping."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.assets.raster import rasterize

SQUARE = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
SQUARE_FACES = np.array([[0, 1, 2], [1, 3, 2]])


def test_two_triangles_cover_every_pixel_once() -> None:
    fragments = rasterize(SQUARE, SQUARE_FACES, 8, 8)
    assert fragments.count == 64
    assert len(set(zip(fragments.rows.tolist(), fragments.cols.tolist(), strict=False))) == 64
    assert set(fragments.faces.tolist()) == {0, 1}


def test_barycentrics_reproduce_the_pixel_centres() -> None:
    points = np.array([[0.3, 0.2], [7.9, 1.1], [2.5, 7.7]])
    fragments = rasterize(points, np.array([[0, 1, 2]]), 8, 8)
    assert fragments.count > 10
    np.testing.assert_allclose(fragments.bary.sum(axis=1), 1.0, atol=1e-9)
    centres = fragments.bary @ points
    np.testing.assert_allclose(centres[:, 0], fragments.cols + 0.5, atol=1e-9)
    np.testing.assert_allclose(centres[:, 1], fragments.rows + 0.5, atol=1e-9)


def test_winding_does_not_matter() -> None:
    forward = rasterize(SQUARE, SQUARE_FACES, 8, 8)
    backward = rasterize(SQUARE, SQUARE_FACES[:, ::-1], 8, 8)
    assert forward.count == backward.count == 64


def test_nearest_triangle_wins_with_depth() -> None:
    points = np.concatenate([SQUARE, SQUARE])
    faces = np.array([[0, 1, 2], [1, 3, 2], [4, 5, 6], [5, 7, 6]])
    depth = np.array([2.0] * 4 + [1.0] * 4)  # the second square is nearer
    fragments = rasterize(points, faces, 8, 8, depth)
    assert fragments.count == 64 and set(fragments.faces.tolist()) == {2, 3}
    fragments = rasterize(points, faces, 8, 8, depth[::-1].copy())
    assert set(fragments.faces.tolist()) == {0, 1}


def test_depth_is_interpolated_per_pixel() -> None:
    # Two crossing planes: each is nearer on its own half of the image.
    points = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]] * 2)
    faces = np.array([[0, 1, 2], [1, 3, 2], [4, 5, 6], [5, 7, 6]])
    depth = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # first rises with x, second falls
    fragments = rasterize(points, faces, 8, 8, depth)
    first_plane = fragments.faces < 2
    assert np.all(fragments.cols[first_plane] < 4) and np.all(fragments.cols[~first_plane] >= 4)


def test_clipping_degenerate_and_tiny_triangles() -> None:
    big = np.array([[-10.0, -10.0], [30.0, -10.0], [-10.0, 30.0]])
    assert rasterize(big, np.array([[0, 1, 2]]), 4, 4).count == 16  # clipped to the image
    flat = np.array([[0.0, 0.0], [4.0, 4.0], [8.0, 8.0]])
    assert rasterize(flat, np.array([[0, 1, 2]]), 8, 8).count == 0
    sliver = np.array([[0.6, 0.6], [0.9, 0.6], [0.6, 0.9]])  # between pixel centres
    assert rasterize(sliver, np.array([[0, 1, 2]]), 8, 8).count == 0
    outside = SQUARE + 100
    assert rasterize(outside, SQUARE_FACES, 8, 8).count == 0


def test_small_batches_give_the_same_fragments() -> None:
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 64, (200, 2))
    faces = rng.integers(0, 200, (300, 3))
    depth = rng.uniform(1, 2, 200)
    whole = rasterize(points, faces, 64, 64, depth)
    batched = rasterize(points, faces, 64, 64, depth, batch_pixels=97)
    order_a = np.lexsort((whole.cols, whole.rows))
    order_b = np.lexsort((batched.cols, batched.rows))
    np.testing.assert_array_equal(whole.faces[order_a], batched.faces[order_b])


def test_rejects_an_empty_raster() -> None:
    with pytest.raises(ValueError):
        rasterize(SQUARE, SQUARE_FACES, 0, 8)
