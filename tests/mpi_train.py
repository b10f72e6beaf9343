"""`unetcu train` as one rank of an MPI job, with an optional fault planted on one rank, for
tests/test_distributed.py:

    mpirun -n 2 python tests/mpi_train.py PLANT TRAIN-ARGS...

PLANT is "none" or RANK:KIND:STEP, KIND one of
    badlabel   the labels of that rank's tiles hold a class outside the model's at that step
    nan        that rank's loss is NaN at that step
    drift      that rank's weights move by 1e-3 after that step (the hash check must see it)
    setup      that rank fails before training starts (a missing file)
    validation rank 0's validation raises (an error no other rank sees: MPI_Abort)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unetcu import cli  # noqa: E402


def plant(spec):
    if spec == "none":
        return
    rank, kind, step = spec.split(":")
    if int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))) != int(rank):
        return
    step = int(step)
    from unetcu import UNet, ops, train as T
    calls = {"n": 0}
    if kind in ("badlabel", "nan"):
        real = UNet.loss_and_grads

        def planted(self, x, labels, weights, **kw):
            calls["n"] += 1
            if calls["n"] == step and kind == "badlabel":
                labels = labels.copy()
                labels[0, 0, 0] = 7
            loss, g = real(self, x, labels, weights, **kw)
            return (float("nan") if calls["n"] == step and kind == "nan" else loss), g
        UNet.loss_and_grads = planted
    elif kind == "drift":
        real_adam = ops.adam_update

        def drifting(p, *a, **kw):
            real_adam(p, *a, **kw)
            calls["n"] += 1
            if calls["n"] == step * 26:  # the last parameter's update of that step (26 parameters in tiny)
                p += 1e-3
        ops.adam_update = drifting
    elif kind == "setup":
        from unetcu import run as R  # Run.of prepares the training images before the first step
        R.prepare = lambda *a: (_ for _ in ()).throw(FileNotFoundError("planted: images/x.png vanished"))
    elif kind == "validation":
        T.evaluate = lambda *a, **k: (_ for _ in ()).throw(OSError("planted: the validation disk is gone"))
    else:
        raise SystemExit(f"unknown plant {spec}")


if __name__ == "__main__":
    plant(sys.argv[1])
    sys.exit(cli.main(sys.argv[2:]))
