"""Segmentation metrics of the ISBI 2012 EM and cell tracking challenges.

- pixel_error: the plain misclassification rate of the foreground/background map (1 - accuracy);
  pixel_error_fscore: 1 - the maximal pixel F-score over the thresholds 0.0..1.0 by 0.1 (ISBI).
- iou: Jaccard index of the foreground. The one definition used everywhere (evaluate, the
  trainer's validation, benchmarks).
- seg: the cell tracking challenge's SEG: each ground-truth object is matched with the predicted
  object that covers more than half of it; its Jaccard index (0 without a match), averaged over
  the ground-truth objects.

Empty cases (no ground-truth foreground), each defined so that agreement scores perfect: iou is
1.0 when both maps are empty and 0.0 when only the prediction has foreground; seg is 1.0 when
neither has objects and 0.0 when only the prediction has; pixel errors are the share of wrong
pixels (0.0 when both are empty); rand and info scores are 1.0 (errors 0.0), since only
ground-truth foreground pixels count.
- rand / info: foreground-restricted Rand and information-theoretic scores (ISBI 2012): only
  pixels with ground truth != 0 count; predicted segments are the connected components of the
  thresholded foreground map, its background pixels forming one more segment.
  V_rand = sum p_ij^2 / (1/2 sum s_i^2 + 1/2 sum t_j^2) over the contingency table p of
  (truth, prediction); V_info = 2 I(S;T) / (H(S) + H(T)). The errors are 1 - the maximum over
  thresholds 0.0..1.0 by 0.1 (for a hard segmentation: 1 - the score).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse

THRESHOLDS = tuple(np.round(np.arange(0.0, 1.01, 0.1), 2))


def pixel_error(pred_fg: np.ndarray, true_fg: np.ndarray) -> float:
    return float((np.asarray(pred_fg, bool) != np.asarray(true_fg, bool)).mean())


def pixel_error_fscore(prob_fg: np.ndarray, true_fg: np.ndarray, thresholds=THRESHOLDS) -> float:
    t = np.asarray(true_fg, bool)
    best = 0.0
    for th in thresholds:
        p = prob_fg > th
        tp = (p & t).sum()
        denom = p.sum() + t.sum()
        best = max(best, 2 * tp / denom if denom else 1.0)
    return float(1 - best)


def iou(pred_fg: np.ndarray, true_fg: np.ndarray) -> float:
    """|pred & true| / |pred | true| of two foreground maps; 1.0 when both are empty."""
    p, t = np.asarray(pred_fg, bool), np.asarray(true_fg, bool)
    union = (p | t).sum()
    return float((p & t).sum() / union) if union else 1.0


def contingency(true_lab: np.ndarray, pred_lab: np.ndarray) -> sparse.csr_matrix:
    """Pixel counts of (truth label, predicted label) over the pixels where truth != 0."""
    m = true_lab != 0
    t = true_lab[m].astype(np.int64)
    p = pred_lab[m].astype(np.int64)
    return sparse.coo_matrix((np.ones(t.size), (t, p)), shape=(int(true_lab.max()) + 1, int(pred_lab.max()) + 1)).tocsr()


def rand_score(true_lab: np.ndarray, pred_lab: np.ndarray, pairs: bool = False) -> float:
    """V_rand (foreground-restricted): 1 is perfect. pairs=True counts pixel pairs without a pixel
    paired with itself (n(n-1) instead of n^2), as scikit-image's adapted_rand_error does."""
    c = contingency(true_lab, pred_lab)
    n = c.sum()
    if n == 0:
        return 1.0
    rows = np.asarray(c.sum(axis=1)).ravel()
    cols = np.asarray(c.sum(axis=0)).ravel()
    if pairs:
        p2, s2, t2 = (c.data ** 2).sum() - n, (rows ** 2).sum() - n, (cols ** 2).sum() - n
    else:
        p2, s2, t2 = ((c.data / n) ** 2).sum(), ((rows / n) ** 2).sum(), ((cols / n) ** 2).sum()
    return float(p2 / (0.5 * s2 + 0.5 * t2))


def _entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def info_score(true_lab: np.ndarray, pred_lab: np.ndarray) -> float:
    """V_info (foreground-restricted): 2 I(S;T) / (H(S) + H(T)); 1 is perfect."""
    c = contingency(true_lab, pred_lab)
    n = c.sum()
    if n == 0:
        return 1.0
    pij = c.data / n
    hs = _entropy(np.asarray(c.sum(axis=1)).ravel() / n)
    ht = _entropy(np.asarray(c.sum(axis=0)).ravel() / n)
    mi = hs + ht - _entropy(pij)
    return float(2 * mi / (hs + ht)) if hs + ht > 0 else 1.0


def seg_score(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """SEG: mean Jaccard of each ground-truth object with the prediction covering > 50 % of it.
    Without ground-truth objects: 1.0 if the prediction has none either, else 0.0."""
    true_inst, pred_inst = np.asarray(true_inst), np.asarray(pred_inst)
    ids = [k for k in np.unique(true_inst) if k != 0]
    if not ids:
        return 0.0 if np.any(pred_inst != 0) else 1.0
    c = contingency(true_inst, pred_inst).tolil()
    pred_sizes = np.bincount(pred_inst.ravel().astype(np.int64), minlength=int(pred_inst.max()) + 1)
    true_sizes = np.bincount(true_inst.ravel().astype(np.int64))
    scores = []
    for k in ids:
        row = c.getrow(k).toarray().ravel()
        row[0] = 0  # predicted background is no object
        j = int(row.argmax())
        inter = row[j]
        if j == 0 or inter <= 0.5 * true_sizes[k]:
            scores.append(0.0)
        else:
            scores.append(inter / (true_sizes[k] + pred_sizes[j] - inter))
    return float(np.mean(scores))


def segments(fg: np.ndarray) -> np.ndarray:
    """Connected components (4-connectivity) of a foreground map: the predicted segmentation."""
    return ndi.label(fg)[0]


def evaluate(true_inst: np.ndarray, prob_fg: np.ndarray | None = None, pred_inst: np.ndarray | None = None,
             thresholds=THRESHOLDS) -> dict:
    """All metrics of one image. Give prob_fg (foreground probability) to sweep the thresholds, or
    a hard segmentation pred_inst (0 = background, objects numbered)."""
    true_inst = np.asarray(true_inst)
    true_fg = true_inst > 0
    if prob_fg is None and pred_inst is None:
        raise ValueError("give prob_fg or pred_inst")
    if prob_fg is not None:
        prob_fg = np.asarray(prob_fg, dtype=np.float64)
        if prob_fg.shape != true_inst.shape:
            raise ValueError(f"prediction {prob_fg.shape} and labels {true_inst.shape} differ in size")
        segs = {t: segments(prob_fg > t) for t in thresholds}
        hard = segs[0.5] if 0.5 in segs else segments(prob_fg > 0.5)
        vr = max(rand_score(true_inst, s) for s in segs.values())
        vi = max(info_score(true_inst, s) for s in segs.values())
        pe_f = pixel_error_fscore(prob_fg, true_fg, thresholds)
    else:
        hard = np.asarray(pred_inst)
        if hard.shape != true_inst.shape:
            raise ValueError(f"prediction {hard.shape} and labels {true_inst.shape} differ in size")
        vr, vi = rand_score(true_inst, hard), info_score(true_inst, hard)
        pe_f = pixel_error_fscore(hard > 0, true_fg, (0.5,))
    return dict(pixel_error=pixel_error(hard > 0, true_fg), pixel_error_fscore=pe_f, iou=iou(hard > 0, true_fg),
                seg=seg_score(true_inst, hard), rand_error=max(0.0, 1 - vr), info_error=max(0.0, 1 - vi))  # not -1e-16


METRIC_NAMES = ("pixel_error", "pixel_error_fscore", "iou", "seg", "rand_error", "info_error")


def evaluate_probs(true_inst: np.ndarray, probs: np.ndarray, border: int = 0) -> dict:
    """evaluate() of class probabilities (K, H, W): the foreground 1 - p(background) over the
    thresholds; for a model with a border class (border > 0, UNet.config["border"]) the objects
    (seg, rand_error, info_error) are predict's, the cell class grown into the border
    (instances.from_classes of the argmax), not the foreground's components, which would join
    the cells the border separates."""
    m = evaluate(true_inst, prob_fg=1.0 - np.asarray(probs[0], np.float64))
    if border:
        from .instances import from_classes
        hard = evaluate(true_inst, pred_inst=from_classes(np.asarray(probs).argmax(0), border))
        m.update({k: hard[k] for k in ("seg", "rand_error", "info_error")})
    return m


def prediction_border(path) -> int:
    """The border class's width that predict recorded in a NAME_prob.tif (TIFF metadata) or
    NAME_labels.png (a PNG text chunk); 0: none recorded (a model without a border class, or a file
    predict did not write)."""
    from PIL import Image
    try:
        if str(path).lower().endswith((".tif", ".tiff")):
            import tifffile
            with tifffile.TiffFile(path) as t:
                meta = t.shaped_metadata[0] if t.shaped_metadata else {}
            b = meta.get("unetcu_border", 0) if isinstance(meta, dict) else 0
        else:
            with Image.open(path) as im:
                b = im.info.get("unetcu_border", "0")
            b = int(b) if str(b).isdigit() else 0
    except Exception:  # unreadable here: the reader proper reports it
        return 0
    return int(b) if isinstance(b, int) and not isinstance(b, bool) and b > 0 else 0


def format_table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'image':<28}" + "".join(f"{m:>20}" for m in METRIC_NAMES)
    lines = [head]
    for name, r in rows:
        lines.append(f"{name[:28]:<28}" + "".join(f"{r[m]:>20.4f}" for m in METRIC_NAMES))
    if len(rows) > 1:
        mean = {m: float(np.nanmean([r[m] for _, r in rows])) for m in METRIC_NAMES}
        lines.append(f"{'mean':<28}" + "".join(f"{mean[m]:>20.4f}" for m in METRIC_NAMES))
    return "\n".join(lines)


# ---- files (unetcu evaluate) ---------------------------------------------------------------------
def _prediction_files(path):
    """{name: (kind, file)} of a prediction file or folder written by `unetcu predict` (NAME_prob.tif
    preferred, else NAME_instances.png, else NAME_labels.png), or of plain label images (kind
    'plain': read by the label mode, like the ground truth, so another tool's instance ids count)."""
    from pathlib import Path
    from .data import IMAGE_EXTS
    p = Path(path)
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    if not p.exists():
        raise FileNotFoundError(f"no such prediction file or folder: {p}")
    found = {}
    for kind, suffix in (("prob", "_prob"), ("instances", "_instances"), ("labels", "_labels")):
        for f in files:
            if f.suffix.lower() in IMAGE_EXTS and f.stem.endswith(suffix):
                found.setdefault(f.stem[: -len(suffix)], (kind, f))
    if not found:  # label images of another tool: read as the ground truth is (instance ids kept)
        found = {f.stem: ("plain", f) for f in files if f.suffix.lower() in IMAGE_EXTS}
    if not found:
        raise FileNotFoundError(f"{p}: no prediction images")
    return found


def _by_number(items, stem):
    """items in the order of their names' last number (slice_2 before slice_10; 0- or 1-based alike)
    when every name has one and no two share it, else in name order."""
    import re
    nums = [re.findall(r"\d+", stem(x)) for x in items]
    if all(nums) and len({int(n[-1]) for n in nums}) == len(items):
        return [x for _, x in sorted(zip([int(n[-1]) for n in nums], items), key=lambda t: t[0])]
    return sorted(items, key=stem)


def _predict_outputs(files) -> list:
    """The files among `files` that are predict's outputs by their content, not only their names:
    NAME_prob.tif holding float class pages, or NAME_labels.png with NAME_instances.png beside it
    (ground truth that is merely named NAME_labels.png is none)."""
    from .data import ImageFile, InputError
    stems = {f.stem for f in files}
    found = []
    for f in files:
        if f.stem.endswith("_labels") and f.stem[:-7] + "_instances" in stems:
            found.append(f)
        elif f.stem.endswith("_prob") and f.suffix.lower() in (".tif", ".tiff") and len(found) < 3:
            try:
                fp = ImageFile(f)
                if fp.n_pages >= 2 and next(fp.pages()).dtype.kind == "f":
                    found.append(f)
            except (InputError, OSError):
                pass
    return found


def _check_order(pred_path, label_path, preds: dict, labels: list):
    """Refuse PREDICTIONS and LABELS given the other way round: the first holds plain label images
    and the second predict's outputs (unetcu predict says the same for a model given after its images)."""
    outputs = _predict_outputs(labels)
    if outputs and any(kind != "plain" for kind, _ in preds.values()):
        raise ValueError(f"LABELS {label_path} holds predict's outputs ({outputs[0].name}), not ground truth: evaluate "
                         f"takes PREDICTIONS then LABELS (the label images the predictions are scored against"
                         f"{_siblings_hint(label_path)})")
    if any(kind != "plain" for kind, _ in preds.values()):
        return
    if outputs:
        raise ValueError(f"evaluate takes PREDICTIONS then LABELS: {label_path} holds predict's outputs "
                         f"({outputs[0].name}) and {pred_path} label images; give them the other way round "
                         f"(unetcu evaluate {label_path} {pred_path})")


def _siblings_hint(path) -> str:
    """' (LABELS, e.g. examples/labels)' when a labels/ folder lies beside the folder given."""
    from pathlib import Path
    p = Path(path)
    cand = (p if p.is_dir() else p.parent).parent / "labels"
    return f", e.g. {cand}" if cand.is_dir() and cand.resolve() != Path(path).resolve() else ""


def evaluate_files(pred_path, label_path, label_mode: str = "auto"):
    """[(name, metrics)] for predictions paired with label images by name or by last number; a
    multi-page label stack pairs its page k with the k-th prediction page (per-page files in the
    order of their last number, or the pages of a prediction stack), and the other way round."""
    from pathlib import Path
    from .data import IMAGE_EXTS, ImageFile, InputError, NotALabelImage, open_label, pair_labels, read_label
    preds = _prediction_files(pred_path)
    lp = Path(label_path)
    if not lp.exists():
        raise FileNotFoundError(f"no such label file or folder: {lp}")
    labels = sorted(f for f in lp.iterdir() if f.suffix.lower() in IMAGE_EXTS) if lp.is_dir() else [lp]
    if not labels:
        raise FileNotFoundError(f"{lp}: no label images")
    _check_order(pred_path, label_path, preds, labels)
    names = sorted(preds)
    popen = {n: ImageFile(preds[n][1], "image" if preds[n][0] == "prob" else "label") for n in names}
    lopen = {f: open_label(f, label_mode) for f in labels}

    def npages(n):  # prediction pages (a probability file's pages are its classes: one prediction)
        return 1 if preds[n][0] == "prob" else popen[n].n_pages

    # items: (row name, prediction name, its page, label file, its page)
    if (len(labels) == 1 and lopen[labels[0]].n_pages > 1) or (len(names) == 1 and npages(names[0]) > 1):
        pitems = [(n if npages(n) == 1 else f"{n}-{k:03d}", n, k)
                  for n in _by_number(names, lambda n: n) for k in range(npages(n))]
        litems = [(f, k) for f in _by_number(labels, lambda f: f.stem) for k in range(lopen[f].n_pages)]
        if len(pitems) != len(litems):
            def desc(files, opened, prob=False):
                return (f"{files[0]}: {opened.describe()}{', one page per class' if prob else ''}" if len(files) == 1
                        else f"{Path(files[0]).parent}: {len(files)} files")

            def pages(n):
                return f"{n} page" + ("s" if n != 1 else "")
            pdesc = desc([preds[n][1] for n in names], popen[names[0]], preds[names[0]][0] == "prob")
            raise InputError(f"{pages(len(pitems))} of predictions ({pdesc}) and {pages(len(litems))} of labels "
                             f"({desc(labels, lopen[labels[0]])}) differ in number; evaluate pairs the k-th page with the k-th")
        items = [(row, n, k, f, j) for (row, n, k), (f, j) in zip(pitems, litems)]
    else:
        paired = pair_labels(names, labels) if len(names) > 1 or len(labels) > 1 else [labels[0]]  # one each: a pair
        items = []
        for n, lab in zip(names, paired):
            if lab is None:
                raise ValueError(f"no label image for prediction {preds[n][1].name} (pairing by name or by last number)")
            pn, ln = npages(n), lopen[lab].n_pages
            if pn != ln:
                raise InputError(f"prediction {preds[n][1]} ({popen[n].describe()}"
                                 f"{', one page per class' if preds[n][0] == 'prob' else ''}) and label {lab} "
                                 f"({lopen[lab].describe()}) differ in number of pages")
            items += [(n if pn == 1 else f"{n}-{k:03d}", n, k, lab, k) for k in range(pn)]
    cache = {}

    def page(opened, k, key):  # the pages of one file per side at a time, each file read once
        if cache.get(key, (None,))[0] is not opened:
            cache[key] = (opened, list(opened.pages()))
        return cache[key][1] if k is None else cache[key][1][k]

    def read(arr, where, role, given):
        try:
            return read_label(arr, label_mode, where)[0]
        except NotALabelImage as e:
            what = ("LABELS", "the ground truth" + _siblings_hint(given)) if role == "label" else \
                   ("PREDICTIONS", "predict's outputs or label images")
            raise NotALabelImage(f"{what[0]} {given}: {e.where} looks like an image, not a label image ({e.why}); "
                                 f"evaluate takes PREDICTIONS then LABELS ({what[1]})", e.where, e.why) from None

    rows = []
    for row, n, k, lab, j in items:
        kind, f = preds[n]
        fp, fl = popen[n], lopen[lab]
        true = read(page(fl, j, "l"), fl.where(j), "label", label_path)
        if kind == "prob":
            a = page(fp, None, "p")
            if len(a) < 2:
                raise InputError(f"{f}: expected class probabilities (one page per class), got {fp.describe()}")
        if fp.hw != true.shape:
            raise InputError(f"prediction {f} ({fp.describe()}) and label {lab} ({fl.describe()}) differ in size")
        if kind == "prob":
            rows.append((row, evaluate_probs(true, np.asarray(a), prediction_border(f))))
        else:
            p = page(fp, k, "p")
            if kind == "plain":
                inst = read(p, fp.where(k), "pred", pred_path)
            elif kind == "instances":  # predict's instance ids
                inst = p
            elif border := prediction_border(f):  # a border model's class map (0, 127, 254): its cells grown
                from .instances import from_classes
                inst = from_classes(np.asarray(p) // 127, border)
            else:  # the components of predict's class map
                inst = segments(p > 0)
            rows.append((row, evaluate(true, pred_inst=inst)))
    return rows
