#pragma once
// <device_launch_parameters.h> under the emulator: what it declares for device code lives in cuda_emu.h (force-included).
