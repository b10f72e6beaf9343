"""The CUDA C sources of unetcu (one .cu file per op family) and the emulator headers in emu/."""
