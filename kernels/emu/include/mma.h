#pragma once
// <mma.h> under the emulator: nvcuda::wmma lives in cuda_emu.h (force-included).
