"""Data-parallel training (`mpirun -n N unetcu train --distributed`, unetcu/distributed.py): two
ranks of batch 1 repeat one process of batch 2 (same tiles, same dropout masks, same updates), a
resumed distributed run repeats the uninterrupted one, and an error on one rank stops every rank
with that rank's message instead of hanging.

The MPI tests start `mpirun -n 2` (Open MPI from Debian in CI, see .ci/run) with a time limit; they
are skipped where mpirun or mpi4py is missing, unless UNETCU_REQUIRE_MPI=1 (CI sets it)."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from unetcu import UNet
from unetcu.data import synthetic_dataset
from unetcu.run import PRESETS, TrainConfig, prepare
from unetcu.train import draw_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "mpi_train.py")
TINY = ("--preset", "tiny", "--n-synthetic", "3", "--engine", "numpy", "--no-progress")


def _mpi_missing():
    if not shutil.which("mpirun"):
        return "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[distributed]')"
    return None


MISSING = _mpi_missing()
if MISSING and os.environ.get("UNETCU_REQUIRE_MPI") == "1":
    raise RuntimeError(f"UNETCU_REQUIRE_MPI=1 but {MISSING}")
needs_mpi = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def _env():
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(cmd, timeout=300, cwd=None):
    """Run cmd in its own process group; on a timeout kill the whole group (mpirun and its ranks)
    and fail: a hang is a defect."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def oversubscribe():
    """Open MPI refuses more ranks than cores without --oversubscribe (CI may have one core)."""
    r = subprocess.run(["mpirun", "--version"], capture_output=True, text=True)
    return ["--oversubscribe"] if "Open MPI" in r.stdout else []


def mpirun(n, *args, plant="none", timeout=300):
    """`mpirun -n N unetcu train ARGS` through tests/mpi_train.py (which may plant a fault)."""
    return run(["mpirun", "-n", str(n), *oversubscribe(), sys.executable, SCRIPT, plant, "train", *args], timeout)


def one(*args):
    return run([sys.executable, "-m", "unetcu.cli", "train", *args])


def losses(out):
    with open(os.path.join(out, "log.csv")) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def load(out):
    return UNet.load(os.path.join(out, "checkpoint.npz"), with_state=True)


# ---- no MPI needed: the pieces that make two ranks one batch ---------------------------------------
@pytest.mark.parametrize("augment", ["elastic", "flips"])
def test_ranks_draw_the_tiles_of_one_batch_in_order(augment):
    """Rank r of N keeps tiles r*b.. of the N*b tiles one process would draw, and leaves the
    generator where that process leaves it."""
    depth, base, tile = PRESETS["tiny"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=0)
    data = prepare(synthetic_dataset(3, (96, 96), seed=1), TrainConfig(tile=tile, augment=augment), m)
    seed = int.from_bytes(os.urandom(4), "little")
    whole = np.random.default_rng(seed)
    ref = draw_batch(data, TrainConfig(tile=tile, augment=augment, batch=4), m, whole)
    for rank in range(2):
        rng = np.random.default_rng(seed)
        got = draw_batch(data, TrainConfig(tile=tile, augment=augment, batch=2), m, rng, (rank, 2))
        for a, b in zip(got, ref):
            assert np.array_equal(a, b[2 * rank:2 * rank + 2]), f"seed {seed}"
        assert rng.bit_generator.state == whole.bit_generator.state


def test_a_ranks_dropout_seed_gives_its_tiles_mask_in_the_whole_batch(rng):
    """rank_dropout_seed: rank r's mask over its b tiles is the slice r*b.. of the mask of the N*b
    tiles drawn with the step's seed (the kernels' counter-based hash, reference.dropout_bits)."""
    from unetcu import reference
    from unetcu.distributed import dropout_chw, rank_dropout_seed
    cfg = dict(depth=3, base_channels=8)
    tile, b, n = 92, 2, 3
    x = rng.standard_normal((n * b, *dropout_chw(cfg, tile))).astype(np.float32)
    seed = int(rng.integers(2**63))
    whole = reference.dropout_forward(x, 0.5, seed)
    for r in range(n):
        mine = reference.dropout_forward(x[r * b:(r + 1) * b], 0.5, rank_dropout_seed(seed, r, b, cfg, tile))
        assert np.array_equal(mine, whole[r * b:(r + 1) * b]), f"rank {r}, seed {seed}"
    assert not np.array_equal(reference.dropout_forward(x[b:2 * b], 0.5, seed), whole[b:2 * b])  # the shift matters


def test_the_gpu_checksum_sees_a_one_ulp_change_anywhere(rng):
    """distributed.checksum (the hash compare's reduction of a GPU array, written for any array
    module): one element moved by one ulp, or two elements swapped, changes it."""
    from unetcu.distributed import checksum
    a = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    c = checksum(a)
    assert c == checksum(a.copy())
    for i in rng.integers(a.size, size=5):
        b = a.copy().reshape(-1)
        b[i] = np.nextafter(b[i], np.float32(np.inf), dtype=np.float32)
        assert checksum(b.reshape(a.shape)) != c, i
    b = a.copy().reshape(-1)
    b[[0, 1]] = b[[1, 0]]
    assert checksum(b) != c


# ---- two ranks under mpirun --------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("recipe", [(), ("--optimizer", "sgd", "--lr", "0.01"),
                                    ("--optimizer", "adamw", "--weight-decay", "0.01", "--clip", "0.5", "--augment", "flips")],
                         ids=["adam", "sgd", "adamw-clip-flips"])
def test_two_ranks_of_batch_1_repeat_one_process_of_batch_2(tmp_path, recipe):
    """Same tiles in the same order, same dropout masks, the mean gradient: the losses and weights
    of 2 ranks x batch 1 equal those of 1 process x batch 2 up to the order of float32 sums.
    Tolerances: each rank's weight gradient sums its own tile's pixels, the one process sums both
    tiles in one pass, so the gradients differ by float32 rounding (~1e-7 relative), and so do the
    per-pixel mean losses; the weights after 6 steps agree to 1e-6 absolute (a step moves a weight
    by up to lr = 1e-3 under Adam, 1e-2 x gradient under SGD; a wrong tile, mask or scale moves
    them by that much, 1000x the tolerance). Measured here: 3e-8 and 6e-8 relative (2026-11-30).
    Adam hardly sees a gradient's scale: the SGD case is the one that checks the division by N."""
    common = (*TINY, "--steps", "6", "--ckpt-every", "3", "--val-every", "3", *recipe)
    r = mpirun(2, *common, "--distributed", "--batch", "1", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    assert "2 ranks x batch 1 = 2 tiles a step, gradients summed by MPI on host memory" in r.stdout
    assert r.stdout.count("wrote ") == 1  # rank 0 alone speaks
    r = one(*common, "--batch", "2", "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    two, ref = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(two) == 6 and two[0] != two[1]
    np.testing.assert_allclose(two, ref, rtol=1e-6, atol=0)
    (m2, opt2, s2), (m1, opt1, s1) = load(tmp_path / "two"), load(tmp_path / "one")
    assert s2["rng"] == s1["rng"] and s2["config"]["run"]["ranks"] == 2
    moved = max(float(np.abs(m1.params[k] - UNet(engine="numpy", seed=0, **m1.config).params[k]).max())
                for k in m1.params)
    assert moved > 3e-3  # the weights did move by far more than the tolerance
    for k in m1.params:
        np.testing.assert_allclose(m2.params[k], m1.params[k], rtol=0, atol=1e-6, err_msg=k)
    for k in opt1:  # the moments/velocity: sums of gradients, rounding relative to their largest terms
        np.testing.assert_allclose(opt2[k], opt1[k], rtol=0, atol=1e-5 * float(np.abs(opt1[k]).max()), err_msg=k)


@needs_mpi
def test_a_distributed_resume_repeats_the_uninterrupted_run(tmp_path):
    """6 steps at once, or 3 then --resume to 6 (constant lr, so that the schedule does not depend
    on --steps): the same losses, bit for bit, and the same weights; resuming on another number of
    ranks is refused (each step's tiles depend on it)."""
    common = (*TINY, "--schedule", "constant", "--warmup", "0", "--ckpt-every", "3", "--val-every", "100")
    r = mpirun(2, *common, "--distributed", "--steps", "6", "--out", str(tmp_path / "full"))
    assert r.returncode == 0, r.stderr
    r = mpirun(2, *common, "--distributed", "--steps", "3", "--out", str(tmp_path / "half"))
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "half" / "checkpoint.npz")
    r = one("--resume", ckpt, "--steps", "6", "--no-progress")
    assert r.returncode == 1 and "trained on 2 rank(s), this is 1" in r.stderr and "mpirun -n 2" in r.stderr, r.stderr
    r = mpirun(2, "--distributed", "--resume", ckpt, "--steps", "6", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ckpt} at step 3" in r.stdout
    assert losses(tmp_path / "half") == losses(tmp_path / "full")
    (a, _, sa), (b, _, sb) = load(tmp_path / "half"), load(tmp_path / "full")
    assert sa["step"] == sb["step"] == 6 and sa["rng"] == sb["rng"]
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


@needs_mpi
@pytest.mark.parametrize("plant,rc,message", [
    ("1:badlabel:3", 1, "unetcu train: rank 1: step 3: softmax_xent: labels must lie in [0, 2)"),
    ("1:nan:3", 3, "unetcu train: loss became nan at step 3 on rank 1; training stopped (the last good checkpoint is"),
    ("1:drift:2", 1, "unetcu train: step 2: the ranks' weights differ (rank 0 "),
    ("1:setup:0", 1, "unetcu train: rank 1: planted: images/x.png vanished"),
    ("0:validation:0", 1, "unetcu train: rank 0: planted: the validation disk is gone"),
], ids=["bad-label", "nan", "weights-differ", "setup", "rank-0-alone"])
def test_an_error_on_one_rank_stops_every_rank_with_its_message(tmp_path, plant, rc, message):
    """Every rank stops (mpirun returns, well within the time limit) and the failing rank's reason
    is printed once. The first three are seen by every rank at the same step (the per-step
    exchange, the hash check); an error only rank 0 sees (its validation) ends the job by
    MPI_Abort after the message."""
    out = tmp_path / "run"
    r = mpirun(2, *TINY, "--distributed", "--steps", "6", "--ckpt-every", "2", "--val-every", "2", "--out", str(out),
               plant=plant, timeout=240)
    assert r.returncode == rc, r.stderr
    assert r.stderr.count(message) == 1, r.stderr
    assert "Traceback" not in r.stderr
    if "nan" in plant:
        _, _, state = load(out)
        assert state["step"] == 2  # the last good checkpoint is kept
    if "setup" in plant:
        assert not out.exists()  # nothing was created


@needs_mpi
def test_the_readme_command_runs_as_written(tmp_path):
    """The README's `mpirun -n 2 unetcu train --distributed ...` (4 steps of it, 3 images)."""
    import re
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"<!-- distributed.*?-->\s*```bash\n(.*?)```\s*<!-- /distributed -->", text, re.S)
    assert m, "README.md has no distributed block"
    cmd = m.group(1).strip().split()
    assert cmd[:5] == ["mpirun", "-n", "2", "unetcu", "train"] and "--distributed" in cmd
    unetcu = os.path.join(os.path.dirname(sys.executable), "unetcu")  # this environment's script
    flags = oversubscribe()
    r = run(["mpirun", "-n", "2", *flags, unetcu, *cmd[4:], "--steps", "4", "--n-synthetic", "3", "--no-progress"],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / cmd[cmd.index("--out") + 1]
    assert len(losses(out)) == 4 and load(out)[2]["config"]["run"]["ranks"] == 2


@needs_mpi
def test_mpirun_without_distributed_is_refused(tmp_path):
    r = mpirun(2, *TINY, "--steps", "2", "--out", str(tmp_path / "run"))
    assert r.returncode == 1 and "started by an MPI launcher as 2 processes without --distributed" in r.stderr
    assert not (tmp_path / "run").exists()


# ---- ranks that differ: refused before step 1 ----------------------------------------------------------
def mpmd(*ranks, timeout=120):
    """`mpirun -n 1 -wdir DIR [PREFIX...] python -m unetcu.cli train ARGS : -n 1 ...`, one app per
    (wdir, prefix, args) of ranks: each rank with its own folder, command prefix and options."""
    cmd = ["mpirun", *oversubscribe()]
    for i, (wdir, prefix, args) in enumerate(ranks):
        cmd += [":"] * (i > 0) + ["-n", "1", "-wdir", str(wdir), *prefix, sys.executable, "-m", "unetcu.cli", "train", *args]
    return run(cmd, timeout)


def synth(folder, count=3, seed=100):
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "synth", str(folder), "--count", str(count), "--size", "64",
                        "--seed", str(seed), "--overwrite"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Data folders written once: data (3 images, seed 100), val (1, seed 7), val8 (1, seed 8),
    other (2, seed 5: its synth_000 and synth_001 differ from data's)."""
    d = tmp_path_factory.mktemp("folders")
    for name, count, seed in (("data", 3, 100), ("val", 1, 7), ("val8", 1, 8), ("other", 2, 5)):
        synth(d / name, count, seed)
    return d


def _package_copy(dest):
    """unetcu's source tree (the package and its kernels) copied to dest, one .py file changed by a
    comment: another version of the code, for rank 1 (PYTHONPATH=dest)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "unetcu"), dest / "unetcu", ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "kernels"), dest / "kernels", ignore=ignore)
    with open(dest / "unetcu" / "weightmap.py", "a") as f:
        f.write("# a local edit\n")
    return ["env", f"PYTHONPATH={dest}"]


DIFFER = {  # what rank 1 has that rank 0 has not -> the message (rank 0's data is n0/data, 3 images)
    "a-file-differs": "rank 1's --data ({n1}/data) differs from rank 0's ({n0}/data): images/synth_001.png has other "
                      "content on rank 1; every rank must train on the same files",
    "a-file-missing": "rank 1's --data ({n1}/data) differs from rank 0's ({n0}/data): images/synth_002.png is missing "
                      "on rank 1; every rank must train on the same files",
    "another-val-data": "rank 1's --val-data ({n1}/val) differs from rank 0's ({n0}/val): images/synth_000.png has other "
                        "content on rank 1",
    "an-option": "the ranks' options differ: --w0 10.0 on rank 0, 5.0 on rank 1; start every rank with the same options",
    "synthetic-data": "the ranks' options differ: --n-synthetic 3 on rank 0, 4 on rank 1",
    "other-code": "rank 1 runs other code than rank 0: unetcu 0.2.0 as rank 0, but unetcu/weightmap.py has other "
                  "content; every rank must run the same unetcu",
}


@needs_mpi
@pytest.mark.parametrize("case", list(DIFFER))
def test_ranks_whose_data_options_or_code_differ_are_refused_before_step_1(tmp_path, folders, case):
    """`mpirun -n 1 -wdir n0 ... --data data : -n 1 -wdir n1 ... --data data`: every rank sends rank
    0 a fingerprint of its code, options and data (file contents, by name in the folder), and a
    difference stops every rank before anything is created, with one line naming the ranks and the
    first difference. Each rank names its folder by the same relative path, so paths are not
    compared: the files are (the next test: the same files in other folders train)."""
    n0, n1 = tmp_path / "n0", tmp_path / "n1"
    for n in (n0, n1):
        shutil.copytree(folders / "data", n / "data")
        shutil.copytree(folders / ("val8" if case == "another-val-data" and n == n1 else "val"), n / "val")
    args, prefix, extra = [*TINY, "--distributed", "--steps", "2", "--out", "run", "--data", "data"], [], []
    if case == "a-file-differs":
        for sub in ("images", "labels"):
            shutil.copy(folders / "other" / sub / "synth_001.png", n1 / "data" / sub)
    elif case == "a-file-missing":
        for sub in ("images", "labels"):
            os.remove(n1 / "data" / sub / "synth_002.png")
    elif case == "another-val-data":
        args += ["--val-data", "val"]
    elif case == "an-option":
        extra = ["--w0", "5"]
    elif case == "synthetic-data":
        args = [a for a in args if a not in ("--data", "data")]
        extra = ["--n-synthetic", "4"]
    elif case == "other-code":
        prefix = _package_copy(tmp_path / "copy")
    r = mpmd((n0, [], args), (n1, prefix, args + extra))
    want = DIFFER[case].format(n0=n0, n1=n1)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count(want) == 1 and r.stderr.startswith("unetcu train: "), r.stderr
    assert "Traceback" not in r.stderr
    assert not (n0 / "run").exists() and not (n1 / "run").exists()


@needs_mpi
def test_ranks_with_the_same_files_in_other_folders_train_and_resume_after_a_move(tmp_path, folders):
    """The check compares files, not paths: two copies of one data folder train together. The run
    records its data's fingerprint, so a distributed --resume accepts the folder moved elsewhere
    (same files) and refuses it when a file changed, on every rank, in one line."""
    n0, n1 = tmp_path / "n0", tmp_path / "n1"
    for n in (n0, n1):
        shutil.copytree(folders / "data", n / "data")
    args = [*TINY, "--distributed", "--steps", "2", "--val-every", "2", "--data", "data"]
    r = mpmd((n0, [], args + ["--out", str(tmp_path / "run")]), (n1, [], args + ["--out", str(tmp_path / "run")]))
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "checkpoint.npz")
    shutil.move(n0 / "data", tmp_path / "moved")
    r = mpirun(2, "--distributed", "--resume", ckpt, "--steps", "3", "--data", str(tmp_path / "moved"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ckpt} at step 2" in r.stdout and len(losses(tmp_path / "run")) == 3
    assert load(tmp_path / "run")[2]["config"]["run"]["data"] == str(tmp_path / "moved")
    for sub in ("images", "labels"):
        shutil.copy(folders / "other" / sub / "synth_000.png", tmp_path / "moved" / sub)
    r = mpirun(2, "--distributed", "--resume", ckpt, "--steps", "4", "--no-progress")
    assert r.returncode == 1 and r.stderr.count(
        f"unetcu train: --resume {ckpt}: the run's --data {tmp_path / 'moved'} changed since the run started: "
        "images/synth_000.png has other content;") == 1, r.stderr


# ---- Ctrl-C: every rank stops at one step, rank 0 saves it and says how to resume ------------------------
@needs_mpi
@pytest.mark.parametrize("how", ["ctrl-c-to-mpirun", "sigterm-to-one-rank"])
def test_ctrl_c_saves_the_last_step_and_prints_the_resume_command(tmp_path, how):
    """Ctrl-C reaches mpirun alone; Open MPI 4.1 sends each rank SIGCONT, SIGTERM a second later
    (odls_base_sigkill_timeout) and SIGKILL a second after that. The ranks take SIGTERM (and
    SIGINT) as a request: at their next exchange every rank stops at the same step, rank 0 saves
    the last finished one and prints the single-process message with the mpirun command, and the
    ranks exit 130 (mpirun itself returns 1 after its own Ctrl-C: Open MPI's status for a job it was
    told to end). A SIGTERM sent to one rank alone stops them all the same way, and mpirun returns
    the ranks' 130. The resumed run goes on from the saved step."""
    out = tmp_path / "run"
    ckpt = out / "checkpoint.npz"
    cmd = ["mpirun", "-n", "2", *oversubscribe(), sys.executable, "-m", "unetcu.cli", "train", *TINY, "--distributed",
           "--steps", "100000", "--ckpt-every", "100000", "--val-every", "100000", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         start_new_session=True)
    try:
        t = time.monotonic()
        while not (out / "log.csv").exists() or len((out / "log.csv").read_text().splitlines()) < 4:
            assert p.poll() is None and time.monotonic() - t < 180, "the run did not start"
            time.sleep(0.1)
        if how == "ctrl-c-to-mpirun":
            os.kill(p.pid, signal.SIGINT)
        else:
            ranks = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            assert len(ranks) == 2, ranks
            os.kill(int(ranks[-1]), signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    m = re.search(rf"^unetcu train: interrupted; step (\d+) saved in {re.escape(str(ckpt))} \(logs in "
                  rf"{re.escape(str(out))}/\); resume with: mpirun -n 2 unetcu train --distributed --resume "
                  rf"{re.escape(str(ckpt))}$", stderr, re.M)
    assert m and stderr.count("interrupted") == 1, stderr
    assert "Traceback" not in stderr
    assert p.returncode == (1 if how == "ctrl-c-to-mpirun" else 130), stderr
    step = int(m.group(1))
    assert load(out)[2]["step"] == step and len(losses(out)) == step >= 3
    r = mpirun(2, "--distributed", "--resume", str(ckpt), "--steps", str(step + 2), "--no-progress")
    assert r.returncode == 0 and f"resumed from {ckpt} at step {step}" in r.stdout, r.stderr
    assert len(losses(out)) == step + 2


# ---- GPU: 2 ranks on whatever GPUs there are -----------------------------------------------------------
@pytest.mark.gpu
@needs_mpi
def test_two_ranks_on_the_cuda_engine_repeat_one_process_of_batch_2(tmp_path):
    """NCCL when each rank has a GPU of its own; through host memory by MPI when the ranks share one
    GPU (NCCL refuses that). The cuda kernels sum with float atomics, so the tolerance is that of
    a rerun on the same GPU: losses to 1e-4 relative, weights to 1e-5 absolute after 4 steps."""
    import cupy
    common = ("--preset", "tiny", "--n-synthetic", "3", "--engine", "cuda", "--no-progress", "--steps", "4",
              "--ckpt-every", "2", "--val-every", "100")
    r = mpirun(2, *common, "--distributed", "--batch", "1", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    want = "NCCL on device memory" if cupy.cuda.runtime.getDeviceCount() >= 2 else "MPI through host memory"
    assert want in r.stdout, r.stdout
    r = one(*common, "--batch", "2", "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-4)
    (m2, _, _), (m1, _, _) = load(tmp_path / "two"), load(tmp_path / "one")
    for k in m1.params:
        np.testing.assert_allclose(m2.params[k], m1.params[k], rtol=0, atol=1e-5, err_msg=k)


@needs_mpi
def test_the_allreduce_benchmark_runs_and_checks_its_mean(tmp_path):
    """python -m benchmarks.bench_allreduce at small sizes: each row's all-reduce gave the ranks' mean
    (the script asserts it) and is timed."""
    import json
    flags = oversubscribe()
    out = tmp_path / "ar.json"
    r = run(["mpirun", "-n", "2", *flags, sys.executable, "-m", "benchmarks.bench_allreduce",
             "--presets", "tiny,small", "--reps", "3", "--json", str(out)])
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [(x["preset"], x["params"], x["ranks"]) for x in rows] == [("tiny", 29330, 2), ("small", 481762, 2)]
    assert all(x["allreduce_median_s"] > 0 for x in rows)
