"""Ways to turn a foreground probability map into instances, compared by the ablation (SEG):
connected components of p > 0.5 (unetcu's), and two seeded watersheds that split touching objects."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def instance_variants(prob_fg: np.ndarray) -> dict:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed
    fg = prob_fg > 0.5
    cc = ndi.label(fg)[0]
    # seeds: cores the net is sure of; flooded over -p inside the foreground
    ws_prob = watershed(-prob_fg, ndi.label(prob_fg > 0.9)[0], mask=fg)
    # seeds: maxima of the distance to the background, at least 7 px apart. unetcu.instances' watershed
    # (predict --instances watershed) is this plus a seed for a component without a maximum; the copy
    # keeps the ablation's recorded seg_ws_dist reproducible as measured
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=7, labels=cc, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    ws_dist = watershed(-dist, markers, mask=fg)
    return dict(cc=cc, ws_prob=ws_prob, ws_dist=ws_dist)
