"""The data pipeline: synthetic cells, loaders (on the real data when it is there), weight maps
against their brute-force definition, the elastic warp (CPU vs Numba's CUDA simulator, identity,
statistics), overlap-tile inference against a whole-image pass."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetcu import UNet, augment, data as D
from unetcu.model import output_size, valid_input_size
from unetcu.tiling import mirror_pad, predict_probs
from unetcu.weightmap import class_balance, weight_map, weight_map_bruteforce

# the shared real data: UNETCU_DATA, else ../shared/data beside the checkout
DATA = Path(os.environ.get("UNETCU_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# ---- synthetic data ------------------------------------------------------------------------------
def test_synthetic_cells_deterministic_and_touching():
    a, ia = D.synthetic_cells((160, 200), seed=7)
    b, ib = D.synthetic_cells((160, 200), seed=7)
    c, ic = D.synthetic_cells((160, 200), seed=8)
    assert np.array_equal(a, b) and np.array_equal(ia, ib) and not np.array_equal(ia, ic)
    assert a.shape == (160, 200) and a.dtype == np.float32 and ia.dtype == np.int32
    assert ia.max() >= 10 and 0.1 < (ia > 0).mean() < 0.7
    assert D.separation_borders(ia).sum() > 20  # some cells touch
    # each id is one connected object
    for k in range(1, ia.max() + 1):
        assert ndi.label(ia == k)[1] == 1


def test_classes_make_touching_cells_separate():
    inst = np.zeros((5, 8), np.int32)
    inst[1:4, 1:4] = 1
    inst[1:4, 4:7] = 2  # touches object 1 along a column
    cls = D.classes_from_instances(inst)
    assert cls[2, 3] == 0 and cls[2, 4] == 0  # the shared boundary became background
    assert cls[2, 1] == 1 and cls[2, 6] == 1
    assert ndi.label(cls)[1] == 2


# ---- loaders -------------------------------------------------------------------------------------
def test_folder_loader_pairs_by_number(tmp_path):
    from PIL import Image
    import tifffile
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for k in (2, 15):
        Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(tmp_path / "images" / f"01_t{k:03d}.png")
        lab = np.zeros((20, 30), np.uint16)
        lab[2:8, 2:9], lab[10:15, 10:20] = 1, 7
        tifffile.imwrite(tmp_path / "labels" / f"01_man_seg{k:03d}.tif", lab)
    s = D.load_folder(tmp_path)
    assert [x.name for x in s] == ["01_t002", "01_t015"]
    assert sorted(np.unique(s[0].instances)) == [0, 1, 7]
    assert abs(s[0].image.mean()) < 1e-5 and abs(s[0].image.std() - 1) < 1e-4
    with pytest.raises(FileNotFoundError, match="expected an images/ and a labels/"):
        D.load_folder(tmp_path / "images")
    (tmp_path / "images" / "01_t099.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot pair image 01_t099.png"):
        D.load_folder(tmp_path)


@pytest.mark.skipif(not (DATA / "isbi2012").is_dir(), reason=f"real data not found at {DATA} (set UNETCU_DATA)")
def test_real_data_layouts_load():
    isbi = D.load_folder(DATA / "isbi2012")
    assert len(isbi) == 25 and isbi[0].image.shape == (512, 512)
    assert isbi[0].instances.max() > 50  # interiors -> connected components
    hela = D.load_folder(DATA / "dic_hela")
    assert len(hela) == 9 and hela[0].instances.max() >= 5
    dsb = D.load_folder(DATA / "dsb2018_fluo")
    assert len(dsb) == 260 and dsb[0].image.ndim == 2


# ---- weight maps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weight_map_matches_bruteforce(seed):
    _, inst = D.synthetic_cells((96, 120), seed=seed)
    w = weight_map(inst)
    assert np.allclose(w, weight_map_bruteforce(inst), atol=1e-6)
    cls = D.classes_from_instances(inst)
    wc = class_balance(cls)
    assert abs(wc.mean() - 1) < 1e-6
    gaps = D.separation_borders(inst)
    assert w[gaps].mean() > 3 * w[(cls == 0) & ~gaps].mean()  # narrow gaps weigh most


def test_weight_map_hand_case():
    inst = np.zeros((7, 9), np.int32)
    inst[:, :3] = 1
    inst[:, 6:] = 2  # two objects, a 3-pixel gap between them
    w = weight_map(inst, w0=10, sigma=5, balance=False)
    # gap pixel in the middle column: d1 = d2 = 2
    assert w[3, 4] == pytest.approx(1 + 10 * np.exp(-(4 ** 2) / 50), rel=1e-6)
    assert w[3, 3] == pytest.approx(1 + 10 * np.exp(-(1 + 3) ** 2 / 50), rel=1e-6)
    assert w[3, 0] == 1  # inside an object


# ---- augmentation --------------------------------------------------------------------------------
def _triple(seed=0, size=(64, 80)):
    img, inst = D.synthetic_cells(size, seed=seed)
    return D.standardise(img), D.classes_from_instances(inst), weight_map(inst)


def test_warp_identity_reproduces_input():
    img, lab, w = _triple()
    t, o = 44, 20
    p = augment.WarpParams.identity(3 + (t - 1) / 2, 10 + (t - 1) / 2)
    a, b, c, d = augment.warp(img, lab, w, p, t, o)
    m = (t - o) // 2
    assert np.array_equal(a, img[3:3 + t, 10:10 + t])
    assert np.array_equal(b, lab[3 + m:3 + m + o, 10 + m:10 + m + o])
    assert np.array_equal(c, w[3 + m:3 + m + o, 10 + m:10 + m + o])
    assert np.all(d == 0)


def test_warp_mirrors_borders():
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    p = augment.WarpParams.identity(-2 + 3.5, -1 + 3.5)  # an 8x8 tile from (-2, -1)
    a, _, _, _ = augment.warp(img, np.zeros((4, 5), np.int32), np.ones((4, 5), np.float32), p, 8, 2, cubic=False)
    assert np.array_equal(a, mirror_pad(img, 2, 2, 1, 2)[:8, :8])


def test_warp_labels_stay_in_class_set_and_are_deterministic():
    img, lab, w = _triple(1)
    outs = []
    for _ in range(2):
        rng = np.random.default_rng(42)
        outs.append([augment.warp(img, lab, w, augment.draw_params(rng, img.shape), 60, 20)[:3] for _ in range(5)])
    for (a1, b1, c1), (a2, b2, c2) in zip(*outs):
        assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and np.array_equal(c1, c2)
        assert set(np.unique(b1)) <= {0, 1}
        assert np.isfinite(a1).all() and (c1 > 0).all()


def test_displacement_statistics_match_sigma():
    rng = np.random.default_rng(0)
    img, lab, w = _triple(2, (40, 40))
    t = 33  # grid nodes fall on pixels 0, 16, 32
    node, mid = [], []
    for _ in range(300):
        p = augment.draw_params(rng, img.shape, sigma=10.0, rotate=False, flip=False, gray=False)
        d = augment.warp(img, lab, w, p, t, 1)[3]
        node.append(d[:, 16, 16])
        assert np.allclose(d[:, 16, 16], p.grid[1, 1]) and np.allclose(d[:, 0, 32], p.grid[0, 2])
        mid.append(d[:, 8, 8])
    assert abs(np.std(node) - 10) < 1.0
    assert 4 < np.std(mid) < 10  # between nodes the field is a weighted mean of several nodes


def test_displacement_field_is_the_bicubic_interpolation_of_the_grid():
    """The separable field (two small matrix products) against the definition evaluated pixel by pixel:
    Keys' cubic over the 4x4 nodes around each pixel, nodes past the grid's edge extrapolated from the
    nearest node along each axis, at random grids and tile sizes (1, 2 and odd included)."""
    def keys(t):
        t = abs(t)
        return (1.5 * t - 2.5) * t * t + 1 if t < 1 else ((-0.5 * t + 2.5) * t - 4) * t + 2 if t < 2 else 0.0

    def node(g, a, b):
        ia, ib = min(max(a, 0), 2), min(max(b, 0), 2)
        v = g[ia, ib].copy()
        if a != ia:
            v += (a - ia) * (g[ia, ib] - g[ia - (a - ia), ib])
        if b != ib:
            v += (b - ib) * (g[ia, ib] - g[ia, ib - (b - ib)])
        return v

    rng = np.random.default_rng()
    for t in (1, 2, 5, 24, 33):
        g = rng.normal(0, 10, (3, 3, 2))
        field = augment.displacement_field(g, t)
        assert field.shape == (2, t, t)
        for oy, ox in {(0, 0), (t - 1, t - 1), (t // 2, t // 3)} | {tuple(rng.integers(0, t, 2)) for _ in range(20)}:
            gy, gx = (oy * 2 / (t - 1), ox * 2 / (t - 1)) if t > 1 else (0.0, 0.0)
            fy, fx = int(np.floor(gy)), int(np.floor(gx))
            want = sum(keys(gy - (fy + a)) * keys(gx - (fx + b)) * node(g, fy + a, fx + b)
                       for a in range(-1, 3) for b in range(-1, 3))
            assert np.allclose(field[:, oy, ox], want, rtol=0, atol=1e-10), (t, oy, ox)


def test_warp_cuda_simulator_matches_cpu(tmp_path):
    """The same per-pixel code as a Numba CUDA kernel, run in Numba's CUDA simulator."""
    img, lab, w = _triple(3, (30, 30))
    rng = np.random.default_rng(5)
    p = augment.draw_params(rng, img.shape, gray=False)
    np.savez(tmp_path / "in.npz", img=img, lab=lab, w=w, grid=p.grid,
             scal=np.array([p.rot, p.flip_y, p.flip_x, p.cy, p.cx]))
    cpu = augment.warp(img, lab, w, p, 24, 8)
    script = textwrap.dedent(f"""
        import numpy as np
        from unetcu import augment
        z = np.load({str(tmp_path / 'in.npz')!r})
        r, fy, fx, cy, cx = z["scal"]
        p = augment.WarpParams(z["grid"], float(r), bool(fy), bool(fx), float(cy), float(cx))
        a, b, c, d = augment.warp(z["img"], z["lab"], z["w"], p, 24, 8, target="cuda")
        np.savez({str(tmp_path / 'out.npz')!r}, a=a, b=b, c=c, d=d)
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sim = np.load(tmp_path / "out.npz")
    assert np.allclose(sim["a"], cpu[0], atol=1e-5) and np.array_equal(sim["b"], cpu[1])
    assert np.allclose(sim["c"], cpu[2], atol=1e-5) and np.allclose(sim["d"], cpu[3], atol=1e-9)


# ---- overlap-tile --------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["numpy", "emu"])
def test_overlap_tile_equals_whole_image_pass(engine, rng):
    depth = 3
    m = UNet(depth=depth, base_channels=3, engine=engine, seed=1)
    tile = valid_input_size(12, depth)
    out = output_size(tile, depth)
    margin = (tile - out) // 2
    h, w = 3 * out, 2 * out  # a whole-image pass needs h + 2*margin to be a valid size
    img = rng.standard_normal((h, w)).astype(np.float32)
    stitched = predict_probs(m, img, tile=tile, batch=2)
    big = mirror_pad(img, margin, margin, margin, margin)
    whole = m.predict_proba(m.xp.asarray(big[None, None]))[0]
    assert stitched.shape == (2, h, w)
    assert np.allclose(stitched, whole, atol=1e-6)


def test_overlap_tile_any_size_and_tta(rng):
    m = UNet(depth=2, base_channels=2, engine="numpy", seed=2)
    for shape in ((1, 1), (3, 2), (37, 61)):
        img = rng.standard_normal(shape).astype(np.float32)
        p = predict_probs(m, img, tile=valid_input_size(8, 2))
        assert p.shape == (2,) + shape and np.allclose(p.sum(0), 1, atol=1e-6)
    img = rng.standard_normal((20, 27)).astype(np.float32)
    p8 = predict_probs(m, img, tile=valid_input_size(8, 2), tta=True)
    # TTA is invariant to flipping the input (up to float rounding)
    p8f = predict_probs(m, img[:, ::-1].copy(), tile=valid_input_size(8, 2), tta=True)[:, :, ::-1]
    assert np.allclose(p8, p8f, atol=1e-5)
