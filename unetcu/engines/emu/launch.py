"""The CPU emulator's Python side: build a .cu source with g++ against kernels/emu, launch it.

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
under `unetcu sanitize`).

Knobs (environment variables, or the functions below):
  UNETCU_EMU_ORDER     forward | reverse | random | random:SEED  thread order inside each round
  UNETCU_EMU_THREADS   OS threads that run blocks in parallel (default: all cores)
  UNETCU_EMU_SANITIZE  address  -> AddressSanitizer build (run under `unetcu asan ...`)
  UNETCU_EMU_STACK_KB  fiber stack size (default 256)
  UNETCU_CACHE_DIR     where built objects go (default ~/.cache/unetcu)
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

EMU_DIR = Path(__file__).resolve().parents[1] / "kernels" / "emu"  # unetcu/kernels/emu when installed
if not EMU_DIR.is_dir():  # running from a source tree that is not installed
    EMU_DIR = Path(__file__).resolve().parents[2] / "kernels" / "emu"  # the source tree's

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
DEFAULT_SHARED_LIMIT = 48 * 1024  # without the max_dynamic_shared_size_bytes opt-in, as on the GPU
MAX_SHARED_OPTIN = 227 * 1024     # H100 / sm_90

ORDERS = {"forward": 0, "reverse": 1, "random": 2}

_DTYPES = {
    "f32": np.float32, "f64": np.float64, "f16": np.float16, "b8": np.bool_,
    "i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16,
    "i32": np.int32, "u32": np.uint32, "i64": np.int64, "u64": np.uint64,
}
_CTYPES = {
    "f32": ctypes.c_float, "f64": ctypes.c_double, "f16": ctypes.c_uint16, "b8": ctypes.c_bool,
    "i8": ctypes.c_int8, "u8": ctypes.c_uint8, "i16": ctypes.c_int16, "u16": ctypes.c_uint16,
    "i32": ctypes.c_int32, "u32": ctypes.c_uint32, "i64": ctypes.c_int64, "u64": ctypes.c_uint64,
}


class EmulatorError(RuntimeError):
    """A kernel broke a rule at run time: divergent barrier, deadlock, failed assert, ..."""


class EmuCompileError(RuntimeError):
    """g++ rejected the emulated source; the message holds its diagnostics."""


# ---- thread order --------------------------------------------------------------------------------
_order_local = threading.local()


def _parse_order(spec: str) -> tuple[str, int]:
    name, _, seed = spec.partition(":")
    if name not in ORDERS:
        raise ValueError(f"unknown emulator thread order {spec!r}: use forward, reverse, random or random:SEED")
    return name, int(seed) if seed else 0


def get_order() -> tuple[str, int]:
    """The (order, seed) launches use now: set_order/thread_order, else UNETCU_EMU_ORDER, else forward."""
    o = getattr(_order_local, "order", None)
    if o is not None:
        return o
    return _parse_order(os.environ.get("UNETCU_EMU_ORDER", "forward"))


def set_order(order: str, seed: int = 0) -> None:
    _order_local.order = (_parse_order(order)[0], int(seed))


@contextlib.contextmanager
def thread_order(order: str, seed: int = 0):
    """Run the enclosed launches with threads of each block scheduled in this order."""
    old = getattr(_order_local, "order", None)
    set_order(order, seed)
    try:
        yield
    finally:
        _order_local.order = old


def num_threads() -> int:
    return max(1, int(os.environ.get("UNETCU_EMU_THREADS", os.cpu_count() or 1)))


def sanitize_mode() -> str | None:
    """The build's instrumentation: "address" (UNETCU_EMU_SANITIZE=address, or the memcheck tool),
    "racecheck" or "initcheck" (UNETCU_SANITIZE, see unetcu.engines.sanitize), "profile"
    (UNETCU_PROFILE, see unetcu.engines.profile), else None."""
    from . import profile, sanitize
    mode = os.environ.get("UNETCU_EMU_SANITIZE", "").strip() or None
    if mode not in (None, "address"):
        raise ValueError(f"UNETCU_EMU_SANITIZE={mode!r}: only 'address' is supported")
    t = sanitize.tool()
    mode = mode or (sanitize.BUILD[t] if t else None)
    if profile.enabled():
        if mode is not None:
            raise ValueError(f"{profile.ENV} and a sanitizer ({mode}) are both set: the emulator instruments for one "
                             "at a time")
        return "profile"
    return mode


def asan_runtime() -> str:
    """Path of g++'s libasan, which must be preloaded into a Python that loads an ASan build."""
    out = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return os.path.realpath(out.stdout.strip())


def _asan_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


# ---- source handling -----------------------------------------------------------------------------
def strip_comments(src: str) -> str:
    """Blank out comments, string and character literals, keeping every newline (so offsets keep
    their line)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])+\'', blank, src, flags=re.S)


_GLOBAL_RE = re.compile(r"\b__global__\b")
_NAME_RE = re.compile(r"\bvoid\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(")


def _open_braces(code: str, positions) -> list[list[int]]:
    """For each position (ascending), the offsets of the `{` that enclose it, outermost first."""
    out, stack, k = [], [], 0
    positions = list(positions)
    for m in re.finditer(r"[{}]", code):
        while k < len(positions) and positions[k] < m.start():
            out.append(list(stack))
            k += 1
        if m.group(0) == "{":
            stack.append(m.start())
        elif stack:
            stack.pop()
    out += [list(stack) for _ in positions[k:]]
    return out


def _is_linkage_block(src: str, brace: int) -> str | None:
    """'C' for an `extern "C" {`, 'ns' for a namespace, None for anything else (a function body)."""
    before = src[max(0, brace - 200):brace]
    if re.search(r'\bextern\s*"C"\s*$', before):
        return "C"
    if re.search(r"\bnamespace(\s+[\w:]+)?\s*$", before):
        return "ns"
    return None


def kernel_linkage(src: str) -> list[tuple[str, bool]]:
    """(name, declared extern "C") for the non-template `__global__` functions of a source, in order."""
    code = strip_comments(src)
    found = []
    for m in _GLOBAL_RE.finditer(code):
        start = max(code.rfind(";", 0, m.start()), code.rfind("}", 0, m.start()), code.rfind("{", 0, m.start())) + 1
        if re.search(r"\btemplate\b", code[start:m.start()]):
            continue
        n = _NAME_RE.search(code, m.end())
        if n:
            found.append((m.start(), n.group(1), bool(re.search(r'\bextern\s*"C"', src[start:m.start()]))))
    braces = _open_braces(code, [p for p, _, _ in found])
    return [(name, c or any(_is_linkage_block(src, b) == "C" for b in enc)) for (_, name, c), enc in zip(found, braces)]


def kernel_names(src: str) -> list[str]:
    """Names of the non-template `__global__` functions of a source, in order."""
    return [name for name, _ in kernel_linkage(src)]


def _split_top(text: str) -> list[str]:
    """Split at commas outside (), [] and <>."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _declared_name(declarator: str) -> str | None:
    d = re.sub(r"\[[^\]]*\]", " ", declarator.split("=")[0])
    names = re.findall(r"[A-Za-z_]\w*", d)
    return names[-1] if names else None


def param_names(src: str, kernel: str) -> list[str]:
    """The parameter names of a non-template kernel as written in the source (for messages)."""
    code = strip_comments(src)
    m = re.search(rf"\b{re.escape(kernel)}\s*\(", code)
    if not m:
        return []
    depth, i = 1, m.end()
    while i < len(code) and depth:
        depth += {"(": 1, ")": -1}.get(code[i], 0)
        i += 1
    params = code[m.end():i - 1].strip()
    if re.fullmatch(r"[A-Za-z_]\w*", params):  # a parameter list spelled by an object-like macro
        d = re.search(rf"^[ \t]*#[ \t]*define[ \t]+{params}[ \t]+((?:[^\n]*\\\n)*[^\n]*)", code, re.M)
        if d:
            params = d.group(1).replace("\\\n", " ").strip()
    return [] if params in ("", "void") else [_declared_name(p) or "?" for p in _split_top(params)]


_VAR_RE = re.compile(r"\b(?:__constant__|__device__)\b")


def global_variables(src: str) -> list[str]:
    """Names of the `__constant__` / `__device__` variables defined at global scope (what CuPy's
    get_global finds by name; ones inside a namespace have mangled names and are left out)."""
    code = strip_comments(src)
    found = []
    for m in _VAR_RE.finditer(code):
        start = max(code.rfind(";", 0, m.start()), code.rfind("}", 0, m.start()), code.rfind("{", 0, m.start())) + 1
        head = code[start:m.start()]
        if re.search(r"\b(extern|template|typedef|using)\b|#", head):
            continue
        rest = re.sub(r"__align__\s*\(\s*\d+\s*\)", lambda a: " " * len(a.group(0)), code[m.end():m.end() + 2000])
        t = re.search(r"[;={(]", rest)
        if not t or t.group(0) in "{(":
            continue  # a function (or something this parser does not know)
        decl = rest[:t.start()]
        if re.search(r"\b(__global__|__host__|extern|operator)\b", decl):
            continue
        name = _declared_name(_split_top(decl)[0])
        if name and name not in [n for _, n in found]:
            found.append((m.start(), name))
    braces = _open_braces(code, [p for p, _ in found])
    return [n for (_, n), enc in zip(found, braces) if not enc or all(_is_linkage_block(src, b) == "C" for b in enc)]


def _balanced(code: str, i: int) -> int:
    """The offset just past the parenthesised group that opens at code[i]."""
    depth = 0
    for j in range(i, len(code)):
        depth += {"(": 1, ")": -1}.get(code[j], 0)
        if depth == 0:
            return j + 1
    return len(code)


def _directive_spans(code: str) -> list[tuple[int, int]]:
    """(start, end) of each preprocessor directive, continuation lines included."""
    return [(m.start(), m.end()) for m in re.finditer(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", code, re.M)]


# attributes nvcc accepts among an extern __shared__ declaration's specifiers: they only ask for an
# alignment, and the dynamic buffer is 128-byte aligned (emu_launch.h)
_ATTRIBUTE = re.compile(r"\b(?:__align__|alignas|__attribute__|__declspec)\s*(?=\()")
_UNSIZED = re.compile(r"^(?P<stars>[\s*&]*?)\s*(?P<name>[A-Za-z_]\w*)\s*\[\s*\](?P<rest>(?:\s*\[[^\[\]]*\])*)\s*$")


def _extern_shared(code: str):
    """(start, end, spec, [(stars, name, rest)]) of each `extern __shared__` declaration in code
    (comments and strings blanked), however it is written: several declarators, split over lines,
    attributes, in a macro body. Declarators that are not unsized arrays give None for the list."""
    spans = _directive_spans(code)
    for m in re.finditer(r"\b__shared__\b", code):
        start = max(code.rfind(c, 0, m.start()) for c in ";{}") + 1
        for a, b in spans:  # a directive between the previous statement and this one is not part of it
            if start <= a < m.start() and b < m.start():
                start = b
        end = code.find(";", m.end())
        if end < 0 or not re.search(r"\bextern\b", code[start:end]):
            continue
        start += re.match(r"(?:\s|\\\n)*", code[start:end]).end()  # a macro body's line ends too
        decl = code[start:end].replace("\\\n", "  ")
        while True:  # drop the attributes (with their balanced parentheses)
            a = _ATTRIBUTE.search(decl)
            if not a:
                break
            decl = decl[:a.start()] + " " * (_balanced(decl, a.end()) - a.start()) + decl[_balanced(decl, a.end()):]
        decl = re.sub(r"\b(?:extern|__shared__)\b", " ", decl)
        parts = _split_top(decl)
        first = re.search(r"[\s*&]*[A-Za-z_]\w*\s*\[", parts[0])
        spec = parts[0][:first.start()].strip() if first else ""
        found = [_UNSIZED.match(p) for p in [parts[0][first.start():] if first else parts[0]] + parts[1:]]
        declarators = None if not spec or not all(found) else \
            [(re.sub(r"\s+", "", f.group("stars")), f.group("name"), f.group("rest").strip()) for f in found]
        yield start, end + 1, re.sub(r"\s+", " ", spec), declarators


# ---- shifts ---------------------------------------------------------------------------------------
# C++ leaves a shift by a count not below the width of the (promoted) left operand undefined, and
# x86 takes the count modulo the width, while the GPU clamps it (PTX shl/shr, which nvcc emits for
# `<<` and `>>`): `1 << 40` is 256 on x86 and 0 on the GPU. So every shift whose count is not a
# small literal becomes a call, `a << n` -> `::emu::shl(a, n)` (cuda_emu.h), which computes what the
# GPU computes and reports a count out of range. Operands are found by C++'s precedence over the
# tokens; where that is unsure (a `>>` that may close a template, a macro body) the shift is left
# alone and g++'s shift check (the handler in cuda_emu.h) stops the kernel at that line instead.
_TOKEN = re.compile(r"[A-Za-z_]\w*|\.?\d(?:[\w.]|[eEpP][+-])*|<<=|>>=|<<|>>|->\*?|\+\+|--|&&|\|\||[<>!=+\-*/%&|^]=|::|\.\.\."
                    r"|[^\sA-Za-z_\d]")
_TYPE_WORDS = {"int", "unsigned", "signed", "char", "short", "long", "float", "double", "bool", "void"}
_KEYWORDS_STOP = {"return", "case", "throw", "else", "do", "co_return", "co_yield", "goto", "typedef", "using",
                  "if", "while", "for", "switch", "constexpr", "static_assert", "const", "volatile", "auto"} | _TYPE_WORDS
_ASSIGN = {"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="}
# tokens that end a shift's operand (lower precedence than <<, or a delimiter)
_STOP = _ASSIGN | {",", ";", "?", ":", "<", ">", "<=", ">=", "==", "!=", "&&", "||", "|", "^", "#", "{", "}"}


def _template_brackets(toks) -> dict[int, int]:
    """{index of `<`: index of its `>` (or `>>`)} for the `<` that open template argument lists, by
    a guess: a `<` after a name, closed before the statement or the enclosing bracket ends."""
    pairs, stack = {}, []  # stack: ("(" | "[" | "{" | "<", index)

    def opens_template(k):
        prev = toks[k - 1][0] if k else ""
        if not re.fullmatch(r"[A-Za-z_]\w*", prev) or prev in _KEYWORDS_STOP - {"const", "volatile"}:
            return False
        outer = sum(1 for c, _ in stack if c == "<")
        d, p = 1, 0
        for j in range(k + 1, min(len(toks), k + 400)):
            t = toks[j][0]
            if t in "([":
                p += 1
            elif t in ")]":
                if p == 0:
                    return False
                p -= 1
            elif t in ("{", "}", ";", "&&", "||") or (p == 0 and t in _ASSIGN - {"="}):
                return False
            elif p == 0 and t == "<" and re.fullmatch(r"[A-Za-z_]\w*", toks[j - 1][0]):
                d += 1
            elif p == 0 and t == ">":
                d -= 1
            elif p == 0 and t == ">>":
                if d == 1 and outer == 0:
                    return False  # `a < b >> c`: a comparison with a shift, not `x<y>>`
                d -= 2
            if d <= 0:
                return True
        return False

    for k, (t, _) in enumerate(toks):
        if t in "([{":
            stack.append((t, k))
        elif t in ")]}":
            while stack and stack[-1][0] == "<":
                stack.pop()
            if stack:
                stack.pop()
        elif t == ";":
            while stack and stack[-1][0] == "<":
                stack.pop()
        elif t == "<" and opens_template(k):
            stack.append(("<", k))
        elif t in (">", ">>") and stack and stack[-1][0] == "<":
            pairs[stack.pop()[1]] = k
            if t == ">>" and stack and stack[-1][0] == "<":
                pairs[stack.pop()[1]] = k
    return pairs


def _small_literal(toks, a: int, b: int) -> bool:
    """The tokens [a, b) are one integer literal below 32 (a shift by it is defined for every type)."""
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)[uUlL]*", toks[a][0]) if b - a == 1 else None
    if not m:
        return False
    digits = m.group(1)
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10
    return int(digits, base) < 32


def rewrite_shifts(src: str) -> str:
    """`a << n`, `a >> n`, `a <<= n`, `a >>= n` with a count that is not a small literal, as calls
    of ::emu::shl / shr / shl_assign / shr_assign (cuda_emu.h); lines and the rest of the text stay."""
    code = strip_comments(src)
    spans = _directive_spans(code)
    toks = [(m.group(0), m.start()) for m in _TOKEN.finditer(code) if m.group(0) != "\\"]  # not line splices
    if not any(t in ("<<", ">>", "<<=", ">>=") for t, _ in toks):
        return src
    directive = [-1] * len(toks)  # the directive a token is in, if any
    d = 0
    for k, (_, pos) in enumerate(toks):
        while d < len(spans) and spans[d][1] <= pos:
            d += 1
        if d < len(spans) and spans[d][0] <= pos:
            directive[k] = d
    # a #define's body: (first token, last token, parameter names). A shift in it is rewritten only
    # where the expansion cannot change what its operands are: both ends inside the body, and no
    # parameter bare in an operand (`(1u << (n))`, not `1u << n`, whose n may be `c ? 1 : 2`)
    bodies = {}
    for k, (t, _) in enumerate(toks):
        d = directive[k]
        if t == "#" and d >= 0 and d not in bodies and k + 2 < len(toks) and toks[k + 1][0] == "define":
            last = max(j for j in range(k, min(len(toks), k + 100000)) if directive[j] == d)
            j, params = k + 3, set()
            name_end = toks[k + 2][1] + len(toks[k + 2][0])
            if j <= last and toks[j][0] == "(" and toks[j][1] == name_end:  # function-like
                while j <= last and toks[j][0] != ")":
                    params.add(toks[j][0])
                    j += 1
                j += 1
            bodies[d] = (j, last, params)
    templ = _template_brackets(toks)
    closers = {}
    for o, c in templ.items():  # a `>>` may close two: jump to the outer opener
        closers[c] = min(o, closers.get(c, o))
    match, stack = {}, []
    for k, (t, _) in enumerate(toks):
        if t in "([{":
            stack.append(k)
        elif t in ")]}" and stack:
            o = stack.pop()
            match[o], match[k] = k, o

    def operand_end(k):  # the previous token ends an operand: a following & is binary
        t = toks[k][0] if k >= 0 else ";"
        return bool(re.fullmatch(r"\w+|\.?\d.*", t)) and t not in _KEYWORDS_STOP or t in (")", "]", "++", "--") \
            or k in closers

    def left(k):
        j = k - 1
        while j >= 0:
            t = toks[j][0]
            if t in (")", "]") and j in match:
                if match[j] and toks[match[j] - 1][0] in ("if", "while", "for", "switch"):
                    break  # `if (c) a << n`: the condition is not part of the operand
                j = match[j] - 1
            elif j in closers:
                j = closers[j] - 1
            elif t in _TYPE_WORDS and j + 1 < k and toks[j + 1][0] == "(":
                j -= 1  # a functional cast, `unsigned(x) << n`
            elif t in _KEYWORDS_STOP or t in _STOP or t in ("(", "[", ")", "]"):
                break
            elif t == "&" and operand_end(j - 1):
                break  # a binary &
            else:
                j -= 1
        return j + 1

    def right(k, assign):
        j, first, pending = k + 1, True, 0
        while j < len(toks):
            t = toks[j][0]
            if t in ("(", "[", "{") and j in match and (t != "{" or first):
                j = match[j] + 1
            elif j in templ:
                j = templ[j] + 1
            elif j in closers or t in (")", "]", "}", ",", ";", "#") or (t == ":" and assign and not pending):
                break
            elif assign and t in ("?", ":"):  # a conditional in the count of `x <<= c ? 1 : 2`
                pending += 1 if t == "?" else -1
                j += 1
            elif not assign and (t in _STOP or t in ("<<", ">>") or (t == "&" and not first)):
                break
            else:
                j += 1
            first = False
        return j

    def bare_param(a, b, params):  # a parameter outside any bracket of the operand toks[a:b]
        depth = 0
        for i in range(a, b):
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(toks[i][0], 0)
            if depth == 0 and toks[i][0] in params:
                return True
        return False

    shifts = []
    for k, (t, pos) in enumerate(toks):
        if t not in ("<<", ">>", "<<=", ">>=") or k in closers:
            continue
        if k and toks[k - 1][0] == "operator":
            continue
        a, b = left(k), right(k, t.endswith("="))
        if a >= k or b <= k + 1 or _small_literal(toks, k + 1, b):
            continue
        if directive[k] >= 0:
            first, last, params = bodies.get(directive[k], (len(toks), -1, set()))
            if not (first < a and b <= last) or bare_param(a, k, params) or bare_param(k + 1, b, params):
                continue
        if any(toks[i][0] in ("cout", "cerr", "clog", "endl") for i in range(a, b)):
            continue  # host code's streams (NVRTC has none): an operator<<, not a shift
        fn = {"<<": "shl", ">>": "shr", "<<=": "shl_assign", ">>=": "shr_assign"}[t]
        end = toks[b - 1][1] + len(toks[b - 1][0])
        shifts.append((toks[a][1], pos, len(t), end, fn))
    # (position, kind, tie, text); at one position: closings (inner calls first), the operator,
    # then openings (outer calls first)
    edits = []
    for start, pos, n, end, fn in shifts:
        edits += [(start, 2, -end, f"::emu::{fn}("), (pos, 1, 0, "," + " " * (n - 1)), (end, 0, -start, ")")]
    out, last = [], 0
    for pos, kind, _, text in sorted(edits):
        out.append(src[last:pos] + text)
        last = pos + len(text) if kind == 1 else pos  # the operator is replaced, the rest inserted
    return "".join(out) + src[last:]


_SHARED_DECL = re.compile(r"\b__shared__\b([^;{}]*);")


def rewrite(src: str, filename: str = "kernel.cu") -> tuple[str, list[str]]:
    """The source edits the emulator needs; all keep every line where it was.

    `extern __shared__ T name[];` (however nvcc accepts it written: several names, over several
    lines, with attributes, in a macro body) becomes, inside a function, a local pointer to the
    dynamic buffer; at file scope, a macro for each name on lines of its own followed by a #line
    (the names are returned, so they can be #undef'd after the source). `static __shared__` becomes
    `__shared__` (the header adds the static). Every other `__shared__` declaration gets a poison
    statement after it (EMU_POISON_SHARED in cuda_emu.h), so static shared memory starts each block
    as garbage, as on the GPU. Last, the shifts (rewrite_shifts).
    """
    code = strip_comments(src)
    macros = []
    spans = _directive_spans(code)
    decls = list(_extern_shared(code))
    out, last = [], 0
    for (start, end, spec, declarators), enclosing in zip(decls, _open_braces(code, [d[0] for d in decls])):
        line = code.count("\n", 0, start) + 1
        if declarators is None:
            raise EmuCompileError(f"{filename}:{line}: `extern __shared__` declares dynamic shared memory, which must be "
                                  "unsized arrays (`extern __shared__ T name[];`, several names allowed); this "
                                  "declaration is something else")
        in_macro = any(a <= start < b for a, b in spans)
        in_function = any(_is_linkage_block(src, b) is None for b in enclosing)
        # the pointer type of each name: `T name[][N]` is used as a `T (*)[N]`
        ptr = [(f"{spec} {stars}(*){rest}", name) for stars, name, rest in declarators]
        if in_function:
            text = " ".join(f"{t.replace('(*)', f'(* const {n})', 1)} = ({t})::emu::dynamic_smem();" for t, n in ptr)
        elif in_macro:
            raise EmuCompileError(f"{filename}:{line}: `extern __shared__` at file scope inside a macro body: the emulator "
                                  "turns a file-scope declaration into a macro of its own, which cannot be nested; "
                                  "declare it inside the function that uses it")
        else:
            # a macro per name, on lines of their own after the code before it on its line; the #line
            # after them counts the declaration's own line breaks
            macros += [n for _, n in ptr]
            text = ("\n" + "".join(f"#define {n} (({t})::emu::dynamic_smem())\n" for t, n in ptr) +
                    f'#line {code.count(chr(10), 0, end) + 1} "{filename}"\n')
        if in_function:  # keep every line break of the declaration (a macro body's with its backslash)
            text += "".join(" \\\n" if in_macro else "\n" for _ in range(src.count("\n", start, end)))
        out += [src[last:start], text]
        last = end
    out = "".join(out) + src[last:]
    out = re.sub(r"\bstatic(\s+)__shared__\b", r"\1__shared__", out)

    code = strip_comments(out)
    decls = [m for m in _SHARED_DECL.finditer(code)
             if not re.search(r"\bextern\s*$", code[max(0, m.start() - 40):m.start()])]
    edits = []
    for m, enclosing in zip(decls, _open_braces(code, [m.start() for m in decls])):
        names = [n for n in (_declared_name(d) for d in _split_top(m.group(1))) if n]
        in_function = any(_is_linkage_block(out, b) is None for b in enclosing)
        macro = "EMU_POISON_SHARED" if in_function else "EMU_POISON_SHARED_GLOBAL"
        edits.append((m.end(), "".join(f" {macro}({n});" for n in names)))
    for pos, text in reversed(edits):
        out = out[:pos] + text + out[pos:]
    return rewrite_shifts(out), macros


_INCLUDE_LINE = re.compile(r"^[ \t]*#[ \t]*include\b[^\n]*$", re.M)
_INCLUDE_NAME = re.compile(r'#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]')


def _includes(text: str):
    """(start, end, kind, name) of each #include line outside comments ("..." is blanked by
    strip_comments, so the name is read from the text itself)."""
    for m in _INCLUDE_LINE.finditer(strip_comments(text)):
        n = _INCLUDE_NAME.search(text, m.start(), m.end())
        if n:
            yield m.start(), m.end(), n.group(1), n.group(2).strip()


def expand_includes(src: str, path: str, search_dirs, emu_dirs, _state=None) -> tuple[str, list[str]]:
    """`src` rewritten, with every user header that declares `__shared__` memory or has device
    code with shifts (or includes one that does) inlined and rewritten too, behind #line markers so
    that messages name the header and its line. Other user headers are included by absolute path (they may sit next to an inlined
    header, which g++ would no longer search); the emulator's own and system headers are left to g++."""
    state = _state if _state is not None else {"once": set(), "depth": 0, "needs": {}}

    def resolve(includer, kind, name):
        # g++'s order: the includer's folder for "...", then -I folders (the emulator's first)
        here = [os.path.dirname(includer)] if kind == '"' and os.path.isabs(includer) else []
        for d in here + list(emu_dirs) + list(search_dirs):
            f = os.path.join(d, name)
            if os.path.isfile(f):
                return None if d in emu_dirs else os.path.abspath(f)
        return None

    def needs_rewrite(f, seen=()):
        if f not in state["needs"]:
            if f in seen:
                return False
            text = Path(f).read_text()
            inner = (resolve(f, k, n) for _, _, k, n in _includes(text))
            code = strip_comments(text)
            shifts = re.search(r"<<|>>", code) and re.search(r"\b__device__\b|\b__global__\b", code)
            state["needs"][f] = (bool(re.search(r"\b__shared__\b", code) or shifts)
                                 or any(needs_rewrite(g, seen + (f,)) for g in inner if g))
        return state["needs"][f]

    body, macros = rewrite(src, path)
    pieces, last = [], 0
    for start, end, kind, name in list(_includes(body)):
        f = resolve(path, kind, name)
        if f is None:
            continue
        line = body.count("\n", 0, start) + 1
        pieces.append(body[last:start])
        last = end
        if not needs_rewrite(f):
            pieces.append(f'#include "{f}"')
            continue
        if f in state["once"]:
            continue
        text = Path(f).read_text()
        if re.search(r"^[ \t]*#[ \t]*pragma[ \t]+once\b", strip_comments(text), re.M):
            state["once"].add(f)
            text = re.sub(r"^[ \t]*#[ \t]*pragma[ \t]+once\b", lambda a: " " * len(a.group(0)), text, flags=re.M)
        if state["depth"] > 40:
            raise EmuCompileError(f"{path}:{line}: #include nested more than 40 deep (a header including itself?)")
        state["depth"] += 1
        inner, inner_macros = expand_includes(text, f, search_dirs, emu_dirs, state)
        state["depth"] -= 1
        macros += inner_macros
        pieces.append(f'#line 1 "{f}"\n{inner}\n#line {line + 1} "{path}"')
    pieces.append(body[last:])
    return "".join(pieces), macros


_OPT_TAKES_VALUE = {"-I", "-D", "-U", "--include-path", "--define-macro", "--undefine-macro"}


def gxx_options(options) -> list[str]:
    """The NVRTC options g++ understands: include paths, macros, the C++ standard. Others
    (arch, fast-math, ptxas flags, ...) have no meaning on the CPU and are left out."""
    out, opts, i = [], list(options), 0
    while i < len(opts):
        o = opts[i]
        if o in _OPT_TAKES_VALUE and i + 1 < len(opts):
            o, i = o + "=" + opts[i + 1], i + 1
        for long, short in (("--include-path=", "-I"), ("--define-macro=", "-D"), ("--undefine-macro=", "-U")):
            if o.startswith(long):
                o = short + o[len(long):]
        if o.startswith(("-I=", "-D=", "-U=")):
            o = o[:2] + o[3:]
        if o.startswith(("-I", "-D", "-U")):
            out.append(o)
        elif o.startswith(("-std=", "--std=")):
            out.append("-std=" + o.split("=", 1)[1])
        i += 1
    return out


# ---- g++'s verdict ---------------------------------------------------------------------------------
_DIAG = re.compile(r"^(?P<file>[^\n:]+):(?P<line>\d+):\d+: (?P<kind>fatal error|error): (?P<msg>[^\n]*)$", re.M)
_REQUIRED_FROM = re.compile(r"^(?P<file>[^\n:]+):(?P<line>\d+):\d+:   required from ", re.M)
# headers a CUDA source may include that the emulator refuses on purpose, and why
_REFUSED_HEADERS = {
    "cuda/barrier": "asynchronous barriers", "cuda/pipeline": "asynchronous copies", "cuda_pipeline.h": "asynchronous copies",
    "cuda_awbarrier.h": "asynchronous barriers", "cooperative_groups/memcpy_async.h": "asynchronous copies",
    "texture_fetch_functions.h": "textures", "texture_indirect_functions.h": "textures",
    "surface_functions.h": "surfaces", "surface_indirect_functions.h": "surfaces",
}


def _emu_header(path: str) -> bool:
    return os.path.abspath(path).startswith(str(EMU_DIR) + os.sep)


def compile_error(filename: str, stderr: str) -> str:
    """What an EmuCompileError says: one line `file:line: what` for what the emulator refuses (its
    headers' error attributes and static_asserts, named at the user's line that led there) and for
    a header it does not have; g++'s own diagnostics for an error in the user's code."""
    first = _DIAG.search(stderr)
    if first:
        f, line, msg = first.group("file"), first.group("line"), first.group("msg")
        refused = re.search(r"declared with attribute error: (.*)", msg)
        if refused:  # g++ names the call's own line, also when it was inlined
            return f"{f}:{line}: {refused.group(1)}"
        missing = re.fullmatch(r"(.+): No such file or directory", msg)
        if first.group("kind") == "fatal error" and missing:
            name = missing.group(1)
            if name in _REFUSED_HEADERS:
                why = (f"{_REFUSED_HEADERS[name]} are not supported by the emulator (no hardware to model, or no meaning on "
                       "a CPU; see kernels/emu/README.md)")
            else:
                ours = sorted(str(p.relative_to(EMU_DIR / "include")) for p in (EMU_DIR / "include").rglob("*") if p.is_file())
                why = (f"no such header: the emulator provides {', '.join(ours)} (host-side headers are not needed: it "
                       "compiles device code, as NVRTC does) and it is not in the -I folders of options")
            return f"{f}:{line}: #include <{name}>: {why}"
        if _emu_header(f):  # deep in the emulator's headers: the innermost user line that led there
            chain = stderr.rfind("In instantiation of", 0, first.start())
            here = [m for m in _REQUIRED_FROM.finditer(stderr, max(chain, 0), first.start()) if not _emu_header(m.group("file"))]
            if here:
                msg = re.sub(r"^static assertion failed: ", "", msg)
                return f"{here[0].group('file')}:{here[0].group('line')}: {msg}"
    return f"emulator build of {filename} failed:\n{stderr[-6000:]}"


# ---- building ------------------------------------------------------------------------------------
_SAN_BUILD = {"racecheck": 1, "initcheck": 2, "profile": 3}  # EMU_SANITIZE of the instrumented builds
_GXX_VERSION = None
_build_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


def _gxx_version() -> str:
    global _GXX_VERSION
    if _GXX_VERSION is None:
        try:
            _GXX_VERSION = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise EmuCompileError(f"the emulator needs g++ (C++17) on PATH: {e}") from e
    return _GXX_VERSION


def cache_dir() -> Path:
    d = Path(os.environ.get("UNETCU_CACHE_DIR", Path.home() / ".cache" / "unetcu")) / "emu"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _header_files(include_dirs) -> list[Path]:
    files = sorted(f for f in EMU_DIR.rglob("*") if f.is_file() and f.suffix != ".md")
    for d in include_dirs:
        p = Path(d)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".cuh", ".h", ".hpp", ".inc"))
    return files


def build(source: str, options=(), name_expressions=(), filename: str = "kernel.cu"):
    """Compile `source` for the emulator (cached) and return (ctypes library, {name: symbol},
    {kernel name: not reachable by name, as on CuPy}, {global variable: symbol})."""
    linkage = kernel_linkage(source)
    # CuPy finds a kernel by its symbol: the plain name only for extern "C" ones; any other needs
    # its name expression (NVRTC then maps it to the mangled symbol)
    names = [n for n, c in linkage if c]
    mangled = {n for n, c in linkage if not c} - set(name_expressions)
    exprs = [e for e in name_expressions if e not in names]
    launchers = []
    symbols = {}
    for i, name in enumerate(names + exprs):
        sym = f"k{i}"
        symbols[name] = sym
        launchers.append(
            f'extern "C" __attribute__((visibility("default"))) const char* emu_sig_{sym}() '
            f'{{ static const std::string s = ::emu::signature(&{name}); return s.c_str(); }}\n'
            f'extern "C" __attribute__((visibility("default"))) int emu_launch_{sym}(const unsigned* g, '
            f'const unsigned* b, size_t sm, void** a, int order, unsigned long long seed, int nt, char* err, size_t el) '
            f'{{ return ::emu::launch("{name}", &{name}, g, b, sm, a, order, seed, nt, err, el); }}\n')
    src_path = os.path.abspath(filename) if os.path.exists(filename) else filename
    sanitize = sanitize_mode()
    gopts = gxx_options(options)
    user_dirs = [o[2:] for o in gopts if o.startswith("-I") and len(o) > 2]
    if os.path.exists(filename):
        user_dirs.append(os.path.dirname(os.path.abspath(filename)))
    emu_dirs = [str(EMU_DIR / "include"), str(EMU_DIR)]
    body, macros = expand_includes(source, src_path, user_dirs, emu_dirs)
    variables = {}
    for i, v in enumerate(global_variables(body)):
        variables[v] = f"g{i}"
        launchers.append(
            f'extern "C" __attribute__((visibility("default"))) void* emu_global_g{i}(size_t* bytes, char* info, size_t n) '
            f'{{ snprintf(info, n, "%s", ::emu::global_info<decltype({v})>().c_str()); *bytes = sizeof({v}); '
            f'return (void*)&{v}; }}\n')
    tu = (f'#line 1 "{src_path}"\n{body}\n' + "".join(f"#undef {m}\n" for m in macros) +
          '#include "emu_launch.h"\n' + "".join(launchers))
    # -fsanitize=shift-exponent: a shift by >= the width is reported at its line by the handler in
    # cuda_emu.h; the handler cannot be hidden (g++ declares it), -Bsymbolic binds each build to its own
    flags = ["-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-gnu-unique", "-fno-strict-aliasing",
             "-fsanitize=shift-exponent", "-Wl,-Bsymbolic", "-w", "-I", emu_dirs[0], "-I", emu_dirs[1],
             "-include", str(EMU_DIR / "cuda_emu.h")]
    if sanitize == "address":
        if not _asan_loaded():
            raise EmulatorError("an AddressSanitizer build needs libasan preloaded: run the program as "
                                "`unetcu asan python ...` (or LD_PRELOAD=$(g++ -print-file-name=libasan.so))")
        flags += ["-O1", "-gdwarf-4", "-fsanitize=address", "-fno-omit-frame-pointer", "-fsanitize=alignment"]
    elif sanitize in ("racecheck", "initcheck", "profile"):
        # g++'s ThreadSanitizer instrumentation, our handlers (emu_sanitize.h, emu_profile.h), no
        # TSan runtime; one OS thread runs the blocks
        flags += ["-O1", "-gdwarf-4", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0",
                  "-fsanitize=alignment", f"-DEMU_SANITIZE={_SAN_BUILD[sanitize]}"]
        if sanitize == "profile":  # keep a vector load one access (SRA would split a float4 into four)
            flags += ["-fno-tree-sra"]
    else:
        flags += ["-O2", "-fopenmp"]
    flags += gopts
    if os.path.exists(filename):
        flags += ["-I", os.path.dirname(os.path.abspath(filename))]
    include_dirs = [o[2:] for o in flags if o.startswith("-I") and len(o) > 2]
    include_dirs += [flags[i + 1] for i, o in enumerate(flags) if o == "-I"]
    h = hashlib.sha256()
    for part in (tu, "\0".join(flags), _gxx_version()):
        h.update(part.encode())
    for f in _header_files(include_dirs):
        h.update(str(f).encode())
        h.update(f.read_bytes())
    key = h.hexdigest()[:24]
    suffix = {None: "", "address": "-asan", "racecheck": "-race", "initcheck": "-init", "profile": "-prof"}[sanitize]
    so = cache_dir() / f"{Path(filename).stem}-{key}{suffix}.so"
    with _build_lock:
        if not so.exists():
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                cpp = Path(tmp) / "unit.cpp"
                cpp.write_text(tu)
                out = Path(tmp) / "unit.so"
                if sanitize in _SAN_BUILD:  # compile, then link without libtsan
                    obj = Path(tmp) / "unit.o"
                    r = subprocess.run(["g++", *[f for f in flags if f != "-shared"], "-c", str(cpp), "-o", str(obj)],
                                       capture_output=True, text=True)
                    if r.returncode == 0:
                        r = subprocess.run(["g++", "-shared", "-Wl,-Bsymbolic", "-Wl,-z,defs", str(obj), "-o", str(out)],
                                           capture_output=True, text=True)
                else:
                    r = subprocess.run(["g++", *flags, str(cpp), "-o", str(out)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise EmuCompileError(compile_error(filename, r.stderr))
                os.replace(out, so)
        lib = _loaded.get(str(so))
        if lib is None:
            lib = _loaded[str(so)] = ctypes.CDLL(str(so), mode=os.RTLD_LOCAL)
    return lib, symbols, mangled, variables


class CUDADriverError(RuntimeError):
    """What CuPy raises (cupy_backends.cuda.api.driver.CUDADriverError) when the driver cannot
    find a symbol; the message starts as CuPy's does, so code written against one passes on both."""


_NOT_FOUND = "CUDA_ERROR_NOT_FOUND: named symbol not found"


class EmuModule:
    """What `runtime.compile(..., engine="emu")` returns; shaped like cupy.RawModule."""

    def __init__(self, source: str, options=(), name_expressions=(), filename: str = "kernel.cu"):
        self.filename = filename
        self._source = source
        self._options = tuple(options)
        self._lib, self._symbols, self._mangled, self._variables = build(source, options, tuple(name_expressions), filename)
        self._kernels: dict[str, EmuKernel] = {}
        self._globals: dict[str, np.ndarray] = {}

    @property
    def kernel_names(self) -> list[str]:
        return list(self._symbols)

    def get_function(self, name: str) -> "EmuKernel":
        if name not in self._symbols:
            if name in self._mangled:
                why = (f'{self.filename}: kernel {name!r} is not extern "C", so its symbol is the C++-mangled name; '
                       'declare it extern "C" __global__ or list it in name_expressions')
            else:
                why = (f"{self.filename} has no kernel {name!r} (has: {', '.join(self._symbols) or 'none'}); "
                       "template kernels must be listed in name_expressions")
            raise CUDADriverError(f"{_NOT_FOUND} ({why})")
        if name not in self._kernels:
            k = EmuKernel(self._lib, self._symbols[name], name, param_names(self._source, name))
            k.source, k.options, k.filename = self._source, self._options, self.filename  # for the profiler's ptxas report
            self._kernels[name] = k
        return self._kernels[name]

    def get_global(self, name: str) -> np.ndarray:
        """A `__constant__` or `__device__` variable as a writable NumPy view of its storage (CuPy's
        get_global gives a device pointer to the same bytes). Its dtype and shape are the
        variable's; a vector type adds a last axis, any other type is seen as bytes."""
        if name not in self._variables:
            raise CUDADriverError(f"{_NOT_FOUND} ({self.filename} defines no __constant__ or __device__ variable "
                                  f"{name!r} at global scope; has: {', '.join(self._variables) or 'none'})")
        if name not in self._globals:
            fn = getattr(self._lib, f"emu_global_{self._variables[name]}")
            fn.restype = ctypes.c_void_p
            fn.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t]
            nbytes, info = ctypes.c_size_t(), ctypes.create_string_buffer(512)
            addr = fn(ctypes.byref(nbytes), info, len(info))
            raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes.value).from_address(addr))
            code, _, dims = info.value.decode().partition("|")
            shape = tuple(int(d) for d in dims.split(",") if d)
            m = _VEC_CODE.fullmatch(code)
            dtype, shape = (_DTYPES[m.group(1)], shape + (int(m.group(2)),)) if m else (_DTYPES.get(code), shape)
            view = raw
            if dtype is not None and int(np.prod(shape)) * np.dtype(dtype).itemsize == nbytes.value:
                view = raw.view(dtype).reshape(shape)
            self._globals[name] = view
        return self._globals[name]


_VEC_CODE = re.compile(r"([a-z]+\d+)x(\d)a(\d+)")


def _dims(v, what: str, name: str, limits) -> tuple[int, int, int]:
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or not all(isinstance(x, (int, np.integer)) for x in t):
        raise TypeError(f"{name}: {what} must be an int or a tuple of 1-3 ints, got {v!r}")
    t = tuple(int(x) for x in t) + (1,) * (3 - len(t))
    for x, lim in zip(t, limits):
        if not 1 <= x <= lim:
            raise ValueError(f"{name}: {what} {t} outside the device limits {limits}")
    return t


class EmuKernel:
    """One kernel; call it like cupy.RawKernel: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, lib, sym: str, name: str, params=()):
        self.name = name
        sig = getattr(lib, f"emu_sig_{sym}")
        sig.restype = ctypes.c_char_p
        text = sig().decode()
        self.signature = text.split(";") if text else []
        self._params = list(params) if len(params) == len(self.signature) else [None] * len(self.signature)
        for i, code in enumerate(self.signature):
            if code.startswith("?"):
                raise EmuCompileError(f"kernel {name}: parameter {self._what(i)} has type {code[1:]!r}, which the "
                                      "emulator cannot pass (CuPy passes arrays as pointers and NumPy scalars as "
                                      "numbers: use a pointer, or pass the fields as separate scalars)")
        self._so = lib._name
        self.source, self.options, self.filename = "", (), ""
        self._prof = getattr(lib, "emu_prof_begin", None)
        if self._prof is not None:
            self._prof.restype = None
            self._prof.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.c_int]
            self._prof_take = lib.emu_prof_take
            self._prof_take.restype = ctypes.c_size_t
            self._prof_take.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._san = getattr(lib, "emu_san_begin", None)
        if self._san is not None:
            self._san.restype = None
            self._san.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
            self._san_take = lib.emu_san_take
            self._san_take.restype = ctypes.c_size_t
            self._san_take.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._fn = getattr(lib, f"emu_launch_{sym}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                             ctypes.c_void_p, ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int,
                             ctypes.c_char_p, ctypes.c_size_t]
        self.max_dynamic_shared_size_bytes = DEFAULT_SHARED_LIMIT
        self._shift_take = lib.emu_shift_take
        self._shift_take.restype = ctypes.c_size_t
        self._shift_take.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

    def _report_shifts(self) -> None:
        buf = ctypes.create_string_buffer(1 << 16)
        if self._shift_take(buf, len(buf)):
            _shift_findings(self.name, self._so, buf.value.decode(errors="replace"))

    def _what(self, i: int) -> str:
        return f"{i} ({self._params[i]})" if self._params[i] else str(i)

    def _marshal(self, args) -> list:
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple of arrays and NumPy scalars")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments ({', '.join(self.signature)}), "
                            f"got {len(args)}")
        holders = []
        for i, (code, a) in enumerate(zip(self.signature, args)):
            if code.startswith("*"):
                const = code[1] == "c"
                base = code[2:] if const else code[1:]
                if a is None:  # a null pointer, as CuPy passes None
                    holders.append(ctypes.c_void_p(0))
                    continue
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {self._what(i)} is a pointer ({code}) and needs a NumPy array, "
                                    f"got {type(a).__name__}")
                vec = _VEC_CODE.fullmatch(base)
                if vec:  # a vector type: an array of its elements, aligned as the GPU's vector access needs
                    elem, align = vec.group(1), int(vec.group(3))
                    if a.dtype != _DTYPES[elem]:
                        raise TypeError(f"{self.name}: argument {self._what(i)} points to {elem}x{vec.group(2)} vectors "
                                        f"and needs an array of {np.dtype(_DTYPES[elem]).name}, got {a.dtype}")
                    if a.ctypes.data % align:
                        raise ValueError(f"{self.name}: argument {self._what(i)} points to {align}-byte aligned vectors but "
                                         f"the array's data is not {align}-byte aligned (cudaMalloc's is; use "
                                         "unetcu.engines.emu.aligned)")
                elif base != "void" and a.dtype != _DTYPES[base]:
                    raise TypeError(f"{self.name}: argument {self._what(i)} points to {base}, got an array of {a.dtype}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {self._what(i)} is not C-contiguous (the kernel would read it wrongly)")
                if not const and not a.flags.writeable:
                    raise ValueError(f"{self.name}: argument {self._what(i)} is read-only but the kernel takes a non-const pointer")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            else:
                want = _DTYPES[code]
                if not isinstance(a, np.generic) or a.dtype != want:
                    got = type(a).__name__ if not isinstance(a, np.generic) else str(a.dtype)
                    raise TypeError(f"{self.name}: argument {self._what(i)} must be a numpy.{np.dtype(want).name} scalar, got {got} "
                                    f"(a Python number would reach the GPU as a 64-bit value; wrap it: "
                                    f"np.{np.dtype(want).name}(x))")
                val = a.view(np.uint16).item() if code == "f16" else a.item()
                holders.append(_CTYPES[code](val))
        return holders

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None, **_ignored):
        g = _dims(grid, "grid", self.name, MAX_GRID)
        b = _dims(block, "block", self.name, MAX_BLOCK)
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"{self.name}: block {b} has more than {MAX_THREADS_PER_BLOCK} threads")
        limit = min(int(self.max_dynamic_shared_size_bytes), MAX_SHARED_OPTIN)
        if not 0 <= int(shared_mem) <= limit:
            raise ValueError(f"{self.name}: shared_mem={shared_mem} exceeds {limit} bytes "
                             "(set kernel.max_dynamic_shared_size_bytes to opt in, up to 227 KiB)")
        holders = self._marshal(args)
        ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        order, seed = get_order()
        err = ctypes.create_string_buffer(4096)
        from . import profile, sanitize
        weights, profiled = None, False
        if self._san is not None:  # racecheck / initcheck / profile build: tell it which memory is global
            arrays = [(a, self._params[i]) for i, a in enumerate(args) if isinstance(a, np.ndarray)]
            ranges, labels = sanitize.launch_ranges([a for a, _ in arrays], [n for _, n in arrays])
            buf = (ctypes.c_size_t * max(1, len(ranges)))(*ranges)
            mode = sanitize_mode()
            self._san(_SAN_BUILD[mode], ctypes.cast(buf, ctypes.c_void_p), len(ranges) // 3)
            if self._prof is not None:
                profiled = profile.wanted(self.name)
                weights = profile.sample_weights(g, profile.sample_size()) if profiled else None
                flat = [x for w in weights for x in w] if weights else [0.0]
                wbuf = (ctypes.c_double * len(flat))(*flat)
                self._prof(ctypes.cast(wbuf, ctypes.c_void_p), (ctypes.c_uint * 3)(*g), int(weights is not None))
        try:
            rc = self._fn((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), int(shared_mem), ctypes.cast(ptrs, ctypes.c_void_p),
                          ORDERS[order], seed, num_threads(), err, len(err))
        finally:
            self._report_shifts()
            if profiled:
                counts = ctypes.create_string_buffer(1 << 16)
                need = self._prof_take(counts, len(counts))
                if need >= len(counts):
                    counts = ctypes.create_string_buffer(need + 1)
                    self._prof_take(counts, len(counts))
            if self._san is not None:
                out = ctypes.create_string_buffer(1 << 16)
                self._san_take(out, len(out))
                if out.value:
                    sanitize.report_launch(self.name, self._so, out.value.decode(errors="replace"), labels)
        if profiled and rc == 0:
            profile.add(profile.launch_record(self, g, b, int(shared_mem), args, counts.value.decode(),
                                              [hi - lo for lo, hi in zip(ranges[0::3], ranges[1::3])], weights))
        if rc != 0:
            msg = err.value.decode(errors="replace")
            if sanitize.tool():
                sanitize.report_error(self.name, msg)
            raise EmulatorError(msg)


_shift_warned: set = set()


def _shift_findings(kernel: str, so: str, text: str) -> None:
    """The out-of-range shifts of a launch (emu_shift_take's lines): under `unetcu sanitize` a
    finding each; otherwise a warning on stderr, once per site in the process."""
    import sys
    from . import sanitize
    for row in text.splitlines():
        file, line, op, count, bits, typ, hits, tid, bid, _ = row.split("|")
        what = "is negative" if count.startswith("-") else "is not below the width"
        gpu = "0" if op == "<<" or not typ.startswith(("int", "long")) else "0 or -1 (the sign)"
        if sanitize.tool():
            sanitize.emit(f"Undefined shift: {op} by {count} of a {bits}-bit '{typ}': the count {what}\n"
                          f"    at {file}:{line} in {kernel}\n"
                          f"    by thread ({tid}) in block ({bid}) ({hits} such shift{'s' if hits != '1' else ''} at this "
                          "line in this launch)\n"
                          f"    C++ leaves it undefined; the GPU clamps the count, so the emulator computed {gpu}, as "
                          "the GPU does")
        elif (so, file, line, op) not in _shift_warned:
            _shift_warned.add((so, file, line, op))
            print(f"unetcu emulator: warning: {file}:{line}: {op} by {count} of a {bits}-bit '{typ}' in kernel {kernel} "
                  f"(thread ({tid}), block ({bid})): the count {what}, which C++ leaves undefined; computed as the GPU "
                  f"does ({gpu}: its shift clamps the count, x86's would take it modulo {bits}); "
                  "`unetcu sanitize` reports it as an error", file=sys.stderr)


def aligned(a: np.ndarray, align: int = 256) -> np.ndarray:
    """A C-contiguous copy of `a` whose data starts on an `align`-byte boundary, as cudaMalloc's
    does (NumPy only promises 16 bytes; vector loads and wmma need more)."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
