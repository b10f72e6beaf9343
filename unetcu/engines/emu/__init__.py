"""The CPU emulator's Python side: build a .cu source with g++ against kernels/emu, launch it.

Three modules, each using only the ones before it:

  source.py  the text work: what a source declares (kernel_names, kernel_linkage, param_names,
             global_variables) and the edits g++ needs (rewrite, rewrite_shifts, expand_includes)
  gxx.py     the build: g++'s options and flags, its cache, compile_error, asan_runtime
  launch.py  EmuModule / EmuKernel, the argument checks, the thread order, and the tool hook

A source is turned into one translation unit::

    (cuda_emu.h, force-included)
    #line 1 "<the .cu file>"
    <the source, with its `extern __shared__` names pointed at the dynamic buffer, a poison
     statement after each static `__shared__` declaration, each shift by a count that is not a
     small literal made a call that computes the GPU's value (::emu::shl, ...), and the user
     headers that declare shared memory or shift in device code inlined (behind #line markers)
     and rewritten the same way>
    #include "emu_launch.h"
    <one exported launcher + signature function per kernel, one accessor per global variable>

compiled to a shared object cached by the content hash of everything that goes into it, and loaded
with ctypes. When g++ refuses it for what the emulator does not support (an error attribute or
static_assert of its headers, a header it does not have), the EmuCompileError is one line naming
the user's file and line (compile_error). `EmuKernel.__call__(grid, block, args, shared_mem=0)`
mirrors `cupy.RawKernel`; `EmuModule.get_function` / `get_global` find names as `cupy.RawModule`
does. After each launch the shifts whose count was out of range are warned about (or reported
by the active tool).

The hook: the sanitizers (unetcu.engines.sanitize) and the profiler (unetcu.engines.profile)
subclass launch.Tool and register_tool() themselves when imported (unetcu.engines imports both).
The emulator builds what the active tool's build() names and calls its begin/end around each
launch of an instrumented build, error() when a launch fails, shifts() with the out-of-range
shifts; allocated(array) passes an op's fresh output buffer on (initcheck). Nothing here imports
a tool.

Knobs (environment variables, or the functions below):
  UNETCU_EMU_ORDER     forward | reverse | random | random:SEED  thread order inside each round
  UNETCU_EMU_THREADS   OS threads that run blocks in parallel (default: all cores)
  UNETCU_EMU_SANITIZE  address  -> AddressSanitizer build (run under `unetcu asan ...`; read by
                       the sanitize tool)
  UNETCU_EMU_STACK_KB  fiber stack size (default 256)
  UNETCU_CACHE_DIR     where built objects go (default ~/.cache/unetcu)
"""
from .gxx import EMU_DIR, asan_loaded, asan_runtime, build, cache_dir, compile_error, gxx_options, kernels_dir
from .launch import (ORDERS, CUDADriverError, EmuKernel, EmulatorError, EmuModule, Shift, Tool, active_tool, aligned,
                     allocated, get_order, num_threads, register_tool, set_order, thread_order)
from .source import (EmuCompileError, expand_includes, global_variables, kernel_linkage, kernel_names, param_names,
                     rewrite, rewrite_shifts, strip_comments)

__all__ = [
    "EMU_DIR", "asan_loaded", "asan_runtime", "build", "cache_dir", "compile_error", "gxx_options", "kernels_dir",
    "ORDERS", "CUDADriverError", "EmuKernel", "EmulatorError", "EmuModule", "Shift", "Tool", "active_tool", "aligned",
    "allocated", "get_order", "num_threads", "register_tool", "set_order", "thread_order",
    "EmuCompileError", "expand_includes", "global_variables", "kernel_linkage", "kernel_names", "param_names",
    "rewrite", "rewrite_shifts", "strip_comments",
]
