"""The input-format policy (README "Input formats"): every row of the table read from a small file
made here, the label audit of every mode, non-finite pixels, and refusals that name the file."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from unetcu import data as D
from unetcu.data import ImageFile, InputError, LUMA, instances_from_label_image, open_label, read_image

H, W = 37, 53  # odd sizes


@pytest.fixture
def gray(rng):
    return rng.integers(1, 255, (H, W), dtype=np.uint8)


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def luma(rgb):
    return rgb.astype(np.float64) @ np.array(LUMA)


def disks(h=96, w=112, value=255):
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    for cy, cx in [(25, 25), (25, 80), (70, 30), (70, 85)]:
        m[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = value
    return m


# ---- the policy table, row by row ----------------------------------------------------------------
def test_gray_8bit_exact(tmp_path, gray):
    Image.fromarray(gray).save(tmp_path / "g.png")
    a = read_image(tmp_path / "g.png")
    assert a.dtype == np.uint8 and np.array_equal(a, gray)


def test_gray_alpha_png_drops_alpha(tmp_path, gray, rng):
    """Issue input: an LA PNG, half transparent, reads exactly as the gray image without alpha
    (it used to average the alpha into the gray values)."""
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(gray).save(tmp_path / "l.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    a = read_image(tmp_path / "la.png")
    assert np.array_equal(a, gray) and np.array_equal(a, read_image(tmp_path / "l.png"))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_is_luma_alpha_dropped(tmp_path, rgb, rng, mode):
    arr = rgb if mode == "RGB" else np.dstack([rgb, rng.integers(0, 256, (H, W), dtype=np.uint8)])
    Image.fromarray(arr, mode=mode).save(tmp_path / "c.png")
    a = read_image(tmp_path / "c.png")
    assert a.shape == (H, W) and np.allclose(a, luma(rgb), atol=1e-4)


def test_colour_with_equal_channels_is_exact(tmp_path, gray, rng):
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), mode="RGBA").save(tmp_path / "c.png")
    a = read_image(tmp_path / "c.png")
    assert a.dtype == np.uint8 and np.array_equal(a, gray)


def test_palette_png(tmp_path, rng):
    idx = rng.integers(0, 5, (H, W), dtype=np.uint8)
    pal = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(pal.ravel().tolist())
    im.save(tmp_path / "p.png")
    assert np.allclose(read_image(tmp_path / "p.png"), luma(pal[idx]), atol=1e-4)  # an image: its colours
    assert np.array_equal(read_image(tmp_path / "p.png", "label"), idx)            # a label: its indices


def test_16bit_png_and_float_tiff_exact(tmp_path, rng):
    a16 = rng.integers(256, 65535, (H, W), dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), a16)
    f = rng.standard_normal((H, W)).astype(np.float32) * 1e3
    tifffile.imwrite(tmp_path / "f.tif", f)
    r = read_image(tmp_path / "f.tif")
    assert r.dtype == np.float32 and np.array_equal(r, f)


def test_rgb_tiff_is_one_image(tmp_path, rgb):
    """Issue input: an RGB TIFF (H, W, 3) is one image (it used to be H pages of (W, 3))."""
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    f = ImageFile(tmp_path / "rgb.tif")
    assert (f.n_pages, f.hw) == (1, (H, W))
    assert np.allclose(read_image(tmp_path / "rgb.tif"), luma(rgb), atol=1e-4)
    # planar (separate samples, (3, H, W) on disk) is the same image
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.allclose(read_image(tmp_path / "planar.tif"), luma(rgb), atol=1e-4)


def test_rgba_and_gray_alpha_tiff(tmp_path, rgb, gray, rng):
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"])
    assert np.allclose(read_image(tmp_path / "rgba.tif"), luma(rgb), atol=1e-4)
    tifffile.imwrite(tmp_path / "ga.tif", np.dstack([gray, alpha]), photometric="minisblack", extrasamples=["unassalpha"])
    assert np.array_equal(read_image(tmp_path / "ga.tif"), gray)


def test_stacks_are_pages(tmp_path, rng):
    stack = rng.integers(0, 65535, (4, H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    f = ImageFile(tmp_path / "s.tif")
    assert (f.n_pages, f.hw) == (4, (H, W))
    for k, page in enumerate(f.pages()):
        assert np.array_equal(page, stack[k])
    # a stack of RGB pages: one gray page each
    rgbs = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgbs.tif", rgbs, photometric="rgb")
    r = read_image(tmp_path / "rgbs.tif")
    assert r.shape == (3, H, W) and np.allclose(r, luma(rgbs), atol=1e-4)


def test_imagej_hyperstack(tmp_path, rng):
    tz = rng.integers(0, 4000, (2, 3, H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "tz.tif", tz, imagej=True, metadata={"axes": "TZYX"})
    r = read_image(tmp_path / "tz.tif")
    assert r.shape == (6, H, W) and np.array_equal(r, tz.reshape(6, H, W))  # T, Z in file order
    zc = rng.integers(0, 4000, (3, 2, H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "zc.tif", zc, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match=r"zc\.tif: 2 channels \(TIFF axes ZCYX, shape \(3, 2, 37, 53\)\)"):
        ImageFile(tmp_path / "zc.tif")


def test_layouts_refused_with_name_and_shape(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (H, W, 4), dtype=np.uint8), mode="CMYK").save(tmp_path / "cmyk.jpg")
    with pytest.raises(InputError, match=r"cmyk\.jpg: Pillow mode 'CMYK' \(size 37x53\)"):
        ImageFile(tmp_path / "cmyk.jpg")
    frames = [Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match=r"a\.gif: an animated GIF with 3 frames"):
        ImageFile(tmp_path / "a.gif")
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as t:
        t.write(np.ones((5, 7), np.uint8), metadata=None)
        t.write(np.ones((6, 7), np.uint8), metadata=None)
    with pytest.raises(InputError, match=r"mixed\.tif: a TIFF with 2 image series"):
        ImageFile(tmp_path / "mixed.tif")
    tifffile.imwrite(tmp_path / "cx.tif", (rng.standard_normal((H, W)) + 1j).astype(np.complex64))
    with pytest.raises(InputError, match=r"cx\.tif: pixel type complex64"):
        ImageFile(tmp_path / "cx.tif")
    tifffile.imwrite(tmp_path / "s5.tif", rng.integers(0, 255, (H, W, 5), dtype=np.uint8), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(InputError, match=r"s5\.tif: TIFF extra samples .*UNSPECIFIED.* \(axes YXS, shape \(37, 53, 5\)\)"):
        ImageFile(tmp_path / "s5.tif")
    with pytest.raises(InputError, match="is a folder, not an image file"):
        ImageFile(tmp_path)


# ---- non-finite pixels ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_refused(tmp_path, rng, bad):
    """Issue input (NaN) and neighbours (+-Inf): refused naming the file and the count."""
    a = rng.standard_normal((H, W)).astype(np.float32)
    a.flat[rng.choice(a.size, 8, replace=False)] = bad
    tifffile.imwrite(tmp_path / "f.tif", a)
    with pytest.raises(InputError, match=r"f\.tif: 8 non-finite pixel values"):
        read_image(tmp_path / "f.tif")
    stack = rng.standard_normal((3, H, W)).astype(np.float32)
    stack[2, 5, 7] = bad
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    with pytest.raises(InputError, match=r"s\.tif page 2: 1 non-finite pixel values"):
        read_image(tmp_path / "s.tif")


# ---- labels --------------------------------------------------------------------------------------
def test_jpeg_mask_refused_or_thresholded(tmp_path):
    """Issue input: a binary mask of 4 disks saved as JPEG (many values after compression) used to
    become dozens of objects; now it is refused in every mode but the explicit 'threshold' rule,
    which gives the 4 disks."""
    Image.fromarray(disks()).save(tmp_path / "m.jpg", quality=75)
    lab = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert len(np.unique(lab)) > 2
    for mode in ("auto", "binary", "instance", "classes"):
        with pytest.raises(InputError, match=r"m\.jpg: a label image in a lossy format \(JPEG\)"):
            open_label(tmp_path / "m.jpg", mode)
    f = open_label(tmp_path / "m.jpg", "threshold")
    assert instances_from_label_image(next(f.pages()), "threshold").max() == 4


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("WEBP", "webp")])
def test_damaged_mask_resaved_losslessly_is_caught_by_its_values(tmp_path, fmt, ext):
    """Neighbours: a mask through JPEG or lossy WebP, then saved as PNG (lossless file, damaged values)."""
    Image.fromarray(disks()).save(tmp_path / f"m.{ext}", format=fmt, quality=60)
    Image.open(tmp_path / f"m.{ext}").convert("L").save(tmp_path / "m.png")
    lab = read_image(tmp_path / "m.png", "label")
    n = len(np.unique(lab))
    assert n > 2
    with pytest.raises(InputError, match=rf"m\.png: {n} distinct values .*; a binary mask has 2 — lossy compression\?"):
        instances_from_label_image(lab, "binary", str(tmp_path / "m.png"))
    with pytest.raises(InputError, match=r"m\.png: \d+ distinct values .*scattered pieces: a binary mask damaged by lossy compression"):
        instances_from_label_image(lab, "auto", "m.png")
    assert instances_from_label_image(lab, "threshold").max() == 4


def test_label_modes_on_clean_labels(rng):
    m = disks(value=255)
    assert instances_from_label_image(m, "auto").max() == 4 and instances_from_label_image(m, "binary").max() == 4
    inst = (disks(value=1).astype(np.int32) * 0)
    yy, xx = np.mgrid[:96, :112]
    for k, (cy, cx) in enumerate([(25, 25), (25, 80), (70, 30)], 1):
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 < 12 ** 2] = k * 7
    assert sorted(np.unique(instances_from_label_image(inst, "auto"))) == [0, 7, 14, 21]
    assert np.array_equal(instances_from_label_image(inst.astype(np.uint16), "instance"), inst)


def test_label_value_audit():
    probs = np.array([[0.0, 0.25], [0.75, 1.0]], np.float32)
    with pytest.raises(InputError, match=r"p\.tif: label values must be whole numbers; found 0.25, 0.75"):
        instances_from_label_image(probs, "instance", "p.tif")
    with pytest.raises(InputError, match=r"n\.tif: negative label values \(-3\)"):
        instances_from_label_image(np.array([[0, 2], [-3, 1]], np.int16), "classes", "n.tif")
    with pytest.raises(InputError, match=r"x\.tif: 1 non-finite label values"):
        instances_from_label_image(np.array([[0, 1], [np.nan, 1]], np.float32), "auto", "x.tif")
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 1] = (255, 0, 0)
    with pytest.raises(InputError, match="a colour label image"):
        D.gray_from_rgb(rgb, "label", "c.png")


def test_image_and_label_of_different_pages_or_size(tmp_path, rng):
    """Issue input: image (3, 64, 80) vs label (64, 80): the message says the image has 3 pages."""
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", rng.integers(0, 255, (3, 64, 80), dtype=np.uint8), photometric="minisblack")
    Image.fromarray(disks(64, 80)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(InputError, match=r"a\.tif \(3 pages of 64x80\) and label .*a\.png \(1 page of 64x80\) differ"):
        D.load_folder(tmp_path)
    tifffile.imwrite(tmp_path / "images" / "a.tif", rng.integers(0, 255, (64, 81), dtype=np.uint8))
    with pytest.raises(InputError, match=r"\(1 page of 64x81\) and label .* \(1 page of 64x80\) differ"):
        D.load_folder(tmp_path)
    # matching pages: one sample per page, each page's own label
    tifffile.imwrite(tmp_path / "images" / "a.tif", rng.integers(0, 255, (2, 64, 80), dtype=np.uint8))
    (tmp_path / "labels" / "a.png").unlink()
    labs = np.stack([disks(64, 80), np.zeros((64, 80), np.uint8)])
    labs[1, :10, :10] = 255
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labs)
    s = D.load_folder(tmp_path)
    assert [x.name for x in s] == ["a-000", "a-001"] and [x.instances.max() for x in s] == [4, 1]


def test_rgb_tiff_folder_gives_one_sample(tmp_path, rgb):
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    tifffile.imwrite(tmp_path / "images" / "x.tif", rgb, photometric="rgb")
    Image.fromarray(disks(H, W)).save(tmp_path / "labels" / "x.png")
    s = D.load_folder(tmp_path)
    assert len(s) == 1 and s[0].image.shape == (H, W)


# ---- neighbours: other encodings of the same layouts ---------------------------------------------
def test_palette_and_miniswhite_tiff(tmp_path, rng):
    idx = rng.integers(0, 4, (H, W), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = rng.integers(0, 256, (3, 4)) * 257  # 16-bit colour map of 8-bit colours
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap)
    assert np.allclose(read_image(tmp_path / "p.tif"), luma(cmap[:, idx].transpose(1, 2, 0) / 257), atol=1e-4)
    assert np.array_equal(read_image(tmp_path / "p.tif", "label"), idx)
    tifffile.imwrite(tmp_path / "w.tif", idx, photometric="miniswhite")  # min-is-white: the values as stored
    assert np.array_equal(read_image(tmp_path / "w.tif", "label"), idx)


def test_pillow_written_tiffs(tmp_path, rng, gray, rgb):
    """LZW TIFFs (as the Cell Tracking Challenge's) and bilevel images: read by the same rules
    whether tifffile or (without imagecodecs) Pillow decodes the pixels."""
    pages = [rng.integers(0, 255, (H, W), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(pages[0]).save(tmp_path / "s.tif", compression="tiff_lzw", save_all=True,
                                   append_images=[Image.fromarray(p) for p in pages[1:]])
    assert np.array_equal(read_image(tmp_path / "s.tif"), np.stack(pages))
    Image.fromarray(rgb).save(tmp_path / "rgb.tif", compression="tiff_lzw")
    f = ImageFile(tmp_path / "rgb.tif")
    assert (f.n_pages, f.hw) == (1, (H, W)) and np.allclose(next(f.pages()), luma(rgb), atol=1e-4)
    Image.fromarray(gray > 128).save(tmp_path / "b.png")  # mode "1"
    assert np.array_equal(read_image(tmp_path / "b.png"), (gray > 128).astype(np.uint8))


def test_lossy_tiff_label_refused(tmp_path):
    Image.fromarray(disks()).save(tmp_path / "m.tif", compression="jpeg")
    with pytest.raises(InputError, match=r"m\.tif: a label image in a lossy format"):
        open_label(tmp_path / "m.tif", "binary")
    Image.fromarray(disks()).save(tmp_path / "m.webp", lossless=True)  # a WebP file is refused by its format
    with pytest.raises(InputError, match=r"m\.webp: a label image in a lossy format \(WEBP\)"):
        open_label(tmp_path / "m.webp", "auto")


@pytest.mark.parametrize("k", [2, 3, 4])
def test_prob_tif_reads_back_as_one_page_per_class(tmp_path, rng, k):
    """Neighbour of the RGB-TIFF case on the output side: 3 or 4 class pages must not become RGB(A)."""
    from unetcu.predict import write_results
    p = rng.random((k, H, W)).astype(np.float32)
    p /= p.sum(0)
    write_results(tmp_path, "x", p, rng.standard_normal((H, W)))
    f = ImageFile(tmp_path / "x_prob.tif")
    assert (f.n_pages, f.hw) == (k, (H, W)) and np.array_equal(read_image(tmp_path / "x_prob.tif"), p)


# ---- 1-bit and min-is-white TIFF (issue 24, item 11) ---------------------------------------------
def blobs(rng, h=H, w=W):
    """A random boolean mask of a few blobs (never empty, never full)."""
    m = ndi_gauss(rng.standard_normal((h, w)), 3) > 0.1
    m[0, 0], m[-1, -1] = True, False
    return m


def ndi_gauss(a, s):
    from scipy import ndimage
    return ndimage.gaussian_filter(a, s)


def components(m):
    from scipy import ndimage
    return ndimage.label(m)[0]


def test_one_bit_tiff_masks_read_as_the_true_pixels(tmp_path, rng):
    """Issue input: a boolean mask saved by tifffile (1 bit, photometric MINISWHITE) was refused;
    it reads as 1 where the array was True, as an image and as a label (foreground = True)."""
    m = blobs(rng)
    tifffile.imwrite(tmp_path / "b.tif", m)
    with tifffile.TiffFile(tmp_path / "b.tif") as t:
        assert (t.pages[0].photometric.name, t.pages[0].bitspersample) == ("MINISWHITE", 1)
    assert np.array_equal(read_image(tmp_path / "b.tif"), m.astype(np.uint8))
    lab = read_image(tmp_path / "b.tif", "label")
    assert np.array_equal(lab, m.astype(np.uint8))
    for mode in ("auto", "binary", "threshold"):
        assert np.array_equal(instances_from_label_image(lab, mode) > 0, m)
    # neighbours: 1-bit min-is-black (tifffile, Pillow), a 1-bit PNG, a multi-page 1-bit stack
    tifffile.imwrite(tmp_path / "bb.tif", m, photometric="minisblack")
    Image.fromarray(m).save(tmp_path / "pil.tif")
    Image.fromarray(m).save(tmp_path / "pil.png")
    assert Image.open(tmp_path / "pil.png").mode == "1"
    for f in ("bb.tif", "pil.tif", "pil.png"):
        assert np.array_equal(read_image(tmp_path / f, "label"), m.astype(np.uint8)), f
    stack = np.stack([blobs(rng) for _ in range(3)])
    tifffile.imwrite(tmp_path / "s.tif", stack)
    f = ImageFile(tmp_path / "s.tif", "label")
    assert (f.n_pages, f.hw) == (3, (H, W))
    assert np.array_equal(read_image(tmp_path / "s.tif", "label"), stack.astype(np.uint8))


def test_one_bit_masks_as_evaluate_and_train_labels(tmp_path, rng):
    """The same mask as an evaluate label and a train label: foreground where it was True."""
    from unetcu import metrics as M
    m = np.zeros((48, 64), bool)
    m[5:20, 6:25] = m[28:44, 30:60] = True
    for d in ("images", "labels", "pred"):
        (tmp_path / d).mkdir()
    tifffile.imwrite(tmp_path / "labels" / "a.tif", m)
    Image.fromarray(rng.integers(0, 255, m.shape, dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(components(m).astype(np.uint16)).save(tmp_path / "pred" / "a_instances.png")
    ((_, r),) = M.evaluate_files(tmp_path / "pred", tmp_path / "labels")
    assert r["iou"] == 1.0 and r["seg"] == 1.0
    (s,) = D.load_folder(tmp_path)
    assert np.array_equal(s.instances > 0, m) and s.instances.max() == 2


def test_miniswhite_8bit_reads_the_values_as_stored(tmp_path, rng):
    """ImageJ's binary masks with an inverting LUT: 8-bit 0/255, photometric MINISWHITE, 255 =
    the foreground ImageJ shows (black). Values are read as stored (as tifffile and ImageJ give
    them), so the foreground is 255 as for a min-is-black mask; images likewise."""
    m = blobs(rng)
    ij = np.where(m, 255, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", ij, imagej=True, photometric="miniswhite")
    with tifffile.TiffFile(tmp_path / "ij.tif") as t:
        assert t.is_imagej and t.pages[0].photometric.name == "MINISWHITE"
    lab = read_image(tmp_path / "ij.tif", "label")
    assert np.array_equal(lab, ij) and np.array_equal(instances_from_label_image(lab, "auto") > 0, m)
    g16 = rng.integers(0, 65535, (2, H, W), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", g16, photometric="miniswhite")
    assert np.array_equal(read_image(tmp_path / "g16.tif"), g16)


@pytest.mark.parametrize("compression", ["tiff_lzw", "group4"])
def test_miniswhite_decoded_by_pillow_reads_as_stored(tmp_path, rng, compression):
    """Neighbour: a compressed min-is-white TIFF that tifffile cannot decode here (no imagecodecs)
    goes through Pillow, which inverts min-is-white; the values come out as stored all the same."""
    from PIL import TiffImagePlugin
    m = blobs(rng)
    for comp, name in ((None, "raw.tif"), (compression, "c.tif")):
        info = TiffImagePlugin.ImageFileDirectory_v2()
        info[262] = 0  # photometric min-is-white
        Image.fromarray(m).save(tmp_path / name, tiffinfo=info, **({"compression": comp} if comp else {}))
    stored = tifffile.imread(tmp_path / "raw.tif")  # tifffile: the stored bits
    assert stored.dtype == bool and 0 < stored.sum() < stored.size
    for name in ("raw.tif", "c.tif"):
        assert np.array_equal(read_image(tmp_path / name, "label"), stored.astype(np.uint8)), name
    g = rng.integers(0, 256, (H, W), dtype=np.uint8)
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[262] = 0
    Image.fromarray(g).save(tmp_path / "g.tif", tiffinfo=info)
    Image.fromarray(g).save(tmp_path / "gc.tif", tiffinfo=info, compression="tiff_lzw")
    assert np.array_equal(read_image(tmp_path / "gc.tif"), read_image(tmp_path / "g.tif"))
    assert np.array_equal(read_image(tmp_path / "g.tif"), tifffile.imread(tmp_path / "g.tif"))


# ---- images given where labels belong (issue 24, item 16) -----------------------------------------
def test_an_image_given_as_a_label_is_named_as_one(tmp_path, rng):
    """Issue input: a gray image read as a label was taken for a JPEG-damaged mask and the advice
    was label mode 'threshold' (which then scored the image as a mask); every mode now says it
    looks like an image, and none suggests threshold. A damaged mask keeps its own message."""
    img, _ = D.synthetic_cells((96, 96), seed=int(rng.integers(1 << 30)))
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / "im.png")
    lab = read_image(tmp_path / "im.png", "label")
    for mode in ("auto", "binary", "instance", "classes", "threshold"):
        with pytest.raises(InputError, match=r"im\.png: looks like an image, not a label image") as e:
            instances_from_label_image(lab, mode, str(tmp_path / "im.png"))
        assert "threshold" not in str(e.value)
    # neighbour: a 16-bit microscope image
    g16 = np.round(ndi_gauss(rng.standard_normal((80, 90)), 4) * 3000 + 20000 + rng.normal(0, 50, (80, 90)))
    with pytest.raises(InputError, match="looks like an image"):
        instances_from_label_image(g16.astype(np.uint16), "auto", "g16.tif")
    # instance labels of many small objects stay labels
    inst = np.kron(rng.permutation(24 * 24).reshape(24, 24) + 1, np.ones((4, 4), int))
    assert np.array_equal(instances_from_label_image(inst, "auto"), inst)
