"""The paper's weight map: w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)).

- Classes: 1 = object interior, 0 = background including the separation borders between
  touching objects (data.classes_from_instances).
- w_c balances class frequencies (the paper does not say how): w_c(k) = 1 / (K * f_k), f_k the
  fraction of the image's pixels in class k and K the number of classes present, so the mean of
  w_c over the image is exactly 1.
- d1, d2: distances to the nearest and second-nearest object, objects being the instances with
  their separation borders removed. The border term is applied to background pixels (inside an
  object d1 = 0 and the term would only re-weight the interior), which puts the high weights in
  the narrow gaps between touching cells, as in the paper's Fig. 3.
- Fast: the term is below w0 * 1.5e-8 once d1 + d2 > 6 sigma, so each object's distance
  transform is computed only in its bounding box grown by 6 sigma (a 512x512 image with ~100
  objects takes a few tens of milliseconds).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .data import classes_from_instances


def class_balance(classes: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """w_c(x): inverse class frequency, normalised to a mean of 1 over the image."""
    classes = np.asarray(classes)
    counts = np.bincount(classes.ravel(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    wk = np.zeros(len(counts))
    wk[present] = classes.size / (present.sum() * counts[present])
    return wk[classes].astype(np.float32)


def nearest_two_distances(objects: np.ndarray, reach: float):
    """d1, d2 (float64, inf where farther than `reach`) to the nearest and second-nearest object
    of an instance map, each object's transform limited to its bounding box grown by `reach`."""
    h, w = objects.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    r = int(np.ceil(reach))
    for k, sl in enumerate(ndi.find_objects(objects), 1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - r, 0), min(sl[0].stop + r, h)
        x0, x1 = max(sl[1].start - r, 0), min(sl[1].stop + r, w)
        box = objects[y0:y1, x0:x1] == k
        d = ndi.distance_transform_edt(~box)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        b[...] = np.minimum(b, np.maximum(a, d))
        a[...] = np.minimum(a, d)
    return d1, d2


def weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0, n_classes: int = 2,
               balance: bool = True, classes: np.ndarray | None = None) -> np.ndarray:
    """float32 (H, W) weight map of an instance label image (0 = background). classes: the class map
    the net learns (default: data.classes_from_instances; data.border_classes for a border class):
    the class balance is over its classes, the border term on its background (class 0)."""
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"weight_map: instances must be 2-D, got shape {instances.shape}")
    classes = classes_from_instances(instances) if classes is None else np.asarray(classes)
    w = class_balance(classes, n_classes).astype(np.float64) if balance else np.ones(instances.shape)
    if w0 > 0:
        objects = instances * (classes > 0)
        d1, d2 = nearest_two_distances(objects, 6 * sigma)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))
        w += np.where(classes == 0, border, 0.0)
    return w.astype(np.float32)


BORDER_WEIGHT = 3.0  # the border class's weight, in multiples of its objects' weight (border_weight_map)


def border_weight_map(instances: np.ndarray, classes: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                      factor: float = BORDER_WEIGHT) -> np.ndarray:
    """float32 (H, W) weight map of the border target (classes: data.border_classes, 0 background,
    1 cell, 2 touching border): the class balance of background against objects (cell and border
    together), the paper's border term on the background, and the border class `factor` times the
    objects' weight. Not the three classes' inverse frequencies: the border is 1-3 % of the pixels,
    its weight then ~20x, and a net trained so calls a quarter of a DIC-HeLa frame border, leaving
    no cell to grow (SEG 0 on held-out frames; benchmarks/RESULTS.md). factor 3 moves the decision
    between cell and border to p(border) > 1/4: touching cells come apart a little early."""
    classes = np.asarray(classes)
    w = weight_map(instances, w0, sigma, 2, classes=(classes > 0).astype(np.int32))
    return np.where(classes == 2, np.float32(factor) * w, w).astype(np.float32)


def weight_map_bruteforce(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0, n_classes: int = 2,
                          balance: bool = True) -> np.ndarray:
    """The definition, computed the slow way: a full-image distance transform per object and the
    two smallest per pixel. For tests."""
    classes = classes_from_instances(instances)
    w = class_balance(classes, n_classes).astype(np.float64) if balance else np.ones(instances.shape)
    objects = instances * (classes > 0)
    ids = [k for k in np.unique(objects) if k > 0]
    if len(ids) >= 2 and w0 > 0:
        dists = np.sort(np.stack([ndi.distance_transform_edt(objects != k) for k in ids]), axis=0)
        term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma ** 2))
        w += np.where(classes == 0, term, 0.0)
    return w.astype(np.float32)
