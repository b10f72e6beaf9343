"""What runs the kernels: the engines (runtime: engine choice, CuPy/NVRTC modules, the kernels' files),
the CPU emulator (emu), the sm_90 compile report (compile_check), the sanitizers on the emulator (sanitize).
The op layer (unetcu.ops) sits on top of it; the model and the app sit on the op layer."""
