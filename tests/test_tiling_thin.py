"""Mirror padding of thin images (a 1-pixel-thin line scan, 1xN or Nx1, and its neighbours): each
axis is padded on its own, a 1-pixel axis repeats and any other axis reflects (again and again when
the pad is wider than the image), checked against an independent definition of the index map, the
elastic warp's own mirroring, and the prediction of the same row written twice."""
import numpy as np
import pytest

from unetcu import augment
from unetcu.model import UNet
from unetcu.tiling import mirror_index, mirror_pad, predict_probs

TILE = 92  # the tiny preset's tile: 52-pixel output tiles, a 20-pixel margin


def ref_index(n, before, after):
    """Independent definition: position i of the padded axis reads source pixel
    fold((i - before) mod (2n - 2)), fold(j) = j for j < n, else 2n - 2 - j; a 1-pixel axis reads 0."""
    if n == 1:
        return [0] * (before + n + after)
    p = 2 * n - 2
    out = []
    for i in range(before + n + after):
        j = (i - before) % p
        out.append(j if j < n else p - j)
    return out


def ref_pad(img, top, bottom, left, right):
    rows, cols = ref_index(img.shape[-2], top, bottom), ref_index(img.shape[-1], left, right)
    out = np.empty(img.shape[:-2] + (len(rows), len(cols)), img.dtype)
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            out[..., a, b] = img[..., r, c]
    return out


def draw_shape(rng, kind):
    n = int(rng.integers(5, 40))
    return {"1xN": (1, n), "Nx1": (n, 1), "1x1": (1, 1), "2xN": (2, n), "Nx2": (n, 2), "3xN": (3, n),
            "NxM": (n, int(rng.integers(2, 40)))}[kind]


@pytest.mark.parametrize("kind", ["1xN", "Nx1", "1x1", "2xN", "Nx2", "3xN", "NxM"])
def test_mirror_pad_equals_independent_definition(rng, kind):
    """Pads from 0 to several times the image (a 3-row image padded by 50 reflects ~25 times),
    unequal on the four sides, with a leading channel axis."""
    shape = draw_shape(rng, kind)
    img = rng.standard_normal((2, *shape)).astype(np.float32)
    for _ in range(4):
        pads = [int(v) for v in rng.integers(0, 60, 4)]
        got = mirror_pad(img, *pads)
        assert got.dtype == img.dtype and got.flags.c_contiguous
        assert np.array_equal(got, ref_pad(img, *pads)), (shape, pads)
        assert np.array_equal(mirror_pad(img[0], *pads), got[0])


def test_mirror_index_refuses_an_empty_axis_or_negative_pad():
    for args in ((0, 1, 1), (3, -1, 0), (3, 0, -2)):
        with pytest.raises(ValueError, match="mirror_index"):
            mirror_index(*args)


def test_long_axis_of_a_thin_image_is_padded_as_a_wider_image(rng):
    """Along its long axis a 1xN image is padded exactly as the 2xN image [a; b] is (every padded
    row of [a] equals the rows of [a; b] that read a), and the Nx1 likewise along its columns."""
    n = int(rng.integers(5, 30))
    a, b = rng.standard_normal((2, n)).astype(np.float32)
    pads = [int(v) for v in rng.integers(1, 3 * n, 4)]
    thin = mirror_pad(a[None], *pads)
    two = mirror_pad(np.stack([a, b]), *pads)
    src = ref_index(2, pads[0], pads[1])
    assert np.all(thin == thin[:1])  # the 1-pixel axis repeats
    assert src.count(0) >= 2
    for r, s in enumerate(src):
        if s == 0:
            assert np.array_equal(thin[0], two[r]), r
    col = mirror_pad(a[:, None], pads[2], pads[3], pads[0], pads[1])
    assert np.array_equal(col, thin.T)


@pytest.mark.parametrize("shape", [(1, 23), (17, 1), (1, 1)])
def test_elastic_warp_mirrors_thin_images_as_mirror_pad(rng, shape):
    """augment.warp (its own per-pixel reflect, used in training) and mirror_pad (overlap-tile)
    mirror a thin image the same way: the identity warp of a window reaching past the border."""
    img = rng.standard_normal(shape).astype(np.float32)
    h, w = shape
    t, top, left = 8, 3, 5
    p = augment.WarpParams.identity(-top + t / 2 - 0.5, -left + t / 2 - 0.5)
    a, _, _, _ = augment.warp(img, np.zeros(shape, np.int32), np.ones(shape, np.float32), p, t, 2, cubic=False)
    ref = mirror_pad(img, top, t, left, t)[:t, :t]
    assert np.array_equal(a, ref)


@pytest.fixture(scope="module")
def model():
    return UNet(depth=3, base_channels=8, engine="numpy", seed=7)  # the tiny preset's net


@pytest.mark.parametrize("tile", [TILE, None])
def test_line_scan_predicts_as_the_row_written_twice(rng, model, tile):
    """The report's case: a 1xN row and the 2xN image [row; row] have the same padded window
    (reflecting two equal rows gives that row everywhere), so the row's probabilities equal the
    first row of the doubled image's, bit for bit; the same for a column. Before the fix the
    row's ends (the 20-pixel margin) were edge-padded and differed."""
    n = int(rng.integers(130, 260))
    row = rng.standard_normal(n).astype(np.float32)
    one = predict_probs(model, row[None], tile=tile)
    two = predict_probs(model, np.stack([row, row]), tile=tile)
    assert one.shape == (2, 1, n)
    assert np.array_equal(one[:, 0], two[:, 0]), np.abs(one[:, 0] - two[:, 0]).max()
    col = predict_probs(model, row[:, None], tile=tile)
    col2 = predict_probs(model, np.stack([row, row], 1), tile=tile)
    assert np.array_equal(col[:, :, 0], col2[:, :, 0]), np.abs(col[:, :, 0] - col2[:, :, 0]).max()
