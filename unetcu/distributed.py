"""Data-parallel training over processes: `mpirun -n N unetcu train --distributed`.

N processes (ranks) train one network. Each step every rank draws N x batch tiles' random numbers
from the one seeded generator (the same on every rank) and keeps its own batch of them (rank r:
tiles r*batch .. (r+1)*batch - 1, see train.draw_batch), so the generator's state is the same on
every rank and N ranks of batch b take exactly the tiles of one process of batch N*b, in the same
order. Each rank computes its loss and gradients; the gradients are packed into one flat float32
buffer (P, the parameter count), summed over the ranks by one all-reduce and divided by N, which
is the gradient of the loss of the N*b tiles (each rank's loss is a mean over its own pixels, all
tiles have as many). Every rank then applies the same optimizer update to the same gradient, so
the weights stay identical; a hash of the weights, optimizer state and generator state is
compared across the ranks every --ckpt-every steps (and at the start), a mismatch stops training.
Rank 0 alone logs, validates and writes the run's files.

The all-reduce (one per step, over the single flat buffer):
    cuda engine   NCCL (cupy.cuda.nccl) on device memory, on the training stream (CuPy's current
                  stream); each rank uses GPU (local rank mod GPUs). NCCL refuses two ranks on one
                  GPU (NCCL >= 2.5, "Duplicate GPU detected"), so ranks that have to share a GPU sum
                  through host memory by MPI instead, and the run's log says so.
    numpy, emu    MPI_Allreduce (mpi4py) of the host buffer, in place.
The code above the all-reduce is the same for every engine.

Errors: each step the ranks exchange (loss, error) by one small MPI allgather before the
all-reduce, so an error on one rank (a label outside the classes, a NaN loss) stops every rank at
the same step with that rank's message; an error before training starts (a refused option, a
missing file) is exchanged the same way (Distributed.gate). An error that only one rank can see
at a point where the others wait in a collective (rank 0 failing to write a checkpoint, say) is
printed by that rank, which then calls MPI_Abort: the job ends, it never hangs (as_rank).
Every collective before the gradient all-reduce is one exchange (Distributed.exchange), so a rank
that fails in the setup meets the others wherever they wait.

Before the first step the ranks compare their code (unetcu's version and a hash of each .py and
kernel file), options and data (a hash of each file, named in its folder: the folders may lie at
other paths on each rank): a difference stops every rank with one line naming the ranks and the
first difference (Distributed.check_setup).

Signals: Ctrl-C reaches mpirun alone, which sends every rank SIGCONT, then SIGTERM, then SIGKILL
(Open MPI 4.1, odls_base_sigkill_timeout seconds apart, default 1). A rank's SIGTERM or SIGINT only
sets a flag (as_rank), carried by the next exchange: every rank stops at the same step
(RanksInterrupted, a KeyboardInterrupt), rank 0 saves the last finished step and prints the
resume command, the others wait for it (a barrier), and every rank exits 130.

Dropout: the dropout kernels draw element i's mask from (seed, i) alone, with
i = seed * G + index (mod 2^64) inside the hash, G = 0x9E3779B97F4A7C15 (kernels/dropout.cu,
reference.dropout_bits). Rank r's batch is elements [r*b*CHW, (r+1)*b*CHW) of the batch N*b,
so rank r uses seed + r*b*CHW * G^-1 (mod 2^64): the same mask, without a kernel argument.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import sys
import threading

import numpy as np

from .model import layer_shapes
from .step import EagerStep

GOLDEN = 0x9E3779B97F4A7C15          # the dropout hash's multiplier (kernels/dropout.cu)
GOLDEN_INV = pow(GOLDEN, -1, 2**64)  # G is odd, so it has an inverse mod 2^64

# the number of processes, as an MPI launcher tells each process it starts (Open MPI; MPICH's Hydra)
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")

# exception types that cross ranks by name (others arrive as RuntimeError)
_TYPES = {t.__name__: t for t in (ValueError, RuntimeError, FileExistsError, FileNotFoundError, OSError,
                                  NotADirectoryError, MemoryError)}


def mpi():
    """mpi4py's MPI module; RuntimeError saying what to install when it is missing."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"--distributed needs mpi4py and an MPI library ({e}): pip install 'unetcu[distributed]' "
                           "and an MPI, e.g. apt-get install openmpi-bin libopenmpi-dev") from None
    return MPI


def launched_ranks() -> int:
    """How many processes an MPI launcher started this one among (1 when not started by one)."""
    for v in _SIZE_VARS:
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 1


def dropout_chw(config: dict, tile: int) -> tuple[int, int, int]:
    """(C, h, w) of the map dropout sees (the bottleneck's output, after its second conv) for a
    square input tile, from the network's layer shapes (model.layer_shapes)."""
    depth = config["depth"]
    last = next(l for l in layer_shapes(tile, depth, config["base_channels"]) if l["name"] == f"down{depth - 1}.conv2")
    return last["K"], last["H"] - 2, last["W"] - 2


def rank_dropout_seed(seed: int, rank: int, batch: int, config: dict, tile: int) -> int:
    """The dropout seed that gives rank `rank` (of `batch` tiles) the mask that a batch of
    ranks x batch tiles drawn with `seed` has at its tiles rank*batch ...: the dropout tensor is
    (batch, C, h, w) (dropout_chw), see the module's docstring."""
    c, h, w = dropout_chw(config, tile)
    return (int(seed) + rank * batch * c * h * w * GOLDEN_INV) % 2**64


def checksum(a) -> int:
    """A 64-bit position-weighted sum of the float32 bit patterns of a (NumPy or CuPy array),
    computed where a lives: sum_i bits_i * (2 i + 1) mod 2^64. Any one element that differs in
    any bit changes it (the weights are odd, so invertible mod 2^64); it reads the array once, on
    the GPU for CuPy (predicted: a few ms for the paper net's weights and Adam moments, ~44 bytes
    of traffic per element, instead of copying 372 MB to the host for ~0.4 s of SHA-256)."""
    xp = np
    if type(a).__module__.startswith("cupy"):
        import cupy as xp
    u = xp.ascontiguousarray(a).reshape(-1).view(xp.uint32).astype(xp.uint64)
    w = xp.arange(1, 2 * u.size, 2, dtype=xp.uint64)
    return int((u * w).sum(dtype=xp.uint64))


def state_hash(params: dict, opt_state: dict, rng_state) -> str:
    """SHA-256 over the weights and optimizer state (in key order; host arrays byte for byte,
    GPU arrays by their checksum, computed on the GPU) and the generator's state: equal on every
    rank while they train the same network."""
    h = hashlib.sha256()
    for group in (params, opt_state):
        for k in sorted(group):
            a = group[k]
            h.update(f"{k}:{tuple(a.shape)}:".encode())
            if type(a).__module__.startswith("cupy"):
                h.update(f"{checksum(a)};".encode())
            else:
                h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(rng_state, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class RanksStopped(Exception):
    """Marker base: raised on every rank at once (the ranks agreed), so no rank has to abort."""


class RanksInterrupted(KeyboardInterrupt):
    """A SIGTERM or SIGINT reached a rank (mpirun sends SIGTERM to every rank on Ctrl-C): raised on
    every rank at the same exchange, so that train() saves the last finished step on rank 0 and
    every rank ends together."""


def _stopped(type_name: str, message: str) -> BaseException:
    """An exception of the named type (ValueError, ... else RuntimeError) that every rank raises together."""
    base = _TYPES.get(type_name, RuntimeError)
    cls = type(base.__name__, (base, RanksStopped), {})
    return cls(message)


class Distributed:
    """This process's place among the ranks of an MPI job, and the per-step collectives.

    rank, size: this rank and the number of ranks (MPI_COMM_WORLD unless comm is given);
    root: rank 0, which logs, validates and writes the run's files; part: (rank, size) for
    train.draw_batch. engine_hint: the engine the run will use if known (None: cuda when a GPU is
    usable); on cuda each rank makes GPU (local rank mod GPUs) current here, before anything is
    allocated. Raises RuntimeError without mpi4py.
    Used through DistributedStep (run.plan_run(..., dist=)). A program of its own that trains on
    every rank should run as as_rank does (gate(error) before training has started, MPI_Abort after), or a rank
    that fails where the others wait in a collective leaves them waiting."""

    def __init__(self, engine_hint: str | None = None, comm=None):
        MPI = mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.root = self.rank == 0
        self.part = (self.rank, self.size)
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.phase = "setup"       # "setup" until gate() has passed, then "training"
        self.engine = self.backend = None
        self.device, self.shared_gpu = None, False
        self.flat = None           # (P,) float32 on the engine: the gradients, packed
        self.signalled = None      # the SIGTERM/SIGINT this rank received (as_rank's handler), else None
        self.interrupted = False   # the ranks agreed to stop on a signal (RanksInterrupted)
        self.nonfinite = None      # (rank, loss) of the first rank whose loss was not finite
        if engine_hint in (None, "cuda"):
            from .engines.runtime import gpu_status
            if gpu_status()[0]:
                import cupy
                n = cupy.cuda.runtime.getDeviceCount()
                self.device = self.local_rank % n
                cupy.cuda.Device(self.device).use()
                self.shared_gpu = self.local_size > n  # NCCL refuses two ranks on one GPU

    # -- the one exchange ---------------------------------------------------------------------------
    def exchange(self, value=None, error: BaseException | None = None, where: str = ""):
        """Collective: every rank's (error, value, signalled) by one allgather; returns the ranks'
        values. Every collective before the gradient all-reduce is this one call, so a rank that
        fails anywhere in the setup (as_rank: gate(error)) meets the others at whatever exchange
        they are in. Raises on every rank at once: a RanksStopped if any rank brings an error (the
        lowest rank's message, prefixed "rank r: " + where unless it is rank 0's own in the setup),
        else a RanksInterrupted if a SIGTERM/SIGINT reached any rank (as_rank's handler)."""
        err = None if error is None else (type(error).__name__, _first_line(error))
        got = self.comm.allgather((err, value, self.signalled is not None))
        errors = [(r, e) for r, (e, _, _) in enumerate(got) if e is not None]
        if errors:
            r, (name, msg) = errors[0]
            raise _stopped(name, msg if r == 0 and not where else f"rank {r}: {where}{msg}")
        if any(s for _, _, s in got):
            self.interrupted = True
            raise RanksInterrupted()
        return [v for _, v, _ in got]

    # -- the start: every rank ready, with the same state -------------------------------------------
    def gate(self, error: BaseException | None = None, digest: str | None = None, step: int = 0):
        """Collective: exchange (error, state hash) with every rank. Raises on every rank at once
        (a RanksStopped) if any rank brings an error (the lowest rank's message; rank 0's own
        message as it is, another's prefixed "rank r: ") or if the hashes differ (exchange)."""
        digests = self.exchange(digest, error)
        if len(set(digests)) > 1:
            differ = ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
            raise _stopped("RuntimeError", f"step {step}: the ranks' weights differ ({differ}); training stopped. "
                                           "The ranks must run the same unetcu on the same data with identical kernels")
        self.phase = "training"

    def check_setup(self, setup: dict):
        """Collective, before anything is generated or loaded: stop every rank (ValueError, one line,
        the same on every rank) unless every rank runs the same code with the same options on the
        same data. setup (run._rank_setup): code (code_fingerprint), options, data and val_data
        (data.fingerprint of the folder, None for synthetic data: its generator is fixed by the
        options and the code), paths (each rank's folders, named in the message, not compared).
        The ranks exchange a hash of each part; only when one differs does rank 0 gather that part
        from every rank to name the first difference."""
        parts = ("code", "options", "data", "val_data")  # in the order a difference is reported
        mine = {k: hashlib.sha256(json.dumps(setup[k], sort_keys=True, default=str).encode()).hexdigest() for k in parts}
        got = self.exchange(mine)
        part = next((k for k in parts if any(g[k] != got[0][k] for g in got)), None)
        if part is None:
            return
        every = self.comm.gather((setup[part], setup["paths"]), root=0)
        msg = self.comm.bcast(_setup_difference(part, every) if self.root else None, root=0)
        raise _stopped("ValueError", msg)

    def begin(self, model, optimizer, cfg, rng_state, step: int):
        """Called before the first step (DistributedStep.begin): refuses what cannot run distributed, checks
        that every rank holds the same weights, optimizer and generator state (gate), then opens
        the all-reduce backend."""
        if cfg.cuda_graph:
            raise ValueError("--cuda-graph cannot be used with --distributed: the all-reduce would have to be captured "
                             "in the graph")
        if model.engine == "cuda" and not self.shared_gpu:
            from cupy.cuda import nccl
            if not nccl.available:
                raise RuntimeError("--distributed on the cuda engine sums the gradients with NCCL, which CuPy cannot load "
                                   "here: pip install 'nvidia-nccl-cu13>=2.27.7,<3' (CuPy 14 for CUDA 13; nvidia-nccl-cu12 "
                                   "for cupy-cuda12x)")
        self.gate(None, state_hash(model.params, optimizer.state, rng_state), step)
        self.engine, self.batch = model.engine, cfg.batch
        n = sum(int(p.size) for p in model.params.values())
        self.flat = model.xp.zeros(n, dtype=np.float32)
        if self.engine == "cuda" and not self.shared_gpu:
            from cupy.cuda import nccl
            uid = self.comm.bcast(nccl.get_unique_id() if self.root else None, root=0)
            self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
            self.backend = "nccl"
        else:
            self.backend = "mpi"

    def describe(self) -> str:
        """The run's ranks and all-reduce backend in words, for its log."""
        if self.backend == "nccl":
            how = f"NCCL on device memory, {self.local_size} GPU(s) per node"
        elif self.engine == "cuda":
            how = ("MPI through host memory: NCCL refuses two ranks on one GPU, and "
                   f"{self.local_size} ranks share this node's GPU(s)")
        else:
            how = "MPI on host memory"
        ranks = f"{self.size} ranks x batch {self.batch} = {self.size * self.batch} tiles a step" if self.size > 1 else \
            "1 rank (started without mpirun -n N?)"
        return f"{ranks}, gradients summed by {how}"

    # -- each step ----------------------------------------------------------------------------------
    def loss_and_grads(self, model, x, labels, weights, dropout_seed: int, step: int):
        """Collective: this rank's forward + backward on its tiles x (b, 1, T, T), then the mean
        of every rank's loss (a float) and gradient (dict of views into one flat buffer). The
        dropout mask of rank r is that of tiles r*b.. of the whole step (rank_dropout_seed).
        Raises on every rank together (a RanksStopped, of the failing rank's error type) if any
        rank's forward or backward raised, a RanksInterrupted (before this step's update) if a
        rank was signalled; a rank's NaN/Inf loss is returned as the step's loss, with
        self.nonfinite = (rank, loss), and no all-reduce is done."""
        err, loss, grads = None, math.nan, None
        try:
            seed = rank_dropout_seed(dropout_seed, self.rank, x.shape[0], model.config, x.shape[2])  # square tiles
            loss, grads = model.loss_and_grads(x, labels, weights, dropout_seed=seed)
            loss = float(loss)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, whatever it is
            err = e
        losses = self.exchange(loss, err, f"step {step}: ")  # (error, loss, signalled) of each rank, a few bytes
        bad = [(r, v) for r, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            self.nonfinite = bad[0]
            return bad[0][1], None
        return sum(losses) / self.size, self.allreduce_mean(grads)

    def allreduce_mean(self, grads: dict) -> dict:
        """Pack grads into the flat buffer (one copy), sum it over the ranks in place, divide by
        the number of ranks; returns the gradients as views into the buffer, keyed like grads."""
        xp = np if self.engine != "cuda" else __import__("cupy")
        flat = self.flat
        xp.concatenate([g.reshape(-1) for g in grads.values()], out=flat)
        if self.backend == "nccl":
            import cupy
            from cupy.cuda import nccl
            self.nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                                cupy.cuda.get_current_stream().ptr)
        elif self.engine == "cuda":  # ranks sharing a GPU: through the host
            host = flat.get()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            flat.set(host)
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        if self.size > 1:
            flat *= np.float32(1.0 / self.size)
        out, o = {}, 0
        for k, g in grads.items():
            out[k] = flat[o:o + g.size].reshape(g.shape)
            o += g.size
        return out

    def check_same(self, model, optimizer, rng_state, step: int):
        """Collective: stop every rank (RuntimeError) if the ranks' weights, optimizer state or
        generator state differ."""
        self.gate(None, state_hash(model.params, optimizer.state, rng_state), step)

    def where_nonfinite(self) -> str:
        """' on rank r' for the message of a NaN/Inf loss, '' if none was seen."""
        return f" on rank {self.nonfinite[0]}" if self.nonfinite else ""


class DistributedStep(EagerStep):
    """A train.Step as one rank: each rank's loss and gradient on its own tiles, averaged over the
    ranks by one all-reduce (Distributed.loss_and_grads), then the same update on every rank; the
    ranks compare their state before the first step and before each checkpoint."""

    def __init__(self, model, optimizer, cfg, dist: Distributed):
        super().__init__(model, optimizer, cfg)
        self.dist = dist

    def begin(self, rng_state, step: int):
        self.dist.begin(self.model, self.optimizer, self.cfg, rng_state, step)

    def compute(self, x, labels, weights, dropout_seed: int, step: int):
        loss, self.grads = self.dist.loss_and_grads(self.model, x, labels, weights, dropout_seed, step)
        self.loss = float(loss) + 0.0

    def checkpoint(self, rng_state, step: int):
        self.dist.check_same(self.model, self.optimizer, rng_state, step)

    def where_nonfinite(self) -> str:
        return self.dist.where_nonfinite()


def _setup_difference(part: str, every: list) -> str:
    """The message of check_setup: the ranks whose `part` differs from rank 0's, and the first
    difference of the first of them. every: (part, paths) of each rank."""
    from .data import first_difference
    ref = every[0][0]
    ranks = [r for r, (p, _) in enumerate(every) if p != ref]
    if not ranks:  # the hashes differed, the parts compare equal: no file or option to name
        return f"the ranks' {part} differ; every rank must run the same unetcu with the same options on the same files"
    r, (mine, paths) = ranks[0], every[ranks[0]]
    more = "" if len(ranks) == 1 else f" (ranks {', '.join(map(str, ranks))} differ from rank 0)"
    if part == "code":
        if mine["version"] != ref["version"]:
            what = f"unetcu {mine['version']}, rank 0 unetcu {ref['version']}"
        else:
            what = f"unetcu {ref['version']} as rank 0, but {first_difference(ref['files'], mine['files'])}"
        return f"rank {r} runs other code than rank 0: {what}{more}; every rank must run the same unetcu"
    if part == "options":
        k = next(k for k in sorted(set(ref) | set(mine)) if ref.get(k) != mine.get(k))
        return (f"the ranks' options differ: --{k.replace('_', '-')} {ref.get(k)} on rank 0, {mine.get(k)} on rank {r}"
                f"{more}; start every rank with the same options")
    flag = "--" + part.replace("_", "-")
    return (f"rank {r}'s {flag} ({paths[part]}) differs from rank 0's ({every[0][1][part]}): "
            f"{first_difference(ref, mine)} on rank {r}{more}; every rank must train on the same files")


def code_fingerprint() -> dict:
    """The code this process runs: unetcu's version and {file: first 32 hex digits of its SHA-256}
    of the package's .py files and the kernels' files (.cu, .cuh, the emulator's headers), named
    relative to the package ("unetcu/model.py") and to the kernels folder ("kernels/conv3x3.cu")."""
    from pathlib import Path
    from . import __version__
    from .engines.runtime import kernels_dir
    package, kernels = Path(__file__).resolve().parent, kernels_dir().resolve()
    files = {}
    for base, name, pattern in ((package, "unetcu", "*.py"), (kernels, "kernels", "*")):
        for p in sorted(base.rglob(pattern)):
            if (not p.is_file() or "__pycache__" in p.parts or p.suffix in (".pyc", ".md")
                    or (base == package and kernels in p.parents)):
                continue
            files[f"{name}/{p.relative_to(base).as_posix()}"] = hashlib.sha256(p.read_bytes()).hexdigest()[:32]
    return dict(version=__version__, files=files)


def resume_command(checkpoint, ranks: int) -> str:
    """The command that continues a run trained on `ranks` processes."""
    if ranks > 1:
        return f"mpirun -n {ranks} unetcu train --distributed --resume {checkpoint}"
    return f"unetcu train --resume {checkpoint}"


def check_ranks(run: dict, dist: Distributed | None, resume: str):
    """Refuse (ValueError) to resume a run on another number of ranks than it was trained on: the
    tiles of each step depend on it. run: the checkpoint's config["run"]."""
    had, now = int(run.get("ranks", 1)), dist.size if dist is not None else 1
    if had != now:
        how = resume_command(resume, had) + ("" if had > 1 else " (no mpirun)")
        raise ValueError(f"--resume {resume}: the run was trained on {had} rank(s), this is {now}; each step's tiles "
                         f"depend on the number of ranks: resume it with {how}")


def refuse_undistributed():
    """Refuse (ValueError) a train started by mpirun as several processes without --distributed:
    they would be independent runs writing into one folder."""
    n = launched_ranks()
    if n > 1:
        raise ValueError(f"started by an MPI launcher as {n} processes without --distributed: they would write "
                         "independent runs into one folder; add --distributed")


def as_rank(body, engine_hint: str | None = None) -> int:
    """Run body(dist) -> exit status as one rank of the job (dist: this rank's Distributed; what
    `unetcu train --distributed` does with the planning and the loop of its run). Rank 0 prints; the
    other ranks' stdout is dropped and their stderr held back. An error all ranks raised together
    comes out of rank 0 only; any other error is printed by the rank that had it (with its held-back
    stderr), which then calls MPI_Abort so that ranks waiting in a collective do not hang."""
    dist = Distributed(engine_hint=engine_hint)
    real_err, held = sys.stderr, io.StringIO()
    if not dist.root:
        sys.stdout = open(os.devnull, "w")
        sys.stderr = held
    # SIGTERM (what mpirun sends every rank on Ctrl-C) and SIGINT only raise a flag: the ranks stop
    # together at their next exchange (a RanksInterrupted), and rank 0 saves the last finished step
    old = {}
    if threading.current_thread() is threading.main_thread():
        def flag(signum, frame):
            dist.signalled = signum
        old = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            rc = body(dist)
            if rc == 130 and dist.interrupted:  # every rank stopped at one step: wait for rank 0's save
                dist.comm.Barrier()
                return rc
        except BaseException as e:
            if dist.phase == "setup" and not isinstance(e, (RanksStopped, KeyboardInterrupt, SystemExit)):
                dist.gate(e)  # collective: the others hear of it before training starts (raises)
            raise
    except RanksStopped:
        if dist.root:
            raise  # main prints it, once
        return 1
    except RanksInterrupted:  # before the first step (train() reports one after it, rc 130): nothing saved
        if dist.root:
            raise KeyboardInterrupt from None  # main says "interrupted", exit 130
        return 130
    except BaseException as e:
        # this rank alone: say why, then end the job (the others may wait in a collective)
        sys.stderr = real_err
        real_err.write(held.getvalue())
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            real_err.write(f"unetcu train: rank {dist.rank}: {_first_line(e)}\n")
        real_err.flush()
        dist.comm.Abort(130 if isinstance(e, KeyboardInterrupt) else 1)
        raise
    finally:
        if not dist.root:
            sys.stdout, sys.stderr = sys.__stdout__, real_err
        for s, h in old.items():
            signal.signal(s, h)
    if rc == 130:  # Ctrl-C on this rank (rank 0 saved the last step): end the others
        real_err.write(held.getvalue())
        real_err.flush()
        dist.comm.Abort(130)
    return rc
