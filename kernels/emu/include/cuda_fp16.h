#pragma once
// <cuda_fp16.h> under the emulator: __half lives in cuda_emu.h (force-included).
