// <assert.h> under the emulator: assert is defined by cuda_emu.h to raise a Python exception.
