"""Block-wise prediction of images larger than memory: zarr (and TIFF through tifffile's zarr
interface) in, zarr out, on Dask.

The output plane is cut into blocks of `block` x `block` pixels, a whole number of output tiles, so
block edges fall on tile edges of the in-memory overlap-tile grid (tiling.py). Every block is
predicted by the same tile loop (tiling.predict_padded) from its input window: the block plus the
valid-convolution margin on each side, which dask.array.map_overlap fetches from the neighbouring
chunks (and mirror padding supplies at the image border, exactly as tiling.mirror_pad does). Each
tile thus sees the pixels it sees in memory, and the stitched result equals
`tiling.predict_probs(model, image)` bit for bit on the same standardised image.

Per-image standardisation (zero mean, unit variance, as data.standardise) needs the whole image's
mean and standard deviation: they are reduced chunk by chunk by Dask before any block runs, which
sums in another order than NumPy does over the whole image, so they (and through them the
probabilities) can differ from the in-memory path by float rounding (about 1e-16 relative in the
statistics, 1e-7 in the probabilities).

Each block writes its probabilities and labels straight into the output zarr and then marks
itself done in a `done` array (one chunk per block): a rerun of the same command skips the blocks
marked done, so an interrupted run resumes where it stopped. Dask and zarr are the optional extra
`pip install -e ".[large]"`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .data import InputError, ImageFile
from .model import UNet
from .reference import check_precision
from .engines.runtime import ENGINES
from .tiling import check_tiles, mirror_index, predict_padded, tile_geometry

FORMAT = "unetcu-blocks-v1"
INSTALL = 'pip install -e ".[large]"'
TIFF_EXTS = (".tif", ".tiff")
DEFAULT_BLOCK = 1024  # about this many output pixels a side, rounded to whole output tiles
LOCAL_SCHEDULERS = ("threads", "processes", "sync")  # Dask's schedulers on this machine
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler (less if dask's distributed.comm.timeouts.connect is)


def _require():
    try:
        import dask.array  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"block-wise prediction needs dask and zarr ({e.name} is missing): {INSTALL}") from None


def is_zarr_store(path) -> bool:
    """A folder holding zarr metadata (v3 zarr.json, v2 .zarray/.zgroup)."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup"))


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


# ---- the scheduler -------------------------------------------------------------------------------
def check_scheduler(scheduler):
    """The scheduler argument, checked for form before anything connects: None, a distributed.Client,
    one of LOCAL_SCHEDULERS, or an address of a distributed scheduler as distributed reads it:
    SCHEME://HOST:PORT with a scheme distributed knows (tcp, tls, ws, wss, ucx; HOST:PORT alone is
    tcp; an IPv6 host in brackets) or inproc://... (a scheduler in this very process). Returns it;
    ValueError (one line) for any other form, RuntimeError when distributed is not installed."""
    if scheduler is None or not isinstance(scheduler, str) or scheduler in LOCAL_SCHEDULERS:
        return scheduler
    try:
        from distributed.comm import registry
        from distributed.comm.addressing import parse_host_port
    except ImportError:
        raise RuntimeError(f"--scheduler ADDRESS needs distributed: {INSTALL}") from None
    form = ("give a scheduler's SCHEME://HOST:PORT as `dask scheduler` prints it (e.g. tcp://10.0.0.5:8786), or "
            f"{', '.join(LOCAL_SCHEDULERS[:-1])} or {LOCAL_SCHEDULERS[-1]} for this machine")
    if not scheduler.strip():
        raise ValueError(f"--scheduler {scheduler!r}: an empty address; {form}")
    scheme, sep, loc = scheduler.partition("://")
    if not sep:
        import dask
        scheme, loc = dask.config.get("distributed.comm.default-scheme", "tcp"), scheduler
    problem = None
    if scheme not in registry.backends:
        try:
            registry.get_backend(scheme)  # a backend another package registers (entry point)
        except (ValueError, ImportError):
            problem = f"unknown scheme '{scheme}://' (distributed knows {', '.join(sorted(registry.backends))})"
    if problem is None and scheme == "inproc":
        if not loc.strip():
            problem = "an inproc address names a scheduler (inproc://HOST/PID/N)"
    elif problem is None:
        problem = _host_port_problem(loc)
        if problem is None:
            parse_host_port(loc)  # distributed's own reading, which the checks above let through
    if problem:
        raise ValueError(f"--scheduler {scheduler}: {problem}; {form}")
    return scheduler


def _host_port_problem(loc: str):
    """What is wrong with HOST:PORT (or [IPv6]:PORT) in words, or None."""
    if loc.startswith("["):
        host, sep, rest = loc[1:].partition("]")
        if not sep:
            return "an IPv6 host needs its closing ']'"
        port = rest[1:] if rest.startswith(":") else None
    else:
        host, sep, port = loc.rpartition(":")
        if not sep:
            host, port = loc, None
        elif ":" in host:
            return f"an IPv6 host goes in brackets, as [{host}]:{port}"
    if not host:
        return "no host name or IP address before the port"
    if any(ch.isspace() or ch in "/?#@" for ch in host):
        return f"host {host!r} is not a host name or IP address"
    if port is None:
        return "no port"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


# ---- input ---------------------------------------------------------------------------------------
class TiffStack:
    """A TIFF's one series as a (pages, H, W) array, read through tifffile's zarr interface (one
    strip or tile at a time, never the whole file). Picklable: a Dask worker process opens the file
    itself, once, on first read. shape, dtype, ndim, chunks as numpy/zarr."""

    def __init__(self, path):
        import tifffile
        import zarr
        f = ImageFile(path)  # the input-format policy: layout, page axes
        if f.layout != "gray":
            raise InputError(f"{path}: a {f.layout} TIFF (shape {f.shape}); block-wise prediction reads gray "
                             "pages only: save one gray channel, or predict it in memory (--out FOLDER)")
        self.path = str(path)
        with tifffile.imread(self.path, aszarr=True, series=0, level=0) as store:
            z = zarr.open(store, mode="r")
            self._series_shape, self._series_chunks = tuple(z.shape), tuple(z.chunks)
            self.dtype = np.dtype(z.dtype)
        self.shape = (f.n_pages, *f.hw)
        self.ndim = 3
        # strips/tiles of one page; page axes flattened into one, a page per chunk along it
        self.chunks = (1, *self._series_chunks[-2:])
        self._z = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_z", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _z=None, _lock=threading.Lock())

    def __getitem__(self, key):
        # key: (page slice, row slice, col slice) from dask, one page per chunk
        import tifffile
        import zarr
        pages, rows, cols = key
        with self._lock:  # one file handle per process, shared by its threads
            if self._z is None:
                self._z = zarr.open(tifffile.imread(self.path, aszarr=True, series=0, level=0), mode="r")
            out = np.empty((len(range(*pages.indices(self.shape[0]))), len(range(*rows.indices(self.shape[1]))),
                            len(range(*cols.indices(self.shape[2])))), self.dtype)
            outer = self._series_shape[:-2]
            for k, p in enumerate(range(*pages.indices(self.shape[0]))):
                idx = np.unravel_index(p, outer) if outer else ()
                out[k] = self._z[(*map(int, idx), rows, cols)]
        return out


def _ome_level0(group, path):
    """(array, axis names or None) of a zarr group: OME-Zarr's multiscale level 0 (v0.4 attrs
    'multiscales', v0.5 attrs 'ome'.'multiscales'), else the group's only array."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if ms:
        level0 = ms[0]["datasets"][0]["path"]
        axes = ms[0].get("axes")
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes] if axes else None
        return group[level0], names
    arrays = sorted(group.array_keys())
    if len(arrays) == 1:
        return group[arrays[0]], None
    listed = ", ".join(arrays[:5]) or "none"
    raise InputError(f"{path}: a zarr group with arrays [{listed}] and no OME-Zarr multiscales; "
                     f"give the array's own path (e.g. {path}/{arrays[0] if arrays else 'NAME'})")


def open_image(path):
    """Open a zarr store (array, group with one array, or OME-Zarr: level 0) or a TIFF as a lazy
    dask array (Z, H, W) in the file's dtype, without reading pixels. Returns (array, ndim): ndim 2
    for an image (Z = 1), 3 for a stack (each z-slice is predicted as a 2-D image).

    Raises FileNotFoundError (no such store or file), InputError (not zarr or TIFF; a folder that
    is no zarr store; a channel or time axis longer than 1; not 2-D or 3-D; a non-numeric dtype)."""
    _require()
    import dask.array as da
    import zarr
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such zarr store or TIFF file: {path}")
    if p.is_file() and p.suffix.lower() in TIFF_EXTS:
        t = TiffStack(p)
        x = da.from_array(t, chunks=t.chunks, lock=False, asarray=True, meta=np.empty((0, 0, 0), t.dtype))
        return x, (2 if t.shape[0] == 1 else 3)  # one page: an image, as the in-memory path reads it
    if not p.is_dir():
        raise InputError(f"{path}: block-wise prediction reads zarr stores and TIFF files (for PNG and other "
                         "images give --out a folder: they are predicted in memory)")
    if not is_zarr_store(p):
        raise InputError(f"{path} is a folder but not a zarr store (no zarr.json, .zarray or .zgroup)")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # a damaged store: any reader error is the same to the user
        raise InputError(f"cannot open zarr store {path}: {type(e).__name__}: {e}") from None
    names = None
    if isinstance(node, zarr.Group):
        node, names = _ome_level0(node, path)
    shape, dtype = tuple(node.shape), np.dtype(node.dtype)
    if dtype.kind not in "buif":
        raise InputError(f"{path}: pixel type {dtype} (shape {shape}) is not a layout unetcu reads")
    x = da.from_zarr(node)
    # drop axes that are not z, y, x when they have one element (OME's t and c); refuse longer ones
    if names and len(names) == x.ndim:
        for ax, n in zip(names, shape):
            if ax.lower() not in ("z", "y", "x") and n > 1:
                raise InputError(f"{path}: axis '{ax}' of length {n} (axes {''.join(names)}, shape {shape}); "
                                 "block-wise prediction takes one channel and one time point: (z,) y, x")
        x = x[tuple(slice(None) if ax.lower() in ("z", "y", "x") else 0 for ax in names)]
    while x.ndim > 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim not in (2, 3) or 0 in x.shape:
        raise InputError(f"{path}: an array of shape {shape}; block-wise prediction takes a 2-D image (Y, X) "
                         "or a 3-D stack (Z, Y, X) of one channel")
    return (x[None], 2) if x.ndim == 2 else (x, 3)


# ---- the block plan ------------------------------------------------------------------------------
def block_size(block, out: int, margin: int, tile: int) -> int:
    """The output block side in pixels: `block` if it is a whole number of output tiles and at
    least the margin (map_overlap takes the margin from one neighbouring chunk), else ValueError
    naming the nearest that are. None: about DEFAULT_BLOCK."""
    k_min = max(1, -(-margin // out))
    if block is None:
        return max(k_min, round(DEFAULT_BLOCK / out)) * out
    if block % out or block < k_min * out:
        lo, hi = block // out, -(-block // out)
        near = " or ".join(str(k * out) for k in sorted({max(lo, k_min), max(hi, k_min)}))
        raise ValueError(f"--block {block}: a block cannot hold whole output tiles: blocks must be a multiple of the "
                         f"{out}-pixel output tile (tile {tile}) and at least the {margin}-pixel margin; try {near}")
    return int(block)


def _axis_plan(n: int, out: int, margin: int, block: int):
    """For one image axis of n pixels: (output pixels of each block, chunks of the padded axis).
    The padded axis is the in-memory path's, margin + n_tiles*out + margin long; its chunk k holds
    block k's output pixels, plus the margin at both ends of the axis."""
    total = -(-n // out) * out
    outs = [block] * (total // block) + ([total % block] if total % block else [])
    chunks = list(outs)
    chunks[0] += margin  # the first and last chunk also hold the mirrored margin, so that
    chunks[-1] += margin  # map_overlap's neighbour overlap completes every block's window
    return outs, tuple(chunks)


def _mirror(x, axis: int, before: int, after: int):
    """Pad one axis of a dask array as tiling.mirror_pad pads it (tiling.mirror_index: reflect, a
    1-pixel axis repeats; each axis on its own), by concatenating the mirrored rows taken from the
    array itself: the pad is small, the array is never copied."""
    import dask.array as da
    n = x.shape[axis]
    idx = mirror_index(n, before, after)
    parts = [da.take(x, idx[:before], axis=axis)] if before else []
    parts.append(x)
    if after:
        parts.append(da.take(x, idx[before + n:], axis=axis))
    return da.concatenate(parts, axis=axis)


# ---- the per-worker model ------------------------------------------------------------------------
_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()
LOADS = 0  # models loaded by this process (a test counts them: one per worker, not one per block)


def worker_model(path: str, sha: str, engine: str, precision: str) -> UNet:
    """The model of this checkpoint, loaded once per process (a Dask worker) and kept: on a GPU
    worker it stays on that worker's GPU for every block. RuntimeError if the file on this worker
    is not the one the run started with."""
    global LOADS
    key = (path, sha, engine, precision)
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is None:
            if _sha256(path) != sha:
                raise RuntimeError(f"model {path} on this worker differs from the one the run started with")
            m = UNet.load(path, engine=engine, precision=precision)
            _MODELS[key] = m
            LOADS += 1
    return m


def _predict_block(window, spec, block_info=None):
    """One block: window (1, rows + 2*margin, cols + 2*margin) float32 -> its probabilities and
    labels written into the output store, then its done mark. Returns (1, 1, 1) uint8 ones."""
    import zarr
    z, i, j = block_info[None]["chunk-location"]
    model = worker_model(spec["model"], spec["sha"], spec["engine"], spec["precision"])
    probs = predict_padded(model, window[0], spec["tile"], spec["batch"])  # (C, rows, cols)
    h, w, b = spec["h"], spec["w"], spec["block"]
    y0, x0 = i * b, j * b
    y1, x1 = min(y0 + probs.shape[1], h), min(x0 + probs.shape[2], w)
    probs = probs[:, :y1 - y0, :x1 - x0]  # the last tile row/column reaches past the image
    g = zarr.open_group(spec["out"], mode="r+")
    zi = (z,) if spec["ndim"] == 3 else ()
    g["probs"][(slice(None), *zi, slice(y0, y1), slice(x0, x1))] = probs
    g["labels"][(*zi, slice(y0, y1), slice(x0, x1))] = probs.argmax(0).astype(np.uint8)
    g["done"][(*zi, i, j)] = 1  # last: a block is done only once its outputs are written
    return np.ones((1, 1, 1), np.uint8)


# ---- output --------------------------------------------------------------------------------------
class BlocksInterrupted(KeyboardInterrupt):
    """Ctrl-C during block-wise prediction: `done` of `total` blocks are written in `out`; a
    rerun of the same command continues with the others."""

    def __init__(self, done: int, total: int, out: str):
        super().__init__(done, total)
        self.done, self.total, self.out = done, total, out


def _check_output(out: Path, meta: dict, overwrite: bool):
    """What to do with `out`, before anything is read or written: "resume" (a store of this very
    run, unfinished), "new" (nothing there, or an empty folder) or "replace" (overwrite). Raises
    FileExistsError / NotADirectoryError for what predict must not touch."""
    import zarr
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a zarr store (a folder) or a new name")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    if not is_zarr_store(out):
        raise FileExistsError(f"{out} is a folder that is not a zarr store; predict does not write into it "
                              "(choose another --out)")
    try:
        g = zarr.open_group(str(out), mode="r")
        attrs = dict(g.attrs)
        done = np.asarray(g["done"][...]) if attrs.get("unetcu") == meta else None
    except Exception:  # an array, a damaged or foreign store: not a run to resume
        attrs, done = {}, None
    if overwrite:
        return "replace"
    if done is not None and done.all():
        raise FileExistsError(f"{out} already holds this prediction, complete; predict does not overwrite "
                              "files: choose another --out, or give --overwrite")
    if done is not None:
        return "resume"
    why = "a prediction with other settings or inputs" if "unetcu" in attrs else "a zarr store"
    raise FileExistsError(f"{out} already exists ({why}); predict does not overwrite files: choose another "
                          "--out, or give --overwrite")


def _create_output(out: Path, meta: dict, stats: dict, shapes: dict, chunks: dict, replace: bool):
    import zarr
    if replace:
        shutil.rmtree(out)
    g = zarr.open_group(str(out), mode="w")
    g.create_array("probs", shape=shapes["probs"], chunks=chunks["probs"], dtype="float32", fill_value=np.nan)
    g.create_array("labels", shape=shapes["labels"], chunks=chunks["labels"], dtype="uint8", fill_value=0)
    g.create_array("done", shape=shapes["done"], chunks=(1,) * len(shapes["done"]), dtype="uint8", fill_value=0)
    g.attrs["stats"] = stats
    g.attrs["unetcu"] = meta  # last: a store without it is never taken for a run to resume
    return g


def predict_zarr(model_path, source, out, engine=None, precision="fp32", tile=None, block=None, batch=4,
                 standardise=True, scheduler=None, workers=None, overwrite=False, progress=True) -> dict:
    """Predict a zarr store or TIFF (open_image) block by block on Dask and write a zarr group `out`:
      probs   float32 (C, H, W), or (C, Z, H, W) for a stack: class probabilities
      labels  uint8 (H, W) or (Z, H, W): the most probable class per pixel
      done    uint8 (n_block_rows, n_block_cols) or (Z, ...): 1 where a block is written
    chunked by `block` (output pixels a side, a multiple of the output tile; default about 1024).

    Each slice is standardised with its own mean and standard deviation (standardise=False: the
    input is taken as already standardised). scheduler: None or "threads" (Dask's threaded
    scheduler, `workers` threads), "processes" (a local process pool), a distributed scheduler
    address ("tcp://host:8786", checked by check_scheduler before anything else), or a
    distributed.Client; on a Ctrl-C the run's futures on the cluster are cancelled. The model file
    must be readable by every worker at the same path (it is loaded once per worker process).
    engine: resolved here for a local scheduler; for a cluster, give the workers' engine (None:
    resolved here).

    An existing `out` made by the same model, settings and input resumes (its blocks marked done
    are skipped); any other existing `out` is refused unless overwrite. Returns a summary dict
    (shape, blocks, skipped, seconds). Raises FileNotFoundError, InputError / ValueError (inputs,
    tile, block), FileExistsError (out), RuntimeError (extra missing, a block that failed),
    BlocksInterrupted (Ctrl-C)."""
    _require()
    check_scheduler(scheduler)  # a malformed address is refused before anything is read or connected
    import dask.array as da
    from dask.delayed import Delayed
    t0 = time.perf_counter()
    src, out = Path(source), Path(out)
    for given in (src, Path(model_path)):  # never the input, nor a folder that holds it or lies in it
        a, o = given.resolve(), out.resolve()
        if a == o or o in a.parents or a in o.parents:
            raise FileExistsError(f"--out {out} would overlap the input {given}; choose another --out "
                                  "(predict never writes over its inputs)")
    x, ndim = open_image(source)  # (Z, H, W), lazy
    check_precision(precision)
    # On a cluster the engine is the workers': this machine (maybe without a GPU) only reads the
    # checkpoint's config; on this machine the engine is resolved (and its memory checked) here.
    remote = scheduler is not None and not (isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS)
    if remote and engine is not None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
        model, run_engine = UNet.load(model_path, engine="numpy"), engine
    else:
        model = UNet.load(model_path, engine=engine)
        run_engine = model.engine
    c = model.config
    if c["in_channels"] != 1:
        raise ValueError(f"{model_path}: the model takes {c['in_channels']} channels; block-wise prediction gives 1")
    nz, h, w = x.shape
    tile, t_out, margin = tile_geometry(model, tile, (h, w))  # the same tile as the in-memory path picks
    b = block_size(block, t_out, margin, tile)
    if run_engine == model.engine:
        check_tiles(model, tile, batch)
    rows_out, rows_chunks = _axis_plan(h, t_out, margin, b)
    cols_out, cols_chunks = _axis_plan(w, t_out, margin, b)
    zi = (nz,) if ndim == 3 else ()
    shapes = dict(probs=(c["n_classes"], *zi, h, w), labels=(*zi, h, w), done=(*zi, len(rows_out), len(cols_out)))
    chunks = dict(probs=(1, *(1,) * len(zi), b, b), labels=(*(1,) * len(zi), b, b))
    sha = _sha256(model_path)
    meta = dict(format=FORMAT, model=os.path.abspath(model_path), model_sha256=sha, engine=run_engine,
                precision=precision, tile=tile, block=b, standardise=bool(standardise),
                source=os.path.abspath(source), source_shape=[int(v) for v in x.shape], source_dtype=str(x.dtype))
    action = _check_output(out, meta, overwrite)
    resumed = action == "resume"

    with _scheduler(scheduler, workers, progress) as (compute, _):
        # statistics per slice, float64, in one pass over the input (kept in the store for a resume)
        if resumed:
            import zarr
            g = zarr.open_group(str(out), mode="r+")
            st = g.attrs["stats"]
            if progress:
                n = int(np.asarray(g["done"][...]).sum())
                print(f"{out}: resuming, {n} of {int(np.prod(shapes['done']))} blocks already written", file=sys.stderr)
        else:
            x64 = x.astype(np.float64)
            fin = da.isfinite(x64).all(axis=(1, 2)) if x.dtype.kind == "f" else da.ones(nz, dtype=bool, chunks=nz)
            mean, std, ok = compute(x64.mean(axis=(1, 2)), x64.std(axis=(1, 2)), fin, what="statistics")
            bad = [int(k) for k in np.flatnonzero(~np.asarray(ok, bool))]
            if bad:
                where = f" slice {bad[0]}" if ndim == 3 else ""
                raise InputError(f"{source}{where}: non-finite pixel values (NaN or Inf); unetcu needs finite values")
            st = dict(mean=[float(v) for v in mean], std=[float(v) for v in std])
            g = _create_output(out, meta, st, shapes, chunks, action == "replace")
        if standardise:  # as data.standardise: float64 (x - mean) / (std or 1), then float32
            mean = np.asarray(st["mean"], np.float64)[:, None, None]
            std = np.asarray(st["std"], np.float64)[:, None, None]
            xs = ((x.astype(np.float64) - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
        else:
            xs = x.astype(np.float32)
        total_h, total_w = sum(rows_out), sum(cols_out)
        xp = _mirror(xs, 1, margin, margin + total_h - h)
        xp = _mirror(xp, 2, margin, margin + total_w - w)
        xp = xp.rechunk(((1,) * nz, rows_chunks, cols_chunks))  # one block (+ its margins) per chunk
        spec = dict(model=os.path.abspath(model_path), sha=sha, engine=run_engine, precision=precision, tile=tile,
                    batch=batch, h=h, w=w, block=b, ndim=ndim, out=os.path.abspath(out))
        status = xp.map_overlap(_predict_block, depth={0: 0, 1: margin, 2: margin}, boundary="none", trim=False,
                                chunks=((1,) * nz, (1,) * len(rows_out), (1,) * len(cols_out)), dtype=np.uint8,
                                meta=np.empty((0, 0, 0), np.uint8), spec=spec)
        done = np.asarray(g["done"][...]).reshape(nz, len(rows_out), len(cols_out))
        todo = [(status.name, *map(int, k)) for k in np.argwhere(done == 0)]
        graph = status.__dask_graph__()
        tasks = [Delayed(k, graph, layer=status.name) for k in todo]  # only these blocks (and their input) run
        try:
            if tasks:
                compute(*tasks, what=f"{len(tasks)} blocks")
        except KeyboardInterrupt:
            n = int(np.asarray(g["done"][...]).sum())
            raise BlocksInterrupted(n, done.size, str(out)) from None
    left = int((np.asarray(g["done"][...]) == 0).sum())
    if left:  # never a partial result reported as finished
        raise RuntimeError(f"{out}: {left} of {done.size} blocks were not written; rerun the same command to finish them")
    return dict(shape=tuple(x.shape) if ndim == 3 else (h, w), blocks=done.size, skipped=done.size - len(todo),
                computed=len(todo), block=b, tile=tile, resumed=resumed, seconds=time.perf_counter() - t0)


class _scheduler:
    """Context: (compute(*collections, what=...) -> results, client or None) on the chosen
    scheduler, with a progress bar on stderr when asked. On a distributed scheduler a Ctrl-C (or
    any error) cancels this run's futures before it propagates, and a client opened here is closed
    on the way out, quietly: no traceback, no asyncio 'Task exception was never retrieved'."""

    def __init__(self, scheduler, workers, progress=True):
        self.scheduler, self.workers, self.progress = scheduler, workers, progress
        self.client, self.own = None, False

    def __enter__(self):
        import dask
        s = check_scheduler(self.scheduler)
        if s is not None and not isinstance(s, str):  # a distributed.Client
            self.client = s
        elif s not in (None, *LOCAL_SCHEDULERS):
            self.client, self.own = _connect(s), True

        def compute(*cols, what=""):
            if self.client is not None:
                return self._compute_distributed(cols, what)
            kw = dict(scheduler=s or "threads")
            if self.workers:
                kw["num_workers"] = self.workers
            if not self.progress:
                return dask.compute(*cols, **kw)
            from dask.diagnostics import ProgressBar
            print(what, file=sys.stderr)
            with ProgressBar(out=sys.stderr):
                return dask.compute(*cols, **kw)
        return compute, self.client

    def _compute_distributed(self, cols, what):
        # Not client.gather(futures) while the futures run: a Ctrl-C inside it leaves one of its
        # per-future waiters failing with AllExit for every future, each printed by asyncio as a
        # 'Task exception was never retrieved' traceback. as_completed waits in this thread.
        from distributed import as_completed
        client, futures, bar = self.client, [], False
        try:
            futures = client.compute(list(cols))
            if self.progress:  # distributed's bar on stderr, given this client's scheduler and loop
                from distributed.diagnostics.progressbar import TextProgressBar
                print(f"{what} on {client.scheduler.address}", file=sys.stderr)
                bar = True
                with contextlib.redirect_stdout(sys.stderr):
                    TextProgressBar(futures, scheduler=client.scheduler.address, loop=client.loop, complete=True)
                bar = False
                print(file=sys.stderr)
            for f in as_completed(futures, loop=client.loop):
                if f.status != "finished":
                    f.result()  # raises the task's own error, as gather would
            return client.gather(futures)  # all finished: nothing left to wait for
        except BaseException:
            if bar:
                print(file=sys.stderr)  # what follows starts below the bar
            with contextlib.suppress(Exception):
                client.cancel(futures)  # nothing of this run keeps running on the cluster
            raise

    def __exit__(self, *exc):
        if self.own:
            _close(self.client)
        return False


def _connect_timeout() -> float:
    import dask
    from dask.utils import parse_timedelta
    return min(CONNECT_TIMEOUT, parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


def _connect(address):
    """A distributed.Client of the scheduler at `address` (checked by check_scheduler), or a
    one-line RuntimeError when it cannot be reached within _connect_timeout()."""
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError(f"--scheduler ADDRESS needs distributed: {INSTALL}") from None
    timeout = _connect_timeout()
    # Built in two steps so that a client whose connection fails is still ours to close here: left
    # to its __del__ at exit, it would wait twice the timeout and then print a traceback.
    client = Client.__new__(Client)
    try:
        client.__init__(address, timeout=timeout, set_as_default=False)
    except BaseException as e:
        _close(client)
        if not isinstance(e, Exception):  # Ctrl-C while connecting
            raise
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s: {why}") from None
    return client


def _close(client):
    """Close a client we opened, without a traceback whatever state it is in."""
    with contextlib.suppress(Exception):
        if getattr(client, "status", "closed") not in ("closed", "newly-created"):
            client.close(timeout=5)
