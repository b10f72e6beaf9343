"""`unetcu predict`: segment image files with a trained model, by overlap-tile, and write the
results. The path reads one way down: the checkpoint and its defaults (load_model), the input
files and output names (check_outputs), then per page: standardise -> tiling.predict_probs (tiles
-> model -> class probabilities) -> write_results (labels, instances, overlay).

Before anything is written, every input is opened and every page read once and checked (layout,
finite values), and every output name is checked: predict never writes over one of its inputs,
and never over an existing file unless --overwrite. Then it streams: read, predict and write one
page at a time, so memory stays near one page's working set however many pages come in. Each
output file is written to a temporary name and renamed, so a failure leaves no half-written file."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from .data import ImageFile, page_names, standardise
from .files import atomic_write, same_file
from .instances import METHODS as INSTANCE_METHODS, from_classes, min_distance_for, min_size_for, remove_small
from .model import NotAModelFile, UNet
from .tiling import check_tiles, predict_probs
from .viz import colour_instances

OUTPUTS = ("_prob.tif", "_labels.png", "_instances.png", "_overlay.png")
def write_results(out: Path, name: str, probs: np.ndarray, img: np.ndarray | None = None, method: str = "components",
                  min_distance: int = 7, min_size: int = 0, border: int = 0) -> tuple[int, int]:
    """Write NAME's four outputs; returns (objects in NAME_instances.png, objects under min_size px
    removed from it). NAME_labels.png and NAME_prob.tif stay the network's output, specks included.
    border: the model's border class (UNet.config["border"]; its objects: instances.from_classes)."""
    import tifffile
    from PIL import Image
    if not np.isfinite(probs).all():  # huge (finite) weights overflow: NaN would read as background
        raise ValueError(f"{name}: the model's output is not finite ({int((~np.isfinite(probs)).sum())} values): "
                         "its weights are out of range (a diverging run?)")
    k = probs.shape[0]
    labels = probs.argmax(0)
    inst, removed = remove_small(from_classes(labels, border, method, min_distance), min_size)
    n = int(inst.max())
    if n >= 2**16:
        raise ValueError(f"{name}: {n} objects do not fit a 16-bit instance image")
    scale = 255 // max(1, k - 1)
    atomic_write(out / f"{name}_prob.tif", lambda p: tifffile.imwrite(p, probs.astype(np.float32), photometric="minisblack",
                                                                      metadata={"unetcu_border": int(border)} if border else {}))
    # (the border class's width rides in the TIFF and the PNG, so that `unetcu evaluate` makes objects as predict does)
    # (minisblack: without it tifffile stores 3 or 4 classes as one RGB(A) image, not pages)
    info = None
    if border:  # evaluate reads the class map of a border model as predict does (cells grown into the border)
        from PIL.PngImagePlugin import PngInfo
        info = PngInfo()
        info.add_text("unetcu_border", str(int(border)))
    atomic_write(out / f"{name}_labels.png",
                 lambda p: Image.fromarray((labels * scale).astype(np.uint8)).save(p, format="PNG", pnginfo=info))
    atomic_write(out / f"{name}_instances.png", lambda p: Image.fromarray(inst.astype(np.uint16)).save(p, format="PNG"))
    if img is not None:
        atomic_write(out / f"{name}_overlay.png", lambda p: Image.fromarray(colour_instances(inst, img)).save(p, format="PNG"))
    return n, removed


def check_outputs(out: Path, names, inputs, overwrite: bool) -> list[Path]:
    """The output paths of these names; refuses one that is an input (always) or that exists
    (unless overwrite), before anything is written."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a folder for the outputs")
    targets = [out / f"{n}{s}" for n in names for s in OUTPUTS]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    for t in existing:
        for i in inputs:
            if same_file(t, i):
                raise FileExistsError(f"output {t} would overwrite the input {i}; choose another --out "
                                      "(predict never writes over its inputs)")
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} already exists{more}; predict does not overwrite files: "
                              "choose another --out, or give --overwrite")
    return targets


def instance_method(instances: str, state: dict, border: int = 0) -> str:
    """The instance step predict uses: `instances` as given, or for "auto" the watershed where the
    model's training objects touched one another (at least run.BORDER_TOUCHING of them, recorded in
    the checkpoint as `touching`: DIC-HeLa, DSB 2018), else the connected components (membrane
    labels like ISBI 2012's, class labels, a checkpoint that records nothing, or a model with a
    border class, whose border separates the cells). Decided from the training labels, never from
    the images predicted."""
    from .run import BORDER_TOUCHING
    if instances not in ("auto", *INSTANCE_METHODS):
        raise ValueError(f"instances must be auto or one of {INSTANCE_METHODS}, got {instances!r}")
    if instances != "auto":
        return instances
    t = state.get("touching")
    touching = isinstance(t, (int, float)) and not isinstance(t, bool) and t >= BORDER_TOUCHING
    return "watershed" if touching and state.get("object_radius") and not border else "components"


def load_model(model_path, engine, precision, instances, min_distance, min_size):
    """(model, method, min_distance, min_size): the checkpoint's model on `engine`, the instance step
    (instance_method) and the defaults its training objects' size gives (min_distance: the
    watershed's seed spacing; min_size: objects of fewer pixels are left out; see instances.py).
    Raises ValueError for an image given where the model belongs, a damaged object size, watershed
    without a spacing, or a model that does not take one channel."""
    instance_method(instances, {})  # an unknown method fails before the model is read
    try:
        model, _, state = UNet.load(model_path, engine=engine, with_state=True, precision=precision)
    except NotAModelFile as e:
        if not e.kind.endswith(" image"):
            raise
        raise ValueError(f"{e} (the model comes first, then the images)") from None  # an image where the model belongs
    instances = instance_method(instances, state, model.config["border"])
    if min_distance is not None and instances != "watershed":
        raise ValueError("--min-distance sets the watershed's seed spacing: give it with --instances watershed (or "
                         "auto, for a model trained on touching objects)")
    radius = state.get("object_radius")
    if radius is not None and not (isinstance(radius, (int, float)) and not isinstance(radius, bool)
                                   and math.isfinite(radius) and radius > 0):
        raise ValueError(f"{model_path}: the size of its training objects (object_radius) is {radius!r}, not a radius in "
                         "pixels: a damaged or edited checkpoint")
    if instances == "watershed" and min_distance is None:
        if not radius:
            raise ValueError(f"{model_path} does not record the size of its training objects (trained on class labels, "
                             "or by an older unetcu): give --min-distance PX for --instances watershed")
        min_distance = min_distance_for(radius)
    if min_size is None:
        min_size = min_size_for(radius) if radius else 0
    if model.config["in_channels"] != 1:
        raise ValueError(f"{model_path}: the model takes {model.config['in_channels']} channels; files give 1")
    return model, instances, min_distance, min_size


def predict_files(model_path, images, out_dir, engine=None, tile=None, batch=4, tta=False, progress=True,
                  precision="fp32", overwrite=False, instances="auto", min_distance=None, min_size=None):
    """Segment image files (see the module's docstring); instances: the method of NAME_instances.png,
    auto (instance_method) or one of unetcu.instances.METHODS; min_distance: the watershed's seed spacing in pixels (default:
    from the checkpoint's object_radius); min_size: objects of fewer pixels are left out of
    NAME_instances.png (default: a tenth of the training objects' median area, from object_radius;
    0 where the checkpoint records none). Raises ValueError for watershed without a spacing."""
    model, instances, min_distance, min_size = load_model(model_path, engine, precision, instances, min_distance, min_size)
    files = [ImageFile(p) for p in images]  # every layout checked
    names = [page_names(f) for f in files]
    flat = [n for ns in names for n in ns]
    dup = {n for n in flat if flat.count(n) > 1}
    if dup:
        raise ValueError(f"two inputs would write the same outputs: {', '.join(sorted(dup))}")
    check_tiles(model, tile, batch)  # before any work; without --tile, the largest tile predict_probs would pick
    out = Path(out_dir)
    check_outputs(out, flat, [*images, model_path], overwrite)  # the model is an input too
    for f in files:  # every page read once and checked (finite values) before anything is written
        for _ in f.pages():
            pass
    out.mkdir(parents=True, exist_ok=True)
    i = 0
    for f, ns in zip(files, names):
        for name, page in zip(ns, f.pages()):
            img = standardise(page)
            del page
            try:
                probs = predict_probs(model, img, tile=tile, batch=batch, tta=tta)
                n, removed = write_results(out, name, probs, img, instances, min_distance or 7, min_size,
                                           model.config["border"])
            except KeyboardInterrupt:  # a page's outputs are all there or none: drop a partial set
                for suffix in OUTPUTS:
                    (out / f"{name}{suffix}").unlink(missing_ok=True)
                raise PredictInterrupted(flat[:i], flat[i:], out) from None
            i += 1
            if progress:
                small = f" ({removed} under {min_size} px left out)" if removed else ""
                print(f"[{i}/{len(flat)}] {name}: {img.shape[0]}x{img.shape[1]}, {n} object{'' if n == 1 else 's'}{small} "
                      f"-> {out}/{name}_*",
                      file=sys.stderr)
    if progress:  # the ids 1..n of a 16-bit image are near black in a photo viewer: name the file to look at
        print(f"to look at: {out}/*_overlay.png (objects in colour over the image); *_instances.png holds the object "
              "ids as 16-bit values (near black in a photo viewer: open it in Fiji or napari, or give it to evaluate)",
              file=sys.stderr)
    return flat


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during predict: `done` pages have all their outputs in `out`, `left` pages none."""

    def __init__(self, done: list[str], left: list[str], out: Path):
        super().__init__(len(done), len(left))
        self.done, self.left, self.out = done, left, out
