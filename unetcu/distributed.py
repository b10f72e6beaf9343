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
printed by that rank, which then calls MPI_Abort: the job ends, it never hangs (run_cli).

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
import sys

import numpy as np

from .model import layer_shapes

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
    Used by train(dist=...). A program of its own that calls train on every rank should handle
    errors as run_cli does (gate(error) before training has started, MPI_Abort after), or a rank
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
        self.nonfinite = None      # (rank, loss) of the first rank whose loss was not finite
        if engine_hint in (None, "cuda"):
            from .engines.runtime import gpu_status
            if gpu_status()[0]:
                import cupy
                n = cupy.cuda.runtime.getDeviceCount()
                self.device = self.local_rank % n
                cupy.cuda.Device(self.device).use()
                self.shared_gpu = self.local_size > n  # NCCL refuses two ranks on one GPU

    # -- the start: every rank ready, with the same state -------------------------------------------
    def gate(self, error: BaseException | None = None, digest: str | None = None, step: int = 0):
        """Collective: exchange (error, state hash) with every rank. Raises on every rank at once
        (a RanksStopped) if any rank brings an error (the lowest rank's message; rank 0's own
        message as it is, another's prefixed "rank r: ") or if the hashes differ."""
        got = self.comm.allgather((None if error is None else (type(error).__name__, _first_line(error)), digest))
        errors = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
        if errors:
            r, (name, msg) = errors[0]
            raise _stopped(name, msg if r == 0 else f"rank {r}: {msg}")
        digests = [d for _, d in got]
        if len(set(digests)) > 1:
            differ = ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
            raise _stopped("RuntimeError", f"step {step}: the ranks' weights differ ({differ}); training stopped. "
                                           "The ranks must run the same unetcu on the same data with identical kernels")
        self.phase = "training"

    def begin(self, model, optimizer, cfg, rng_state, step: int):
        """Called by train() before its first step: refuses what cannot run distributed, checks
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
        rank's forward or backward raised; a rank's NaN/Inf loss is returned as the step's loss,
        with self.nonfinite = (rank, loss), and no all-reduce is done."""
        err, loss, grads = None, math.nan, None
        try:
            seed = rank_dropout_seed(dropout_seed, self.rank, x.shape[0], model.config, x.shape[2])  # square tiles
            loss, grads = model.loss_and_grads(x, labels, weights, dropout_seed=seed)
            loss = float(loss)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, whatever it is
            err = (type(e).__name__, _first_line(e))
        got = self.comm.allgather((loss, err))  # (loss, error) of each rank, a few bytes
        errors = [(r, e) for r, (_, e) in enumerate(got) if e is not None]
        if errors:
            r, (name, msg) = errors[0]
            raise _stopped(name, f"rank {r}: step {step}: {msg}")
        losses = [v for v, _ in got]
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


def check_ranks(run: dict, dist: Distributed | None, resume: str):
    """Refuse (ValueError) to resume a run on another number of ranks than it was trained on: the
    tiles of each step depend on it. run: the checkpoint's config["run"]."""
    had, now = int(run.get("ranks", 1)), dist.size if dist is not None else 1
    if had != now:
        how = f"mpirun -n {had} unetcu train --distributed --resume {resume}" if had > 1 else f"unetcu train --resume {resume} (no mpirun)"
        raise ValueError(f"--resume {resume}: the run was trained on {had} rank(s), this is {now}; each step's tiles "
                         f"depend on the number of ranks: resume it with {how}")


def refuse_undistributed():
    """Refuse (ValueError) a train started by mpirun as several processes without --distributed:
    they would be independent runs writing into one folder."""
    n = launched_ranks()
    if n > 1:
        raise ValueError(f"started by an MPI launcher as {n} processes without --distributed: they would write "
                         "independent runs into one folder; add --distributed")


def run_cli(cmd, a) -> int:
    """Run the `unetcu train` command `cmd(a)` as one rank of the job (a.dist is set to this rank's
    Distributed). Rank 0 prints; the other ranks' stdout is dropped and their stderr held back.
    An error all ranks raised together comes out of rank 0 only; any other error is printed by
    the rank that had it (with its held-back stderr), which then calls MPI_Abort so that ranks
    waiting in a collective do not hang."""
    a.dist = dist = Distributed(engine_hint=a.engine or os.environ.get("UNETCU_ENGINE"))
    real_err, held = sys.stderr, io.StringIO()
    if not dist.root:
        sys.stdout = open(os.devnull, "w")
        sys.stderr = held
    try:
        try:
            rc = cmd(a)
        except BaseException as e:
            if dist.phase == "setup" and not isinstance(e, (RanksStopped, KeyboardInterrupt, SystemExit)):
                dist.gate(e)  # collective: the others hear of it before training starts (raises)
            raise
    except RanksStopped:
        if dist.root:
            raise  # main prints it, once
        return 1
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
    if rc == 130:  # Ctrl-C on this rank (rank 0 saved the last step): end the others
        real_err.write(held.getvalue())
        real_err.flush()
        dist.comm.Abort(130)
    return rc
