"""The U-Net, forward and hand-written backward, on any op engine (numpy, emu, cuda).

Architecture (Ronneberger et al. 2015): `depth` levels; level l has base_channels * 2**l channels.
Contracting level l: two valid 3x3 convs + ReLU, then (except the deepest level, the bottleneck)
2x2 max-pooling. Dropout (training only) on the bottleneck's output, i.e. at the end of the
contracting path. Expanding level l (from depth-2 down to 0): a 2x2 up-convolution that halves the
channels, crop-and-concatenate with contracting level l's output (skip first), two valid 3x3
convs + ReLU. A final 1x1 conv to n_classes. The defaults are the paper's network: 23 conv
layers, 31,030,658 parameters, 572x572 input -> 388x388 output.

Parameter names, in forward order (PyTorch layouts: conv (out, in, kh, kw), up-conv (in, out, 2, 2)):
    down{l}.conv1.weight / .bias, down{l}.conv2.weight / .bias     l = 0 .. depth-1
    up{l}.upconv.weight / .bias, up{l}.conv1.*, up{l}.conv2.*      l = depth-2 .. 0
    head.weight / .bias
"""
from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict

import numpy as np

from . import ops
from . import reference as R
from .files import atomic_write
from .engines.runtime import resolve_engine, xp as array_module

FORMAT = "unetcu-model-v1"


# ---- valid sizes ---------------------------------------------------------------------------------
def output_size(n: int, depth: int = 5) -> int:
    """Output size of a U-Net of this depth for input size n (one axis); raises ValueError with the
    nearest valid sizes if some pooling would see an odd size or a map would vanish."""
    s = int(n)
    ok = s > 0
    for _ in range(depth - 1):
        s -= 4
        if s <= 0 or s % 2:
            ok = False
            break
        s //= 2
    if ok:
        s -= 4
        for _ in range(depth - 1):
            if s <= 0:
                break
            s = 2 * s - 4
        ok = s > 0
    if not ok:
        lo, hi = _neighbours(n, depth)
        near = " or ".join(str(v) for v in (lo, hi) if v is not None)
        raise ValueError(f"input size {n} is not valid for a U-Net of depth {depth}: every 2x2 pooling needs an even "
                         f"size and every map must stay non-empty; nearest valid sizes: {near}")
    return s


def _input_for_bottleneck(b: int, depth: int) -> int:
    x = b
    for _ in range(depth - 1):
        x = 2 * x + 4
    return x


def _output_for_bottleneck(b: int, depth: int) -> int:
    y = b - 4
    for _ in range(depth - 1):
        y = 2 * y - 4
    return y


def _min_bottleneck(depth: int) -> int:
    b = 5
    while _output_for_bottleneck(b, depth) <= 0:
        b += 1
    return b


def _neighbours(n: int, depth: int):
    b = _min_bottleneck(depth)
    lo = None
    while _input_for_bottleneck(b, depth) < n:
        lo = _input_for_bottleneck(b, depth)
        b += 1
    hi = _input_for_bottleneck(b, depth)
    if hi == n:
        hi = _input_for_bottleneck(b + 1, depth)
    return lo, hi


def valid_input_size(min_output: int, depth: int = 5) -> int:
    """The smallest valid input size whose output is at least min_output (one axis)."""
    b = _min_bottleneck(depth)
    while _output_for_bottleneck(b, depth) < min_output:
        b += 1
    return _input_for_bottleneck(b, depth)


def layer_shapes(tile: int, depth: int = 5, base_channels: int = 64, in_channels: int = 1, n_classes: int = 2,
                 batch: int = 1) -> list[dict]:
    """Every op of one forward pass for `batch` tiles of tile x tile pixels, in forward order: dicts
    of op ("conv3x3" | "maxpool2x2" | "upconv2x2" | "crop_concat" | "conv1x1" | "softmax_xent"),
    name (the parameter prefix, e.g. "down0.conv1") and the op's input sizes (N, C, H, W, K for the
    convolutions; Cs, Hs, Cu, H for crop_concat). The one description of the network's shapes that
    the model, the tests and the benchmarks share. Raises ValueError for an invalid tile."""
    out = output_size(tile, depth)
    layers, skips = [], []
    s, c = tile, in_channels
    for l in range(depth):
        ch = base_channels << l
        for j in (1, 2):
            layers.append(dict(op="conv3x3", name=f"down{l}.conv{j}", N=batch, C=c, H=s, W=s, K=ch))
            s, c = s - 2, ch
        if l < depth - 1:
            skips.append((c, s))
            layers.append(dict(op="maxpool2x2", name=f"pool{l}", N=batch, C=c, H=s, W=s))
            s //= 2
    for l in range(depth - 2, -1, -1):
        ch = base_channels << l
        layers.append(dict(op="upconv2x2", name=f"up{l}.upconv", N=batch, C=c, H=s, W=s, K=ch))
        s, c = 2 * s, ch
        cs, ss = skips[l]
        layers.append(dict(op="crop_concat", name=f"up{l}.concat", N=batch, Cs=cs, Hs=ss, Cu=c, H=s))
        c = cs + c
        for j in (1, 2):
            layers.append(dict(op="conv3x3", name=f"up{l}.conv{j}", N=batch, C=c, H=s, W=s, K=ch))
            s, c = s - 2, ch
    layers.append(dict(op="conv1x1", name="head", N=batch, C=c, H=s, W=s, K=n_classes))
    layers.append(dict(op="softmax_xent", name="loss", N=batch, K=n_classes, H=s, W=s))
    assert s == out
    return layers


def _output_elements(l: dict) -> int:
    """The elements of the feature map a layer of layer_shapes writes (the loss writes none)."""
    op, n = l["op"], l["N"]
    if op == "conv3x3":
        return n * l["K"] * (l["H"] - 2) * (l["W"] - 2)
    if op == "maxpool2x2":
        return n * l["C"] * (l["H"] // 2) * (l["W"] // 2)
    if op == "upconv2x2":
        return n * l["K"] * 4 * l["H"] * l["W"]
    if op == "crop_concat":
        return n * (l["Cs"] + l["Cu"]) * l["H"] * l["H"]
    if op == "conv1x1":
        return n * l["K"] * l["H"] * l["W"]
    return 0  # softmax_xent: the loss writes no feature map


def activation_bytes(tile: int, depth: int, base_channels: int, n_classes: int = 2, in_channels: int = 1,
                     batch: int = 1, training: bool = True) -> int:
    """About how many bytes the activations of one forward pass (training: and their gradients)
    take for `batch` tiles of tile x tile pixels: every feature map of layer_shapes in float32,
    counted once (twice when training). An estimate to refuse impossible sizes up front, not an
    exact peak. Raises ValueError (from output_size) for an invalid tile."""
    layers = layer_shapes(tile, depth, base_channels, in_channels, n_classes, batch)
    total = batch * in_channels * tile * tile + sum(_output_elements(l) for l in layers)
    return 4 * total * (2 if training else 1)


def check_memory(engine: str, tile: int, batch: int, depth: int, base_channels: int, n_classes: int = 2,
                 in_channels: int = 1, training: bool = True):
    """Refuse (ValueError) a tile and batch whose feature maps (activation_bytes) need more than 90% of
    the memory the engine has left (runtime.available_bytes): before anything is generated or
    allocated, instead of a failed multi-terabyte allocation deep inside a step."""
    from .engines.runtime import available_bytes
    need = activation_bytes(tile, depth, base_channels, n_classes, in_channels, batch, training)
    have = available_bytes(engine)
    if have is not None and need > 0.9 * have:
        what = "one training step" if training else "one forward pass"
        raise ValueError(f"{batch} tile(s) of {tile}x{tile} (--batch {batch}, --tile {tile}) need about {_bytes(need)} for {what}; engine {engine} "
                         f"has {_bytes(have)} available: use a smaller --tile or --batch")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_MAGIC = {b"\x89PNG": "a PNG image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"\xff\xd8\xff": "a JPEG image",
          b"BM": "a BMP image", b"GIF8": "a GIF image"}


class NotAModelFile(ValueError):
    """A file that cannot be a checkpoint; kind: what it looks like ("a PNG image", ...)."""

    def __init__(self, message, kind):
        super().__init__(message)
        self.kind = kind


def check_model_file(path) -> None:
    """Refuse what cannot be a checkpoint before np.load tries it (a checkpoint is an .npz zip;
    np.load would answer an image with advice about allow_pickle)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; expected a checkpoint.npz written by `unetcu train`")
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        kind = next((v for k, v in _MAGIC.items() if head.startswith(k)), "not an .npz archive")
        raise NotAModelFile(f"{path}: not a readable unetcu model file ({kind}); expected a checkpoint.npz written by "
                            "`unetcu train`", kind)


# ---- the model -----------------------------------------------------------------------------------
class UNet:
    """fuse: compute each expanding level's first conv straight from the skip map and the
    up-sampled map (forward, backward-data and backward-weight; the concatenated tensor and its
    gradient are never stored), and apply a conv's input ReLU gradient in the epilogue of its
    backward-data instead of in the previous conv's two backward kernels. Off: the plain op chain
    (crop_concat, then the conv). Same numbers either way (tested); the fused path moves fewer bytes.
    precision: "fp32" or "tf32" for the 3x3 convolutions (tf32: tensor cores, ~3e-4 relative error
    per convolution; weight gradients of a whole net move by a few percent, see kernels/README.md).
    Neither is part of the saved model.
    border: 0, or (with n_classes 3: background, cell, touching border) the width in px of the border
    class the model learns where cells touch (data.border_classes); part of the saved model: predict
    makes objects of the cell class grown into the border (instances.grow_cores).
    dtype: the parameters' and activations' float type: float32 on every engine; float64 on the numpy
    engine only, where it is the float64 oracle the tests compare the kernels with (see reference())."""

    def __init__(self, in_channels=1, n_classes=2, depth=5, base_channels=64, dropout=0.5, engine=None, seed=0,
                 fuse=True, precision="fp32", dtype=np.float32, border=0):
        if depth < 1 or base_channels < 1 or in_channels < 1 or n_classes < 2:
            raise ValueError("UNet: need depth >= 1, base_channels >= 1, in_channels >= 1, n_classes >= 2")
        if isinstance(border, bool) or int(border) != border or border < 0 or (border and n_classes != 3):
            raise ValueError(f"UNet: border is the touching border's width in px (0: no border class) with n_classes 3 "
                             f"(background, cell, border); got border {border!r}, n_classes {n_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet: dropout must lie in [0, 1), got {dropout}")
        ops.check_precision(precision, "UNet")
        self.config = dict(in_channels=int(in_channels), n_classes=int(n_classes), depth=int(depth),
                           base_channels=int(base_channels), dropout=float(dropout), border=int(border))
        # the seed only draws the initial weights: it is not part of the network (a run resumed or
        # fine-tuned under another seed is the same network)
        self.engine = resolve_engine(engine)
        self.xp = array_module(self.engine)
        if dtype not in (np.float32, np.float64, "float32", "float64") or dtype is None:
            raise ValueError(f"UNet: dtype must be float32, or float64 on engine numpy; got {dtype!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype == np.float64 and self.engine != "numpy":
            raise ValueError(f"UNet: dtype float64 needs engine numpy (only its reference computes in float64); "
                             f"engine {self.engine} computes in float32")
        self.fuse = bool(fuse)
        self.precision = precision
        self.params = self._init_params(np.random.default_rng(seed))

    def reference(self) -> "UNet":
        """A float64 copy of this model on the numpy engine: the oracle for gradient checks."""
        ref = UNet(engine="numpy", fuse=self.fuse, precision=self.precision, dtype=np.float64, **self.config)
        ref.params = OrderedDict((k, np.asarray(_to_host(v), dtype=np.float64)) for k, v in self.params.items())
        return ref

    # -- parameters --
    def channels(self, level: int) -> int:
        return self.config["base_channels"] * 2 ** level

    def _shapes(self):
        c = self.config
        shapes = OrderedDict()
        prev = c["in_channels"]
        for l in range(c["depth"]):
            ch = self.channels(l)
            shapes[f"down{l}.conv1"] = ("conv", (ch, prev, 3, 3))
            shapes[f"down{l}.conv2"] = ("conv", (ch, ch, 3, 3))
            prev = ch
        for l in range(c["depth"] - 2, -1, -1):
            ch = self.channels(l)
            shapes[f"up{l}.upconv"] = ("upconv", (self.channels(l + 1), ch, 2, 2))
            shapes[f"up{l}.conv1"] = ("conv", (ch, 2 * ch, 3, 3))
            shapes[f"up{l}.conv2"] = ("conv", (ch, ch, 3, 3))
        shapes["head"] = ("conv", (c["n_classes"], self.channels(0), 1, 1))
        return shapes

    def _init_params(self, rng):
        """He initialisation: N(0, sqrt(2/N)), N = the incoming nodes of one neuron (for a 3x3 conv
        over 64 channels, 9*64 = 576); biases zero. For the up-conv a neuron sees in*2*2/4 = in
        inputs (each output pixel has one input pixel per channel)."""
        params = OrderedDict()
        for name, (kind, shape) in self._shapes().items():
            fan_in = shape[0] if kind == "upconv" else shape[1] * shape[2] * shape[3]
            w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            # drawn in float32 on every dtype: a float64 model of the same seed is the float32 one's oracle
            params[f"{name}.weight"] = self.xp.asarray(w.astype(np.float32).astype(self.dtype))
            bias_len = shape[1] if kind == "upconv" else shape[0]
            params[f"{name}.bias"] = self.xp.zeros(bias_len, dtype=self.dtype)
        return params

    @property
    def n_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def output_size(self, n: int) -> int:
        return output_size(n, self.config["depth"])

    def layers(self, tile: int, batch: int = 1) -> list[dict]:
        """layer_shapes of this network for `batch` tiles of tile x tile pixels."""
        c = self.config
        return layer_shapes(tile, c["depth"], c["base_channels"], c["in_channels"], c["n_classes"], batch)

    # -- forward / backward --
    def _check_input(self, x):
        c = self.config
        if not hasattr(x, "ndim") or x.ndim != 4 or x.shape[1] != c["in_channels"]:
            raise ValueError(f"UNet: x must be a {self.xp.__name__} array (N, {c['in_channels']}, H, W), "
                             f"got {type(x).__name__} {getattr(x, 'shape', '')}")
        self.output_size(x.shape[2])
        self.output_size(x.shape[3])

    def forward(self, x, train=False, dropout_seed=0, _cache=None):
        """Logits (N, n_classes, h, w) of x (N, in_channels, H, W). With train=True dropout is on
        (its mask drawn from dropout_seed)."""
        self._check_input(x)
        e, p, c = self.engine, self.params, self.config
        conv = dict(relu=True, engine=e, precision=self.precision)
        keep = _cache is not None
        cache = _cache if keep else {}
        a = x
        for l in range(c["depth"]):
            for j in (1, 2):
                name = f"down{l}.conv{j}"
                out = ops.conv3x3_forward(a, p[f"{name}.weight"], p[f"{name}.bias"], **conv)
                if keep:
                    cache[name] = (a, out)
                a = out
            if l == c["depth"] - 1:
                if train and c["dropout"] > 0:
                    a = ops.dropout_forward(a, c["dropout"], dropout_seed, engine=e)
                    if keep:
                        cache["dropout"] = dropout_seed
            else:
                cache[f"skip{l}"] = a
                a, argmax = ops.maxpool2x2_forward(a, engine=e)
                if keep:
                    cache[f"pool{l}"] = argmax
        for l in range(c["depth"] - 2, -1, -1):
            name = f"up{l}.upconv"
            up = ops.upconv2x2_forward(a, p[f"{name}.weight"], p[f"{name}.bias"], engine=e)
            if keep:
                cache[name] = a
            skip = cache[f"skip{l}"]
            name = f"up{l}.conv1"
            if self.fuse:  # conv1 reads skip and up directly: the concatenation is never written
                out = ops.conv3x3_forward_concat(skip, up, p[f"{name}.weight"], p[f"{name}.bias"], **conv)
                inp = (skip, up)
            else:
                inp = ops.crop_concat_forward(skip, up, engine=e)
                out = ops.conv3x3_forward(inp, p[f"{name}.weight"], p[f"{name}.bias"], **conv)
            if keep:
                cache[name] = (inp, out)
            a = out
            name = f"up{l}.conv2"
            out = ops.conv3x3_forward(a, p[f"{name}.weight"], p[f"{name}.bias"], **conv)
            if keep:
                cache[name] = (a, out)
            a = out
        if keep:
            cache["head"] = a
        return ops.conv1x1_forward(a, p["head.weight"], p["head.bias"], engine=e)

    def loss_and_grads(self, x, labels, weights, dropout_seed=0, train=True, sync=True):
        """One forward + backward pass. labels (N, h, w) int32 classes, weights (N, h, w) float32 at
        the output size. Returns (loss per pixel, grads keyed like params).
        sync=False reads nothing back from the device (a CUDA graph captures it): the loss is then
        (loss (1,) array, bad-label flag (1,) array), see ops.softmax_xent; dropout_seed may be a
        (1,) uint64 array, read by the kernels from memory."""
        e, p, c = self.engine, self.params, self.config
        cache = {}
        logits = self.forward(x, train=train, dropout_seed=dropout_seed, _cache=cache)
        loss, d = ops.softmax_xent(logits, labels, weights, engine=e, **({} if sync else {"sync": False}))
        g = OrderedDict((k, None) for k in p)
        g["head.weight"], g["head.bias"] = ops.conv1x1_backward_weight(d, cache["head"], engine=e)
        d = ops.conv1x1_backward_data(d, p["head.weight"], engine=e)
        dskips = {}
        for l in range(c["depth"] - 1):  # expanding levels in reverse forward order: 0, 1, ...
            d, dskips[l] = self._conv_pair_backward(f"up{l}", d, cache, g)
            name = f"up{l}.upconv"
            g[f"{name}.weight"], g[f"{name}.bias"] = ops.upconv2x2_backward_weight(d, cache[name], engine=e)
            d = ops.upconv2x2_backward_data(d, p[f"{name}.weight"], engine=e)
        for l in range(c["depth"] - 1, -1, -1):
            if l == c["depth"] - 1:
                if "dropout" in cache:
                    d = ops.dropout_backward(d, c["dropout"], cache["dropout"], engine=e)
            else:
                d = ops.maxpool2x2_backward(d, cache[f"pool{l}"], engine=e)
                dwin, (oy, ox) = dskips[l]  # the skip's gradient: its cropped window only
                d[:, :, oy:oy + dwin.shape[2], ox:ox + dwin.shape[3]] += dwin
            d, _ = self._conv_pair_backward(f"down{l}", d, cache, g, need_input_grad=l > 0)
        return loss, g

    def _conv_pair_backward(self, level, d, cache, g, need_input_grad=True):
        """conv2 then conv1 of a level. Returns (the gradient of conv1's input, or of its up part when
        the input was a concatenation; for a concatenation (the skip window's gradient, its offsets))."""
        e, p = self.engine, self.params
        kw = dict(engine=e, precision=self.precision)
        (a2, out2), (a1, out1) = cache[f"{level}.conv2"], cache[f"{level}.conv1"]
        # conv2's input is conv1's ReLU output: with fuse, conv2's backward-data applies that ReLU's
        # gradient in its epilogue, and conv1's backward kernels skip reading out1
        mask = out1 if self.fuse else None
        name = f"{level}.conv2"
        g[f"{name}.weight"], g[f"{name}.bias"] = ops.conv3x3_backward_weight(d, a2, out2, **kw)
        d = ops.conv3x3_backward_data(d, p[f"{name}.weight"], out2, mask=mask, **kw)
        out1 = None if self.fuse else out1
        name = f"{level}.conv1"
        w = p[f"{name}.weight"]
        if isinstance(a1, tuple):  # fused concat: (skip, up)
            skip, up = a1
            g[f"{name}.weight"], g[f"{name}.bias"] = ops.conv3x3_backward_weight_concat(d, skip, up, out1, **kw)
            dwin, dup = ops.conv3x3_backward_data_concat(d, w, skip.shape[1], out1, **kw)
            return dup, (dwin, R.crop_offsets(skip.shape[2:], up.shape[2:]))
        g[f"{name}.weight"], g[f"{name}.bias"] = ops.conv3x3_backward_weight(d, a1, out1, **kw)
        if not need_input_grad:
            return None, None
        d = ops.conv3x3_backward_data(d, w, out1, **kw)
        if level.startswith("up"):  # the input was crop_concat(skip, up)
            skip = cache[f"skip{level[2:]}"]
            dskip, dup = ops.crop_concat_backward(d, skip.shape, engine=e)
            return dup, (dskip, (0, 0))
        return d, None

    def predict_proba(self, x):
        """Class probabilities (N, n_classes, h, w), inference mode."""
        return ops.softmax(self.forward(x, train=False), engine=self.engine)

    # -- persistence --
    def save(self, path, momentum=None, state=None):
        """Write weights, config and optionally momentum buffers and trainer state (a JSON-able
        dict) to one .npz, atomically (temp file + rename)."""
        arrays = {f"param/{k}": _to_host(v) for k, v in self.params.items()}
        if momentum is not None:
            arrays.update({f"momentum/{k}": _to_host(v) for k, v in momentum.items()})
        from . import __version__
        # no border class: no "border" key, so that a unetcu from before the border class reads the file
        config = {k: v for k, v in self.config.items() if k != "border" or v}
        meta = dict(format=FORMAT, version=__version__, config=config, state=state or {})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        atomic_write(path, write)

    @classmethod
    def load(cls, path, engine=None, with_state=False, precision="fp32", fuse=True):
        """A UNet from a file written by save(), computing in `precision` with `fuse` (neither is saved).
        with_state=True also returns (momentum, state). Raises FileNotFoundError, IsADirectoryError, or
        ValueError for anything but a checkpoint or a bad precision."""
        ops.check_precision(precision, "UNet.load")
        path = os.fspath(path)
        check_model_file(path)
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"no model file {path}") from None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path} is not a readable unetcu model file (truncated or foreign): {e}") from None
        try:
            meta = json.loads(bytes(arrays.pop("meta")).decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise KeyError("format")
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a unetcu model file (no '{FORMAT}' header)") from None
        config = _checked_config(path, meta)
        model = cls(engine=engine, precision=precision, fuse=fuse, **config)
        # optimizer state is "momentum/NAME" (sgd) or "momentum/m:NAME", "momentum/v:NAME" (adam)
        def known(k):
            kind, _, name = k.partition("/")
            return kind == "param" and name in model.params or kind == "momentum" and (
                name in model.params or name[:2] in ("m:", "v:") and name[2:] in model.params)
        unknown = sorted(k for k in arrays if not known(k))
        if unknown:  # e.g. a newer unetcu's normalisation layers: ignoring them would run another network
            raise ValueError(f"{path}: {_writer(meta)} holds arrays ({', '.join(unknown[:3])}"
                             f"{', ...' if len(unknown) > 3 else ''}) " + _unknown_cause(meta, "read it"))
        for k in model.params:
            a = arrays.get(f"param/{k}")
            if a is None or a.shape != model.params[k].shape:
                raise ValueError(f"{path}: parameter {k} is missing or has the wrong shape")
            model.params[k] = model.xp.asarray(_checked_array(path, f"parameter {k}", a))
        if not with_state:
            return model
        momentum = {k[len("momentum/"):]: model.xp.asarray(_checked_array(path, f"optimizer state {k[len('momentum/'):]}", v))
                    for k, v in arrays.items() if k.startswith("momentum/")}
        state = meta.get("state", {})
        if not isinstance(state, dict):
            raise ValueError(f"{path}: its training state is {type(state).__name__}, not what unetcu writes: a damaged "
                             "or edited file")
        return model, (momentum or None), state


def _version():
    from . import __version__
    return __version__


def _unknown_cause(meta, action: str) -> str:
    """Why this unetcu does not know something in a checkpoint: a newer unetcu wrote it, or (the same
    version) the file was edited or damaged."""
    if meta.get("version") == _version():
        return "that this unetcu does not know (the same version: an edited or damaged file)"
    return f"that this unetcu {_version()} does not know; update unetcu to {action}"


def written_by(path) -> str:
    """'written by unetcu V' for a checkpoint's header (or says that it records no version)."""
    with np.load(os.fspath(path)) as z:
        return _writer(json.loads(bytes(z["meta"]).decode()))


def _writer(meta) -> str:
    v = meta.get("version")
    return f"written by unetcu {v}" if v else "written by a unetcu that did not record its version (before 0.1.0)"


def _checked_config(path, meta) -> dict:
    """The network options of a checkpoint's header, each known to this unetcu and of its type; a key
    from a newer unetcu (say a normalisation option) is refused, never dropped."""
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the checkpoint's header has no network options ('config'); not a unetcu model file")
    known = {"in_channels": int, "n_classes": int, "depth": int, "base_channels": int, "dropout": float, "border": int}
    config = {"border": 0, **config}  # written before the border class: none
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"{path}: {_writer(meta)} with network option(s) {', '.join(map(repr, unknown))} "
                         + _unknown_cause(meta, "read it"))
    missing = sorted(set(known) - set(config))
    if missing:
        raise ValueError(f"{path}: {_writer(meta)} lacks network option(s) {', '.join(map(repr, missing))}")
    for k, t in known.items():
        v = config[k]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and (t is float or v == int(v))
        if not ok:
            raise ValueError(f"{path}: network option {k!r} is {v!r}; expected {'a number' if t is float else 'a whole number'}")
    return {k: t(config[k]) for k, t in known.items()}


def _checked_array(path, what, a) -> np.ndarray:
    """A stored array as float32, refused if it is not floating point or holds NaN or Inf (a diverged run
    saved by another tool, a damaged file): such weights predict NaN everywhere, an all-background result."""
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{path}: {what} is stored as {a.dtype}, not floating point; a damaged or foreign file")
    bad = ~np.isfinite(a)
    if bad.any():
        nan = int(np.isnan(a).sum())
        raise ValueError(f"{path}: {what} holds {nan} NaN and {int(bad.sum()) - nan} Inf of {a.size} values "
                         f"(a diverged or damaged run); refusing to load it")
    return a.astype(np.float32)


def _to_host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)
