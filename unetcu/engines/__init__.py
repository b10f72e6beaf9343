"""What runs the kernels: the engines (runtime: engine choice, CuPy/NVRTC modules, the kernels' files),
the CPU emulator (emu), the sm_90 compile report (compile_check), the sanitizers on the emulator (sanitize),
the emulator's profiler (profile). The op layer (unetcu.ops) sits on top of it; the model and the app sit on
the op layer.

The sanitizers and the profiler plug into the emulator through its hook (emu.Tool) and register
themselves when imported; they are imported here so that their environment variables (UNETCU_SANITIZE,
UNETCU_EMU_SANITIZE, UNETCU_PROFILE) take effect whichever module a program imports first.
"""
from . import profile, sanitize

__all__ = ["profile", "sanitize"]  # imported for what importing them does: each registers its emulator hook
