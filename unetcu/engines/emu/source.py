"""The emulator's source work, pure text: what a .cu file declares (kernels and their linkage,
parameter names, global variables) and the edits that let g++ compile it as CUDA does (dynamic
shared memory, poisoned static shared memory, shifts the GPU clamps, user headers inlined).
No g++ and no ctypes here: gxx.py builds what rewrite/expand_includes return.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


class EmuCompileError(RuntimeError):
    """g++ rejected the emulated source; the message holds its diagnostics. (Here, not in gxx.py:
    rewrite refuses some sources before g++ sees them.)"""


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


@dataclass
class TranslationUnit:
    """What g++ compiles for one source, and how to reach what is in it."""
    text: str                          # the translation unit (see the package docstring)
    symbols: dict[str, str]            # kernel name (or name expression) -> its exports' suffix kN
    mangled: set                       # kernels CuPy cannot find by name (not extern "C", no expression)
    variables: dict[str, str]          # __constant__/__device__ variable -> its accessor's suffix gN
    params: dict[str, list]            # kernel -> parameter names (param_names), for messages and the profiler


def translation_unit(source: str, src_path: str, user_dirs, emu_dirs, name_expressions=()) -> TranslationUnit:
    """The source as one C++ translation unit for g++: its includes expanded where they need
    rewriting, then emu_launch.h and the exported launchers and accessors."""
    linkage = kernel_linkage(source)
    # CuPy finds a kernel by its symbol: the plain name only for extern "C" ones; any other needs
    # its name expression (NVRTC then maps it to the mangled symbol)
    names = [n for n, c in linkage if c]
    mangled = {n for n, c in linkage if not c} - set(name_expressions)
    names += [e for e in name_expressions if e not in names]
    body, macros = expand_includes(source, src_path, user_dirs, emu_dirs)
    found = global_variables(body)
    text = (f'#line 1 "{src_path}"\n{body}\n' + "".join(f"#undef {m}\n" for m in macros) +
            '#include "emu_launch.h"\n' + "".join(_kernel_exports(names) + _variable_exports(found)))
    return TranslationUnit(text, {n: f"k{i}" for i, n in enumerate(names)}, mangled,
                           {v: f"g{i}" for i, v in enumerate(found)}, {n: param_names(source, n) for n in names})


def _kernel_exports(names) -> list[str]:
    """Per kernel, two exported functions: its parameter types (emu_sig_kN, for the argument checks)
    and its launcher (emu_launch_kN). Kernels are reached through these, never by their symbol."""
    return [f'extern "C" __attribute__((visibility("default"))) const char* emu_sig_k{i}() '
            f'{{ static const std::string s = ::emu::signature(&{name}); return s.c_str(); }}\n'
            f'extern "C" __attribute__((visibility("default"))) int emu_launch_k{i}(const unsigned* g, '
            f'const unsigned* b, size_t sm, void** a, int order, unsigned long long seed, int nt, char* err, size_t el) '
            f'{{ return ::emu::launch("{name}", &{name}, g, b, sm, a, order, seed, nt, err, el); }}\n'
            for i, name in enumerate(names)]


def _variable_exports(variables) -> list[str]:
    """Per global variable, an accessor (emu_global_gN): its address, size and type (get_global)."""
    return [f'extern "C" __attribute__((visibility("default"))) void* emu_global_g{i}(size_t* bytes, char* info, size_t n) '
            f'{{ snprintf(info, n, "%s", ::emu::global_info<decltype({v})>().c_str()); *bytes = sizeof({v}); '
            f'return (void*)&{v}; }}\n'
            for i, v in enumerate(variables)]
