#pragma once
// <cuda_runtime.h> under the emulator: the dialect lives in cuda_emu.h (force-included).
