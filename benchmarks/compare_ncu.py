"""Hold the emulator's counts (`unetcu profile --json`) against ncu's on a GPU, launch by launch
and key by key (the device check runs the same script under both).

    python -m benchmarks.compare_ncu EMU.json NCU.csv      (ncu --csv --print-units base --metrics <the keys> ...)

Prints one row per launch and metric: emulator, GPU, ratio; the launches are matched in order
and by kernel name.
"""
from __future__ import annotations

import csv
import json
import sys

from unetcu.engines.profile import GLOBAL_KEYS, SHARED_KEYS

KEYS = [*GLOBAL_KEYS.values(), *SHARED_KEYS.values(), "dram__bytes_read.sum", "dram__bytes_write.sum"]
EMU_FOR = {"dram__bytes_read.sum": "unetcu__compulsory_bytes_read", "dram__bytes_write.sum": "unetcu__compulsory_bytes_written"}


def ncu_launches(path: str) -> list[tuple[str, dict]]:
    rows = list(csv.DictReader(line for line in open(path) if line.startswith('"')))
    out: dict[str, tuple[str, dict]] = {}
    for r in rows:
        name = r["Kernel Name"].split("(")[0]
        v = r["Metric Value"].replace(",", "")
        scale = {"Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "byte": 1}.get(r.get("Metric Unit", ""), 1)
        out.setdefault(r["ID"], (name, {}))[1][r["Metric Name"]] = float(v) * scale if v else None
    return [out[k] for k in sorted(out, key=int)]


def main(argv=None) -> int:
    a = argv if argv is not None else sys.argv[1:]
    if len(a) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    emu = json.load(open(a[0]))["launches"]
    gpu = ncu_launches(a[1])
    if len(emu) != len(gpu):
        print(f"the emulator profiled {len(emu)} launches, ncu {len(gpu)}: not the same run", file=sys.stderr)
        return 1
    print(f"{'kernel':<22} {'metric':<58} {'emulator':>12} {'GPU':>12} {'ratio':>7}")
    for e, (name, g) in zip(emu, gpu):
        if e["kernel"] != name:
            print(f"launch order differs: emulator {e['kernel']}, ncu {name}", file=sys.stderr)
            return 1
        for k in KEYS:
            ev, gv = e["metrics"].get(EMU_FOR.get(k, k)), g.get(k)
            ratio = f"{ev / gv:.3f}" if ev is not None and gv else "-"
            print(f"{name:<22} {k:<58} {ev if ev is not None else '-':>12} {gv if gv is not None else '-':>12} {ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
