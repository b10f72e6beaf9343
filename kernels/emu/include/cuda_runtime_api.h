#pragma once
// <cuda_runtime_api.h> under the emulator: what it declares for device code lives in cuda_emu.h (force-included).
