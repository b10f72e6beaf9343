"""unetcu's benchmarks, run from the source checkout as modules (`python -m benchmarks.bench_kernels`)
or through `unetcu bench kernels|step|emulator|quality`."""
