"""Export a trained unetcu network to ONNX and to a bioimage.io model package, and import one back.

The network is plain ONNX operators (opset OPSET), built with the `onnx` package's helpers from the
checkpoint's arrays: per level Conv 3x3 (valid) + Relu twice, MaxPool 2x2 stride 2 on the way down;
ConvTranspose 2x2 stride 2, Slice (the centre crop of the skip map), Concat (skip first) and two
Conv + Relu on the way up; a 1x1 Conv and Softmax over the classes. Dropout is training-only and has
no node. Weights keep PyTorch's layouts, which are ONNX's: Conv (K, C, kH, kW), ConvTranspose
(C, K, kH, kW).

Sizes: the input is (batch, in_channels, y, x) with y and x valid sizes of the net (UNet.output_size:
the smallest, then every 2^(depth-1) more); the output is (batch, n_classes, y - margin, x - margin),
the probabilities of the input's centre (the valid convolutions' margin, half on each side). The
crop offsets of the skip maps do not depend on the input size (each is a fixed number of pixels), so
the graph holds them as constants.

The bioimage.io package (format 0.5, https://bioimage.io) adds the preprocessing unetcu applies (each
image standardised to zero mean and unit variance over y and x, as data.standardise), test tensors made
by unetcu itself, a cover and a README with the run's provenance; bioimageio.core tests it.
Needs the `export` extra: pip install -e ".[export]".
"""
from __future__ import annotations

import numpy as np

from .model import _to_host, valid_input_size

OPSET = 17  # Softmax over one axis (13+), every operator here unchanged since


def _need(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise RuntimeError(f"needs the '{module}' package, part of the export extra: pip install \"unetcu[export]\" "
                           "(from a checkout: pip install -e \".[export]\")") from None


def _on_host(model):
    """The same network on the numpy engine, float32 (a cuda model's weights copied to the host)."""
    from .model import UNet
    host = UNet(engine="numpy", **model.config)
    host.params = {k: np.asarray(_to_host(v), np.float32) for k, v in model.params.items()}
    return host


def _session(onnx_model):
    """(run(feed) -> the first output, the input's name) of an onnxruntime CPU session that keeps its own log
    lines (warnings, a refused graph's errors) to itself."""
    ort = _need("onnxruntime")
    ort.set_default_logger_severity(4)  # errors too: a graph that fails while running is refused in our own line
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # and a node that fails while running logs through the run's own logger
    return lambda feed: sess.run(None, feed, quiet)[0], sess.get_inputs()[0].name


def onnx_difference(onnx_model, model) -> float:
    """Max abs difference between onnxruntime's probabilities for onnx_model and model.predict_proba (numpy
    engine) on a random input of two valid sizes (not square, batch 2)."""
    depth, c = model.config["depth"], model.config
    host = _on_host(model)
    s = valid_input_size(60, depth)
    x = np.random.default_rng(0).standard_normal((2, c["in_channels"], s + 2 ** (depth - 1), s)).astype(np.float32)
    run, name = _session(onnx_model)
    return float(np.abs(run({name: x}) - host.predict_proba(x)).max())


def crop_offsets(model, tile: int) -> list[int]:
    """The centre crop (pixels on each side) of each level's skip map before concatenation, level 0 first.
    Constant in the input size: every op on the path from skip to up-sample is affine with slope 1."""
    concat = {l["name"]: l for l in model.layers(tile) if l["op"] == "crop_concat"}
    return [(concat[f"up{l}.concat"]["Hs"] - concat[f"up{l}.concat"]["H"]) // 2 for l in range(model.config["depth"] - 1)]


RADIUS_KEY = "unetcu.object_radius"  # the training objects' median radius (predict's --min-size default), in pixels
BORDER_KEY = "unetcu.border"  # UNet.config["border"]: class 2 is the touching border of this width, in pixels


def to_onnx(model, name: str = "unetcu", object_radius: float | None = None):
    """The onnx.ModelProto of model's inference (probabilities). model: a UNet (any engine). object_radius
    (the checkpoint's, if known) rides in the model's metadata, so an import gives predict the same defaults."""
    onnx = _need("onnx")
    from onnx import TensorProto, helper, numpy_helper
    c = model.config
    offsets = crop_offsets(model, valid_input_size(1, c["depth"]))
    params = {k: np.asarray(_to_host(v), np.float32) for k, v in model.params.items()}
    init = [numpy_helper.from_array(v, k) for k, v in params.items()]
    nodes = []

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_relu(x, name):
        y = node("Conv", [x, f"{name}.weight", f"{name}.bias"], f"{name}", kernel_shape=[3, 3], pads=[0, 0, 0, 0])
        return node("Relu", [y], f"{name}.relu")

    a, skips = "input", []
    for l in range(c["depth"]):
        a = conv_relu(conv_relu(a, f"down{l}.conv1"), f"down{l}.conv2")
        if l < c["depth"] - 1:
            skips.append(a)
            a = node("MaxPool", [a], f"down{l}.pool", kernel_shape=[2, 2], strides=[2, 2])
    for l in range(c["depth"] - 2, -1, -1):
        up = node("ConvTranspose", [a, f"up{l}.upconv.weight", f"up{l}.upconv.bias"], f"up{l}.upconv",
                  kernel_shape=[2, 2], strides=[2, 2])
        o = offsets[l]
        init += [numpy_helper.from_array(np.array([o, o], np.int64), f"up{l}.crop.starts"),
                 numpy_helper.from_array(np.array([-o, -o], np.int64), f"up{l}.crop.ends"),
                 numpy_helper.from_array(np.array([2, 3], np.int64), f"up{l}.crop.axes")]
        skip = node("Slice", [skips[l], f"up{l}.crop.starts", f"up{l}.crop.ends", f"up{l}.crop.axes"], f"up{l}.crop")
        a = node("Concat", [skip, up], f"up{l}.concat", axis=1)
        a = conv_relu(conv_relu(a, f"up{l}.conv1"), f"up{l}.conv2")
    logits = node("Conv", [a, "head.weight", "head.bias"], "logits", kernel_shape=[1, 1])
    nodes.append(helper.make_node("Softmax", [logits], ["output"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c["in_channels"], "y", "x"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", c["n_classes"], "y_out", "x_out"])],
        init)
    from . import __version__
    m = helper.make_model(graph, producer_name="unetcu", producer_version=__version__,
                          opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = min(m.ir_version, 8)  # readable by onnxruntime releases of the last years
    props = {RADIUS_KEY: repr(float(object_radius))} if object_radius else {}
    if c.get("border"):  # what the third class means: predict grows the cells into it
        props[BORDER_KEY] = str(int(c["border"]))
    if props:
        helper.set_model_props(m, props)
    onnx.checker.check_model(m, full_check=True)
    return m


# ---- the bioimage.io model package ------------------------------------------------------------------------
UNET_CITE = dict(text="Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image "
                      "Segmentation. MICCAI 2015", doi="10.1007/978-3-319-24574-4_28")
EPS = 1e-6  # the spec's zero_mean_unit_variance divides by std + eps; data.standardise by std alone


def size_rule(depth: int) -> tuple[int, int, int]:
    """(smallest valid input size, step between valid sizes, margin = input - output size) of one axis."""
    from .model import output_size
    smallest = valid_input_size(1, depth)
    return smallest, 2 ** (depth - 1), smallest - output_size(smallest, depth)


def test_tensors(model, size: int | None = None, seed: int = 0):
    """(raw input (1, C, S, S) float32, probabilities (1, n_classes, s, s) float32): a synthetic image of
    touching cells as its pixels come (no standardisation: the package's preprocessing does it) and what
    unetcu's numpy engine predicts for it after data.standardise."""
    from .data import standardise, synthetic_cells
    depth = model.config["depth"]
    size = size or valid_input_size(160, depth)
    img, _ = synthetic_cells((size, size), seed=seed)
    raw = (np.clip(img, 0, None) / max(float(img.max()), 1e-6) * 255.0).astype(np.float32)  # pixel values 0..255
    raw = np.repeat(raw[None, None], model.config["in_channels"], axis=1)
    host = _on_host(model)
    x = np.stack([standardise(raw[0, c]) for c in range(raw.shape[1])])[None]
    return raw, np.asarray(host.predict_proba(x), np.float32)


def _cover(raw, probs, path):
    """cover.png: the test image | its foreground probability (2:1, as the model zoo shows covers)."""
    from PIL import Image
    img = raw[0, 0]
    m = (img.shape[0] - probs.shape[2]) // 2
    img = img[m:m + probs.shape[2], m:m + probs.shape[3]]
    left = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
    right = 1.0 - probs[0, 0] if probs.shape[1] == 2 else probs[0, 1:].max(axis=0)  # foreground
    Image.fromarray((np.concatenate([left, right], axis=1) * 255).astype(np.uint8)).save(path)


def _documentation(model, state, writer, opset) -> str:
    cfg = state.get("config", {}) if isinstance(state, dict) else {}
    hist = state.get("history", []) if isinstance(state, dict) else []
    last = next((r for r in reversed(hist) if "val_iou" in r), None)
    c = model.config
    smallest, step, margin = size_rule(c["depth"])
    lines = [f"# {c['depth']}-level U-Net trained with unetcu", "",
             f"{writer[:1].upper()}{writer[1:]}; exported to ONNX (opset {opset}) by `unetcu export`.", "",
             "## Network", "",
             f"The U-Net of Ronneberger et al. (2015), valid 3x3 convolutions: depth {c['depth']}, {c['base_channels']} "
             f"channels at the first level, {c['in_channels']} input channel(s), {c['n_classes']} classes, "
             f"{model.n_params:,} parameters. Input y and x: {smallest} pixels or more in steps of {step}; the output "
             f"(class probabilities, softmax over the channel axis) is {margin} pixels smaller on each axis, the "
             f"input's centre ({margin // 2} pixels cut on every side). For an image of any size, pad it by mirroring "
             f"and predict it tile by tile (overlap-tile, as `unetcu predict` does)."
             + (f" Classes: 0 background, 1 cell, 2 the border where cells touch ({c['border']} px wide); objects are "
                "the connected components of class 1 grown into class 2." if c.get("border") else ""), "",
             "## Preprocessing", "",
             f"Each image is standardised to zero mean and unit variance over y and x (the package's "
             f"`zero_mean_unit_variance`, eps {EPS}), as unetcu standardises a whole image before tiling it: feed "
             f"raw pixels. A consumer that standardises each tile alone gives slightly different probabilities.", "",
             "## Training", ""]
    if cfg:
        done = state.get("step")
        planned = cfg.get("steps")
        lines += [f"- steps trained: {done}" + (f" (of {planned} planned: the run was stopped or is going on)"
                                                if planned not in (None, done) else "")]
        keep = ("tile", "batch", "optimizer", "lr", "schedule", "warmup", "momentum", "weight_decay", "clip",
                "augment", "elastic_sigma", "w0", "sigma", "seed")
        lines += [f"- {k}: {cfg[k]}" for k in keep if cfg.get(k) is not None]
        run = cfg.get("run", {}) if isinstance(cfg.get("run"), dict) else {}
        lines += [f"- {k}: {v}" for k, v in run.items()
                  if k in ("data", "val_data", "val_fraction", "labels", "classes", "preset", "no_dropout") and v is not None]
        if last:
            lines += [f"- validation at step {last['step']}: IoU {last['val_iou']:.4f}, loss {last.get('val_loss', float('nan')):.4f}"]
    else:
        lines += ["The checkpoint holds no training record (a model saved outside `unetcu train`)."]
    lines += ["", "# Validation", "",
              "Before this package was written, onnxruntime's probabilities for the ONNX weights were compared with "
              "unetcu's numpy engine on a random input, and bioimageio.core's own test of the package was run "
              "(`unetcu export`). The test tensors are a synthetic image of touching cells (raw pixel values) and "
              "unetcu's prediction for it; no score on held-out data is implied by them.",
              "", "## Citation", "", UNET_CITE["text"] + f", doi:{UNET_CITE['doi']}.", ""]
    return "\n".join(lines)


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")  # bioimage.io's rule


def default_name(checkpoint) -> str:
    """'unetcu U-Net RUN' from the checkpoint's folder (or file) name, cut to bioimage.io's characters and 64."""
    from pathlib import Path
    p = Path(checkpoint)
    run = p.parent.name if p.stem == "checkpoint" and p.parent.name else p.stem
    run = "".join(ch if ch in NAME_CHARS else "-" for ch in run).strip(" -") or "model"
    return f"unetcu U-Net {run}"[:64].rstrip()


def check_fields(name, license):
    """Refuse, before any work, a package name or license id bioimage.io would refuse."""
    if name is not None:
        bad = sorted(set(name) - NAME_CHARS)
        if bad or not 5 <= len(name) <= 128:
            raise ValueError(f"--name {name!r}: bioimage.io takes 5 to 128 characters of letters, digits, space and "
                             f"_+-() only" + (f" (not {''.join(bad)!r})" if bad else ""))
    _need("bioimageio.spec")  # the extra missing: one line, not an ImportError from the next import
    from bioimageio.spec.model import v0_5 as v
    try:
        v.LicenseId(license)
    except Exception:
        raise ValueError(f"--license {license!r} is not an SPDX license id bioimage.io accepts (e.g. MIT, "
                         "CC-BY-4.0, Apache-2.0, BSD-3-Clause; see https://spdx.org/licenses)") from None


def package(checkpoint, out, name=None, author=None, license="CC-BY-4.0", test=True):
    """Write the bioimage.io model package (format 0.5) of a unetcu checkpoint to `out` (.zip).
    Returns the bioimageio.core test's summary status ('passed', or why not) when test, else None."""
    import os
    import tempfile
    from pathlib import Path
    onnx = _need("onnx")
    spec = _need("bioimageio.spec")
    from bioimageio.spec.model import v0_5 as v
    from .model import UNet, written_by
    model, _, state = UNet.load(checkpoint, engine="numpy", with_state=True)
    c = model.config
    smallest, step, margin = size_rule(c["depth"])
    raw, probs = test_tensors(model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx.save(to_onnx(model, object_radius=(state or {}).get("object_radius")), tmp / "weights.onnx")
        np.save(tmp / "test_input.npy", raw)
        np.save(tmp / "test_output.npy", probs)
        _cover(raw, probs, tmp / "cover.png")
        (tmp / "README.md").write_text(_documentation(model, state, written_by(checkpoint), OPSET))
        space_in = [v.SpaceInputAxis(id=v.AxisId(a), size=v.ParameterizedSize(min=smallest, step=step)) for a in "yx"]
        space_out = [v.SpaceOutputAxis(id=v.AxisId(a), size=v.SizeReference(
            tensor_id=v.TensorId("raw"), axis_id=v.AxisId(a), offset=-margin)) for a in "yx"]
        classes = ["background", "object"] if c["n_classes"] == 2 else [f"class{k}" for k in range(c["n_classes"])]
        descr = v.ModelDescr(
            name=name or default_name(checkpoint),
            description=f"A {c['depth']}-level U-Net (Ronneberger et al. 2015, valid convolutions) trained with unetcu: "
                        f"{c['n_classes']}-class probabilities of each pixel.",
            authors=[v.Author(name=author or os.environ.get("USER") or "unknown")],
            cite=[v.CiteEntry(text=UNET_CITE["text"], doi=v.Doi(UNET_CITE["doi"]))],
            license=v.LicenseId(license),
            documentation=v.FileDescr(source=tmp / "README.md"),
            covers=[v.FileDescr(source=tmp / "cover.png")],
            tags=["unet", "segmentation", "2d", "unetcu"],
            inputs=[v.InputTensorDescr(
                id=v.TensorId("raw"),
                axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(f"c{i}") for i in range(c["in_channels"])]),
                      *space_in],
                test_tensor=v.FileDescr(source=tmp / "test_input.npy"),
                data=v.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=[v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(
                    axes=[v.AxisId("y"), v.AxisId("x")], eps=EPS))])],
            outputs=[v.OutputTensorDescr(
                id=v.TensorId("probabilities"),
                axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(n) for n in classes]), *space_out],
                test_tensor=v.FileDescr(source=tmp / "test_output.npy"),
                data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
            weights=v.WeightsDescr(onnx=v.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=OPSET)),
        )
        status = None
        if test:
            test_model = _need("bioimageio.core").test_model
            summary = test_model(descr)
            status = summary.status
            if status != "passed":
                failed = [d for d in summary.details if d.status != "passed"]
                why = "; ".join(f"{d.name}: {(d.errors[0].msg if d.errors else d.status)}" for d in failed[:2])
                raise ValueError(f"the package failed bioimageio.core's test ({why})")
        spec.save_bioimageio_package(descr, output_path=Path(out))
    return status


# ---- the reverse: an ONNX U-Net into a unetcu checkpoint --------------------------------------------------
ALLOWED = {"Conv", "Relu", "MaxPool", "ConvTranspose", "Slice", "Concat", "Softmax", "Identity", "Constant", "Shape",
           "Gather", "Unsqueeze", "Cast", "Dropout"}


def load_onnx(path):
    """The onnx.ModelProto of a .onnx file (its external data files beside it), or of the ONNX weights of a
    bioimage.io package (.zip, or the rdf.yaml of an unpacked one). Raises ValueError in one line otherwise."""
    import tempfile
    import zipfile
    from pathlib import Path
    onnx = _need("onnx")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give MODEL.onnx, PACKAGE.zip or its rdf.yaml")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if "meta.npy" in z.namelist():
                raise ValueError(f"{path} is a unetcu checkpoint already: give it to unetcu predict as it is")
            if "rdf.yaml" not in z.namelist():
                raise ValueError(f"{path} is a zip file without rdf.yaml: not a bioimage.io package")
            source = _rdf_onnx_source(z.read("rdf.yaml").decode(errors="replace"), path)
            if source not in z.namelist():
                raise ValueError(f"{path}: its rdf.yaml names ONNX weights {source!r}, which the package lacks")
            with tempfile.TemporaryDirectory() as tmp:  # unpacked, so weights stored as external data load too
                z.extractall(tmp)
                return _load_onnx_file(onnx, Path(tmp) / source, path)
    if path.suffix in (".yaml", ".yml"):
        source = path.parent / _rdf_onnx_source(path.read_text(errors="replace"), path)
        if not source.is_file():
            raise ValueError(f"{path}: its rdf.yaml names ONNX weights {source.name!r}, which are not beside it")
        return _load_onnx_file(onnx, source, path)
    return _load_onnx_file(onnx, path, path)


def _load_onnx_file(onnx, file, shown):
    try:
        m = onnx.load(str(file))  # external data is read from beside the file
        onnx.checker.check_model(m)
        return m
    except Exception as e:  # protobuf's DecodeError, a missing external data file, a malformed graph
        what = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ValueError(f"{shown}: not a readable ONNX model ({type(e).__name__}: {what})") from None


def _rdf_onnx_source(text: str, where) -> str:
    """The ONNX weights' file named by a bioimage.io rdf.yaml, relative to the package."""
    import posixpath
    from ruyaml import YAML
    try:
        rdf = YAML(typ="safe").load(text)
    except Exception as e:
        raise ValueError(f"{where}: its rdf.yaml is not valid YAML ({type(e).__name__})") from None
    weights = rdf.get("weights") if isinstance(rdf, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"{where}: its rdf.yaml has no weights entry of formats (a damaged or foreign rdf.yaml)")
    entry = weights.get("onnx")
    if entry is None:
        raise ValueError(f"{where}: the package has no ONNX weights (it has {', '.join(sorted(weights)) or 'none'}); "
                         "unetcu imports ONNX only")
    source = entry.get("source") if isinstance(entry, dict) else None
    if not isinstance(source, str) or not source:
        raise ValueError(f"{where}: its rdf.yaml's ONNX weights name no source file")
    if "://" in source:
        raise ValueError(f"{where}: its ONNX weights are at a URL ({source}); download them and give the .onnx file")
    return posixpath.normpath(source)


def from_onnx(path):
    """A UNet (numpy engine; .object_radius set from the graph's metadata, else None) holding the weights of an ONNX U-Net of unetcu's architecture (as to_onnx
    writes it, or any graph of the same operators in the same order). Raises ValueError, in one line, for
    a graph unetcu cannot represent: other operators, another layer count or shape, or a graph whose
    probabilities differ from the rebuilt network's (checked with onnxruntime on a random input)."""
    from onnx import helper, numpy_helper
    from .model import UNet
    m = load_onnx(path)
    g = m.graph
    other = sorted({n.op_type for n in g.node} - ALLOWED)
    if other:
        raise ValueError(f"{path}: operators unetcu's U-Net does not have: {', '.join(other)} (it is built of Conv, Relu, "
                         "MaxPool, ConvTranspose, Slice, Concat and Softmax only)")
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:  # Constant nodes (a tensor, or value_ints/value_float/...) and Identity aliases of stored arrays
        if n.op_type == "Constant" and len(n.attribute) == 1:
            v = helper.get_attribute_value(n.attribute[0])
            init[n.output[0]] = numpy_helper.to_array(v) if hasattr(v, "data_type") else np.asarray(v)
        elif n.op_type == "Identity" and n.input[0] in init:
            init[n.output[0]] = init[n.input[0]]

    def weights(n):
        w = init.get(n.input[1])
        if w is None:
            raise ValueError(f"{path}: {n.op_type} {n.name or n.output[0]} takes its weights from a computed tensor; "
                             "unetcu imports stored weights only")
        b = init.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        return np.asarray(w, np.float32), None if b is None else np.asarray(b, np.float32)
    convs = [n for n in g.node if n.op_type == "Conv"]
    for n in convs:
        weights(n)  # every convolution's weights are stored arrays, or a one-line refusal here
    c3 = [weights(n) for n in convs if init[n.input[1]].shape[2:] == (3, 3)]
    heads = [weights(n) for n in convs if init[n.input[1]].shape[2:] == (1, 1)]
    ups = [weights(n) for n in g.node if n.op_type == "ConvTranspose"]
    depth = sum(n.op_type == "MaxPool" for n in g.node) + 1
    if len(c3) != 4 * depth - 2 or len(ups) != depth - 1 or len(heads) != 1 or len(convs) != len(c3) + 1:
        raise ValueError(f"{path}: {len(c3)} 3x3 and {len(convs) - len(c3)} other convolutions, {len(ups)} "
                         f"up-convolutions and {depth - 1} poolings: not the layers of a U-Net of depth {depth} "
                         f"({4 * depth - 2} 3x3 convolutions, {depth - 1} up-convolutions, one 1x1 head)")
    props = {p.key: p.value for p in m.metadata_props}
    n_classes = int(heads[0][0].shape[0])
    border = props.get(BORDER_KEY, "0")
    if not (border.isdigit() and (int(border) == 0 or n_classes == 3)):
        raise ValueError(f"{path}: its metadata {BORDER_KEY} is {border!r}, not the width in pixels of the border class "
                         f"of a 3-class model (this one has {n_classes} classes)")
    config = dict(depth=depth, base_channels=int(c3[0][0].shape[0]), in_channels=int(c3[0][0].shape[1]),
                  n_classes=n_classes, border=int(border))
    model = UNet(engine="numpy", seed=0, **config)
    names = [f"down{l}.conv{j}" for l in range(depth) for j in (1, 2)]
    names += [f"up{l}.conv{j}" for l in range(depth - 2, -1, -1) for j in (1, 2)]
    pairs = list(zip(names, c3)) + [(f"up{l}.upconv", u) for l, u in zip(range(depth - 2, -1, -1), ups)]
    pairs.append(("head", heads[0]))
    for name, (w, b) in pairs:
        want = model.params[f"{name}.weight"].shape
        if w.shape != want:
            raise ValueError(f"{path}: the layer taken as {name} has weights {w.shape}; a U-Net of depth {depth} with "
                             f"{config['base_channels']} base channels has {want} there")
        model.params[f"{name}.weight"] = w
        model.params[f"{name}.bias"] = b if b is not None else np.zeros(want[1 if name.endswith("upconv") else 0], np.float32)
    _check_same_function(m, model, path)
    radius = props.get(RADIUS_KEY)
    try:
        model.object_radius = float(radius) if radius is not None and float(radius) > 0 else None
    except ValueError:
        model.object_radius = None
    return model


def _check_same_function(m, model, path, tol=1e-4):
    """Refuse unless the ONNX graph and the rebuilt UNet give the same probabilities on a random input."""
    depth, c = model.config["depth"], model.config
    s = valid_input_size(40, depth)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    ys, xs = (dims[2] or s, dims[3] or s) if len(dims) == 4 else (s, s)
    x = np.random.default_rng(0).standard_normal((1, c["in_channels"], ys, xs)).astype(np.float32)
    try:
        run, name = _session(m)
        got = run({name: x})
        want = model.predict_proba(x)
    except Exception as e:
        raise ValueError(f"{path}: the graph does not run as a U-Net of depth {depth} on a {ys}x{xs} input "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if got.shape != want.shape or not np.abs(got - want).max() <= tol:
        diff = "shape " + str(got.shape) if got.shape != want.shape else f"max difference {np.abs(got - want).max():.3g}"
        raise ValueError(f"{path}: the graph computes something else than the U-Net its layers describe ({diff} from "
                         f"unetcu's {want.shape} probabilities on a random input): unetcu cannot represent it")
