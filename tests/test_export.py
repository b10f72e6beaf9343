"""unetcu export / import: the ONNX graph gives unetcu's probabilities (tiny, small, paper shapes, 2 and 3
classes), the bioimage.io package passes bioimageio.core's own test and its test tensors reproduce, an
import round-trips bit for bit, and what cannot be exported or imported is refused in one line."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from unetcu import UNet
from unetcu.cli import main

if os.environ.get("UNETCU_REQUIRE_EXPORT") != "1":  # CI installs the extra and sets it: there a missing one fails
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bioimageio.core")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from unetcu import export  # noqa: E402
from unetcu.data import standardise  # noqa: E402


def _random_weights(model, seed):
    """Weights of every scale and sign (He init plus random biases): a zero bias would hide a swapped one."""
    rng = np.random.default_rng(seed)
    for k, p in model.params.items():
        model.params[k] = (rng.standard_normal(p.shape) * (0.3 if k.endswith("bias") else 1.0) *
                           (1.0 if k.endswith("bias") else np.sqrt(2.0 / max(1, np.prod(p.shape[1:]))))).astype(np.float32)
    return model


@pytest.mark.parametrize("depth, base, classes", [(3, 8, 2), (4, 16, 2), (3, 8, 3), (2, 4, 5)],
                         ids=["tiny", "small", "tiny-3-classes", "depth2-5-classes"])
def test_onnx_gives_unetcus_probabilities(depth, base, classes):
    model = _random_weights(UNet(depth=depth, base_channels=base, n_classes=classes, engine="numpy"), seed=depth + classes)
    diff = export.onnx_difference(export.to_onnx(model), model)
    assert diff <= 1e-5, diff


def test_onnx_of_the_paper_network_once():
    """The paper's net (depth 5, 64 channels): the graph at its smallest valid input plus a step."""
    model = _random_weights(UNet(engine="numpy"), seed=5)
    onx = export.to_onnx(model)
    smallest, step, margin = export.size_rule(5)
    x = np.random.default_rng(1).standard_normal((1, 1, smallest + step, smallest)).astype(np.float32)
    got = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.shape == (1, 2, step + smallest - margin, smallest - margin)
    assert np.abs(got - model.predict_proba(x)).max() <= 1e-5


def test_size_rule_is_the_networks():
    """The package's sizes: the smallest valid input, the step between valid ones, and the margin."""
    from unetcu.model import output_size
    for depth in (2, 3, 4, 5):
        smallest, step, margin = export.size_rule(depth)
        for k in range(4):
            assert output_size(smallest + k * step, depth) == smallest + k * step - margin
        for bad in (smallest - step, smallest + 1):  # below the smallest, and between two valid sizes
            with pytest.raises(ValueError):
                output_size(bad, depth)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of `unetcu train` (tiny preset, a few steps: a real training record)."""
    out = tmp_path_factory.mktemp("run")
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "train", "--preset", "tiny", "--steps", "4", "--val-every", "4",
                        "--n-synthetic", "4", "--engine", "numpy", "--out", str(out / "run"), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out / "run" / "checkpoint.npz"


def test_package_passes_bioimageio_test_and_its_tensors_reproduce(trained, tmp_path, capsys):
    from bioimageio.core import test_description
    out = tmp_path / "model.zip"
    assert main(["export", str(trained), "--out", str(out), "--author", "A. Tester"]) == 0
    said = capsys.readouterr().out
    assert "bioimageio.core's test: passed" in said and "license CC-BY-4.0" in said
    summary = test_description(str(out))  # the written file, read back by the ecosystem's own code
    assert summary.status == "passed", [d.name for d in summary.details if d.status != "passed"]
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert {"rdf.yaml", "weights.onnx", "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
        rdf, doc = z.read("rdf.yaml").decode(), z.read("README.md").decode()
        raw = np.load(z.open("test_input.npy"))
        probs = np.load(z.open("test_output.npy"))
    assert "zero_mean_unit_variance" in rdf and "offset: -40" in rdf and "min: 44" in rdf and "step: 4" in rdf
    assert "A. Tester" in rdf and "10.1007/978-3-319-24574-4_28" in rdf
    assert "- steps trained: 4\n" in doc and "validation at step 4" in doc  # the training's provenance
    assert "None" not in doc and "# Validation" in doc
    assert raw.std() > 1 and abs(raw.mean()) > 1  # raw pixels: the package's preprocessing standardises them
    model = UNet.load(str(trained), engine="numpy")
    assert np.array_equal(probs, model.predict_proba(standardise(raw[0, 0])[None, None]))


def test_three_class_model_exports(tmp_path, capsys):
    ck = tmp_path / "c3.npz"
    _random_weights(UNet(depth=3, base_channels=8, n_classes=3, engine="numpy"), seed=2).save(ck)
    assert main(["export", str(ck), "--out", str(tmp_path / "c3.zip")]) == 0
    assert "test: passed" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "c3.zip") as z:
        assert "class2" in z.read("rdf.yaml").decode()


@pytest.mark.parametrize("via", ["onnx", "zip", "rdf.yaml"])
def test_import_round_trips_bit_for_bit(tmp_path, via):
    model = _random_weights(UNet(depth=3, base_channels=8, n_classes=3, engine="numpy"), seed=7)
    ck = tmp_path / "m.npz"
    model.save(ck)
    src = tmp_path / ("m.onnx" if via == "onnx" else "m.zip")
    assert main(["export", str(ck), "--out", str(src)] + (["--no-test"] if via != "onnx" else [])) == 0
    if via == "rdf.yaml":
        with zipfile.ZipFile(src) as z:
            z.extractall(tmp_path / "pkg")
        src = tmp_path / "pkg" / "rdf.yaml"
    assert main(["import", str(src), "--out", str(tmp_path / "back.npz")]) == 0
    back = UNet.load(str(tmp_path / "back.npz"), engine="numpy")
    assert back.config == model.config
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    x = np.random.default_rng(0).standard_normal((1, 1, 52, 60)).astype(np.float32)
    assert np.array_equal(back.predict_proba(x), model.predict_proba(x))


def _graph_with(model, edit):
    """to_onnx(model) with edit(graph) applied, as bytes on disk."""
    m = export.to_onnx(model)
    edit(m.graph)
    return m


def test_import_refuses_what_unetcu_cannot_represent(tmp_path):
    model = _random_weights(UNet(depth=3, base_channels=8, engine="numpy"), seed=1)

    def batchnorm(g):  # a normalisation after the first conv: an operator unetcu's U-Net lacks
        n = g.node[0]
        out = n.output[0]
        n.output[0] = out + ".pre"
        c = 8
        for name, v in (("s", 1.5), ("b", 0.1), ("m", 0.0), ("v", 1.0)):
            g.initializer.append(numpy_helper.from_array(np.full(c, v, np.float32), f"bn.{name}"))
        g.node.insert(1, helper.make_node("BatchNormalization", [out + ".pre", "bn.s", "bn.b", "bn.m", "bn.v"], [out]))

    def swapped_concat(g):  # the up-sampled map first: the same layers, another function
        for n in g.node:
            if n.op_type == "Concat":
                n.input[0], n.input[1] = n.input[1], n.input[0]

    def sigmoid(g):  # a sigmoid head instead of the softmax over classes
        g.node[-1].op_type = "Sigmoid"
        del g.node[-1].attribute[:]

    def one_conv_less(g):  # a decoder level with one 3x3 convolution
        i = next(k for k, n in enumerate(g.node) if n.name == "up0.conv2")
        relu = g.node[i + 1]
        g.node[i + 2].input[0] = g.node[i - 1].output[0]  # the head reads up0.conv1's ReLU
        del g.node[i:i + 2]
        assert relu.op_type == "Relu"

    cases = [(batchnorm, "operators unetcu's U-Net does not have: BatchNormalization"),
             (swapped_concat, "computes something else than the U-Net"),
             (sigmoid, "operators unetcu's U-Net does not have: Sigmoid"),
             (one_conv_less, "not the layers of a U-Net of depth 3")]
    for edit, message in cases:
        p = tmp_path / f"{edit.__name__}.onnx"
        onnx.save(_graph_with(model, edit), p)
        with pytest.raises(ValueError, match=message):
            export.from_onnx(p)
        assert main(["import", str(p), "--out", str(tmp_path / "x.npz")]) == 1
        assert not (tmp_path / "x.npz").exists()


def test_export_and_import_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    ck = tmp_path / "m.npz"
    _random_weights(UNet(depth=2, base_channels=4, engine="numpy"), seed=3).save(ck)
    (tmp_path / "taken.zip").write_bytes(b"keep")
    (tmp_path / "junk.onnx").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "not_a_model.npz").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    with zipfile.ZipFile(tmp_path / "torch_only.zip", "w") as z:
        z.writestr("rdf.yaml", "type: model\nweights:\n  torchscript:\n    source: w.pt\n")
    cases = [(["export", str(ck), "--out", str(tmp_path / "taken.zip")], "taken.zip exists; give --overwrite"),
             (["export", str(tmp_path / "not_a_model.npz"), "--out", str(tmp_path / "a.zip")], "not a readable unetcu model"),
             (["export", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "a.zip")], "no model file"),
             (["export", str(ck), "--out", str(tmp_path / "a.tif")], "give NAME.zip (bioimage.io package) or NAME.onnx"),
             (["export", str(ck), "--out", str(tmp_path / "a.onnx"), "--format", "bioimageio"], "--format bioimageio writes NAME.zip"),
             (["export", str(ck), "--out", str(tmp_path / "nofolder" / "a.zip")], "no folder"),
             (["import", str(tmp_path / "torch_only.zip"), "--out", str(tmp_path / "b.npz")], "no ONNX weights (it has torchscript)"),
             (["import", str(ck), "--out", str(tmp_path / "b.npz")], "is a unetcu checkpoint already"),
             (["import", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "b.npz")], "not a readable ONNX model"),
             (["import", str(tmp_path / "nothing.onnx"), "--out", str(tmp_path / "b.npz")], "no such file"),
             (["export", str(ck), "--out", str(tmp_path)], "is a folder; give a file name")]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert (tmp_path / "taken.zip").read_bytes() == b"keep"
    assert not any((tmp_path / n).exists() for n in ("a.zip", "a.onnx", "a.tif", "b.npz"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # the extra not installed
    assert main(["export", str(ck), "--out", str(tmp_path / "c.onnx")]) == 1
    err = capsys.readouterr().err
    assert "needs the 'onnx' package, part of the export extra" in err and len(err.strip().splitlines()) == 1


def test_package_fields_and_provenance_of_a_stopped_run(tmp_path, capsys):
    """A run folder name bioimage.io would refuse still exports (the default name keeps its allowed
    characters); a bad --name or --license is refused before any work; a run stopped at step 3 of 10
    says so in the package's README."""
    folder = tmp_path / "run.v2: final"
    folder.mkdir()
    ck = folder / "checkpoint.npz"
    model = _random_weights(UNet(depth=2, base_channels=4, engine="numpy"), seed=4)
    model.save(ck, state=dict(step=3, config=dict(steps=10, lr=0.001, augment="elastic", run=dict(val_data=None)),
                              history=[], object_radius=6.5))
    assert main(["export", str(ck), "--out", str(tmp_path / "a.zip"), "--no-test"]) == 0
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        rdf, doc = z.read("rdf.yaml").decode(), z.read("README.md").decode()
    assert "name: unetcu U-Net run-v2- final" in rdf
    assert "- steps trained: 3 (of 10 planned" in doc and "val_data" not in doc
    capsys.readouterr()
    for argv, message in [(["--license", "mit"], "--license 'mit' is not an SPDX license id"),
                          (["--name", "my/model: weird"], "bioimage.io takes 5 to 128 characters")]:
        assert main(["export", str(ck), "--out", str(tmp_path / "b.zip")] + argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b.zip").exists()


def test_import_keeps_the_training_object_size(trained, tmp_path):
    """predict's --min-size and watershed defaults come from the training objects' size: it rides in the
    ONNX metadata, so the imported checkpoint gives predict the same defaults."""
    want = UNet.load(str(trained), engine="numpy", with_state=True)[2]["object_radius"]
    assert want > 0
    for out in ("m.onnx", "m.zip"):
        assert main(["export", str(trained), "--out", str(tmp_path / out), "--no-test"]) == 0
        assert main(["import", str(tmp_path / out), "--out", str(tmp_path / (out + ".npz"))]) == 0
        assert UNet.load(str(tmp_path / (out + ".npz")), engine="numpy", with_state=True)[2]["object_radius"] == want


def test_import_reads_other_valid_layouts_of_the_same_graph(tmp_path):
    """Crop offsets as Constant nodes (value_ints), a weight behind an Identity, weights stored as external
    data beside the .onnx: all the same network, imported bit for bit."""
    model = _random_weights(UNet(depth=3, base_channels=8, engine="numpy"), seed=8)

    def constants(g):
        for t in [t for t in g.initializer if ".crop." in t.name]:
            g.node.insert(0, helper.make_node("Constant", [], [t.name], value_ints=[int(v) for v in numpy_helper.to_array(t)]))
            g.initializer.remove(t)

    def identity(g):
        conv = next(n for n in g.node if n.op_type == "Conv")
        g.node.insert(0, helper.make_node("Identity", [conv.input[1]], [conv.input[1] + ".id"]))
        conv.input[1] = conv.input[1] + ".id"

    for edit in (constants, identity):
        p = tmp_path / f"{edit.__name__}.onnx"
        onnx.save(_graph_with(model, edit), p)
        back = export.from_onnx(p)
        assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params), edit.__name__
    (tmp_path / "ext").mkdir()
    onnx.save(export.to_onnx(model), tmp_path / "ext" / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)
    back = export.from_onnx(tmp_path / "ext" / "m.onnx")
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)


def test_import_refuses_damaged_packages_and_its_own_input(tmp_path, capsys):
    model = _random_weights(UNet(depth=2, base_channels=4, engine="numpy"), seed=9)
    onx = export.to_onnx(model).SerializeToString()

    def pack(name, rdf, files=(("weights.onnx", onx),)):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            z.writestr("rdf.yaml", rdf)
            for f, data in files:
                z.writestr(f, data)
        return str(tmp_path / name)
    ok = "type: model\nweights:\n  onnx:\n    source: ./weights.onnx\n    opset_version: 17\n"
    (tmp_path / "m.onnx").write_bytes(onx)
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = [([pack("nofile.zip", ok, files=())], "names ONNX weights 'weights.onnx', which the package lacks"),
             ([pack("yaml.zip", "weights: [1, 2\n")], "its rdf.yaml is not valid YAML"),
             ([pack("list.zip", "weights: [1, 2]\n")], "has no weights entry of formats"),
             ([pack("nosource.zip", "weights:\n  onnx: {}\n")], "ONNX weights name no source file"),
             ([pack("url.zip", "weights:\n  onnx:\n    source: https://zenodo.org/w.onnx\n")], "are at a URL"),
             ([str(tmp_path / "empty.onnx")], "is empty"),
             ([str(tmp_path)], "is a folder"),
             ([str(tmp_path / "m.onnx"), "--out", str(tmp_path / "m.onnx"), "--overwrite"], "is the input itself"),
             ([str(tmp_path / "m.onnx"), "--out", str(tmp_path / "m.txt")], "give NAME.npz")]
    for argv, message in cases:
        argv = argv if "--out" in argv else argv + ["--out", str(tmp_path / "x.npz")]
        assert main(["import"] + argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert (tmp_path / "m.onnx").read_bytes() == onx and not (tmp_path / "x.npz").exists()
    assert main(["import", pack("dotslash.zip", ok), "--out", str(tmp_path / "x.npz")]) == 0  # ./weights.onnx is fine


def test_a_refused_import_prints_one_line_from_a_fresh_process(tmp_path):
    """onnxruntime logs to the process's stderr itself: the refusal is still the only line there."""
    model = _random_weights(UNet(depth=3, base_channels=4, engine="numpy"), seed=10)

    def swapped(g):
        for n in g.node:
            if n.op_type == "Concat":
                n.input[0], n.input[1] = n.input[1], n.input[0]
    def padded(g):  # 'same' padding in the first conv: the maps no longer line up, onnxruntime fails in Concat
        next(a for a in g.node[0].attribute if a.name == "pads").ints[:] = [1, 1, 1, 1]
    for edit, message in ((swapped, "computes something else"), (padded, "does not run as a U-Net of depth 3")):
        onnx.save(_graph_with(model, edit), tmp_path / "s.onnx")
        r = subprocess.run([sys.executable, "-m", "unetcu.cli", "import", str(tmp_path / "s.onnx"), "--out",
                            str(tmp_path / "s.npz")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert message in r.stderr
