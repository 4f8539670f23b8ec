"""
The answer grader of eval_math.py, in a module of its own so that its sympy worker process starts without torch.

    from grader import extract_answer, grade, is_equiv
    grade("\\dfrac{1}{2}", "0.5")   # (True, "numeric")

Grading: extract the final answer (last \\boxed{...}, else "Final Answer:", "The answer is", "#### N", else the
last number), normalise both strings (units, \\text, \\dfrac, spacing, ...), and if they still differ test
mathematical equivalence with sympy. sympy can hang on innocent-looking input (9^{9^{9^9}}), so every sympy call
runs in a worker process that is killed after `timeout` seconds; cheap checks run in-process first.
"""
import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
from collections import Counter
from fractions import Fraction

# ============================================================================= answer extraction

def _braced(s, i):
    """s[i] == "{": (its content, the index after the matching "}")."""
    depth = 0
    for j in range(i, len(s)):
        depth += (s[j] == "{") - (s[j] == "}")
        if depth == 0:
            return s[i + 1:j], j + 1
    raise ValueError(f"unbalanced braces in {s!r}")


def _last_boxed(text):
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    rest = text[j:].lstrip()
    if rest.startswith("{"):
        try:
            return _braced(rest, 0)[0]
        except ValueError:
            return None  # a generation cut off inside the box
    m = re.match(r"\s+([^\s$]+)", text[j:])  # "\boxed 5"
    return m.group(1) if m else None


# a lookahead, so that markers may overlap: in "Final Answer: The final answer is $X$. I hope it is correct." (what
# MATH-tuned models write) the answer starts after the inner marker, not after the outer one
_MARKER = re.compile(r"(?=(Final Answer:|[Tt]he (?:final )?answer is:?|####))")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MATH_SPAN = re.compile(r"\$\$?((?:\\.|[^$\\])+)\$\$?")  # "$...$"; an escaped \$ inside does not close it


def _stated(line, gsm8k):
    """The answer in the rest of a marker's line: its leading $...$, else the line less a closing sentence."""
    a = line.strip()
    m = _MATH_SPAN.match(a)
    if m:
        a = m.group(1)
    else:
        a = re.sub(r"\s*I hope it is correct\.?\s*$", "", a)
    a = a.strip().rstrip(".").strip()
    return a.replace(",", "") if gsm8k else a  # GSM8K: "#### 1,000"


def extract_answer(text):
    """The final answer a solution states, or None."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    # the last stated marker wins: a model may write "The answer is 5." and then "#### 5"
    for m in reversed(list(_MARKER.finditer(text))):
        a = _stated(text[m.end(1):].split("\n", 1)[0], m.group(1) == "####")
        if a:
            return a
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None

# ============================================================================= normalisation

_UNIT = (r"(?:square |sq\.? |cubic )?(?:units?|cm|centimeters?|mm|m|meters?|km|kilometers?|inch(?:es)?|in|feet|foot|"
         r"ft|yards?|yd|miles?|mph|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|degrees?|"
         r"dollars?|cents?|pounds?|lbs?|ounces?|oz|grams?|g|kg|liters?|gallons?|cups?|students?|people|points?|"
         r"ways?|marbles?|coins?|eggs?|apples?|books?|outfits?|handshakes?|games?|times?|percent(?:age)?|pct)")
_TEXT = r"\\(?:text|textbf|textit|textnormal|mbox|mathrm|mathbf|operatorname)\s*"
_WORDS = r"\\(?:text|textbf|textit|textnormal|mbox)\s*\{[^{}]*[a-zA-Z]{2}"  # \text{even}: prose, not symbols


_RELATIONS = {"lt": "<", "gt": ">", "ge": "\\ge ", "geq": "\\ge ", ">=": "\\ge ", "le": "\\le ", "leq": "\\le ",
              "<=": "\\le ", "ne": "\\ne ", "neq": "\\ne ", "!=": "\\ne "}  # one spelling of each relation


def normalize(s):
    """A canonical string for an answer: presentation (units, spacing, \\dfrac, $...$) removed."""
    return _normalize(s)[0]


def _normalize(s):
    """(normalize(s), whether s is words: \\text{...} with a word left after units are dropped)."""
    s = str(s).strip().replace("\n", " ")
    s = re.sub(r"\\(?:left|right|displaystyle)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))", ",", s)  # 11,\! 111: a thousands separator, space or not
    s = re.sub(r"\\!|\\quad|\\qquad", "", s)
    s = re.sub(r"(?<!\\)\\[,;: ]|~", " ", s)  # not the row break \\\\ of a matrix
    s = re.sub(r"\\[dtc]frac", r"\\frac", s).replace("{,}", ",")
    s = re.sub(r"\\[dt]binom", r"\\binom", s)
    s = re.sub(r"\\(?:lt|gt|ge|le|ne)(?:q)?(?![a-zA-Z])|[<>!]=", lambda m: _RELATIONS[m.group(0).strip("\\")], s)
    s = re.sub(r"\\log_\s*([0-9a-zA-Z])", r"\\log_{\1}", s)  # \log_2 8: the base is one character
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|°|\\degree", "", s)
    s = re.sub(r"\\?[%$]", "", s)
    s = re.sub(rf"(?<=\S)\s*{_TEXT}\{{\s*{_UNIT}\s*\}}(\^\{{?[23]\}}?)?\s*$", "", s)  # 5\text{ cm}^2
    words = bool(re.search(_WORDS, s))
    while re.search(_TEXT + r"\{([^{}]*)\}", s):
        s = re.sub(_TEXT + r"\{([^{}]*)\}", r"\1", s)
    s = re.sub(rf"(?<=[\d}}).)])\s+{_UNIT}(\^\{{?[23]\}}?)?\s*$", "", s)   # 5 cm
    s = s.strip().rstrip(".").strip()
    if s.count("=") == 1:  # x = 5 -> 5, 2x+1 = y -> 2x+1 (only when one side is a single letter)
        left, right = (t.strip() for t in s.split("="))
        s = right if re.fullmatch(r"[a-zA-Z]", left) else left if re.fullmatch(r"[a-zA-Z]", right) else s
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)  # x \in [1, 2]
    s = s.lstrip("+") if not s.startswith("+-") else s
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d*)?", s):
        s = s.replace(",", "")  # thousands separators, never tuples: (1,2) does not match
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # .5 -> 0.5
    s = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", s)  # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac\s*(\w)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    # spaces go, except one that ends a command before a letter: x\cdot x is not the unknown command \cdotx
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\0", s).replace(" ", "").replace("\0", " ")
    s = re.sub(r"^\(([A-E])\)$", r"\1", s)  # multiple choice: (C) -> C
    return s, words

# ============================================================================= structure: tuples, intervals, sets, matrices

_OPEN, _CLOSE = "([{", ")]}"


def _split_top(s, sep):
    """Split s at sep where no bracket is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in _OPEN:
            depth += 1
        elif s[i] in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    return parts + [s[start:]]


def _tuple(s):
    """(open bracket, elements, close bracket) when s is one bracketed comma list: (1,2), [0,1), \\{1,2\\}."""
    if s.startswith("\\{") and s.endswith("\\}"):
        s, o, c = s[2:-2], "{", "}"
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        depth = 0
        for i, ch in enumerate(s):
            depth += (ch in _OPEN) - (ch in _CLOSE)
            if depth == 0 and i < len(s) - 1:
                return None  # (a)(b): the first bracket closes early
        s, o, c = s[1:-1], s[0], s[-1]
    else:
        return None
    items = _split_top(s, ",")
    return (o, items, c) if len(items) > 1 or o == "{" else None


def _matrix(s):
    """The rows of a matrix, also written as \\left[\\begin{array}{cc}...\\end{array}\\right] or wrapped in (...)."""
    m = re.fullmatch(r"([(\[]?)\\begin\{([pbvBV]?matrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\2\}([)\]]?)", s)
    if not m or bool(m.group(1)) != bool(m.group(4)):
        return None
    return [r.split("&") for r in m.group(3).split("\\\\") if r]  # a trailing row break adds no row


_CHEAP_PAIRS = 64  # beyond this many unmatched elements the in-process check hands the pairing to the worker


def _same_multiset(xs, ys, leaf):
    """xs and ys pair off one to one under _equiv. Equal strings pair at once and plain numbers by sorting, so only
    what is left needs the quadratic search; in-process that search is capped, in the worker the timeout bounds it."""
    if len(xs) != len(ys):
        return False
    cx, cy = Counter(xs), Counter(ys)
    xs, ys = list((cx - cy).elements()), list((cy - cx).elements())
    nx, ny = [_number(x) for x in xs], [_number(y) for y in ys]
    if None not in nx and None not in ny:
        return all(_close(x, y) for x, y in zip(sorted(nx), sorted(ny)))
    if leaf is _cheap_leaf and len(xs) > _CHEAP_PAIRS:
        raise _Undecided
    left = list(ys)
    for x in xs:
        j = next((j for j, y in enumerate(left) if _equiv(x, y, leaf)), None)
        if j is None:
            return False
        del left[j]
    return not left


def _equiv(a, b, leaf):
    """Equivalence of two normalised answers; leaf(a, b) compares single expressions."""
    if a == b:
        return True
    ma, mb = _matrix(a), _matrix(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and [len(r) for r in ma] == [len(r) for r in mb]
                and all(leaf(x, y) for ra, rb in zip(ma, mb) for x, y in zip(ra, rb)))
    ua, ub = _split_top(a, "\\cup"), _split_top(b, "\\cup")
    if len(ua) > 1 or len(ub) > 1:  # unions of intervals, piece by piece
        return len(ua) == len(ub) and all(_equiv(x, y, leaf) for x, y in zip(ua, ub))
    ta, tb = _tuple(a), _tuple(b)
    la, lb = _split_top(a, ","), _split_top(b, ",")
    if (ta and ta[0] != "{") or (tb and tb[0] != "{"):  # tuples and intervals: brackets and order matter
        return (ta is not None and tb is not None and (ta[0], ta[2]) == (tb[0], tb[2]) and len(ta[1]) == len(tb[1])
                and all(leaf(x, y) for x, y in zip(ta[1], tb[1])))
    if ta or tb or len(la) > 1 or len(lb) > 1:  # sets and lists of solutions: order does not matter
        return _same_multiset(ta[1] if ta else la, tb[1] if tb else lb, leaf)
    return leaf(a, b)

# ============================================================================= leaves: cheap in-process, sympy in the worker

class _Undecided(Exception):
    pass


def _number(s):
    """A plain number (42, -0.5, 3/4, \\frac{3}{4}, mixed 2\\frac{1}{4}) as an exact Fraction, else None."""
    m = re.fullmatch(r"(-?)(\d*)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    try:
        if m:
            return (int(m.group(2) or 0) + Fraction(int(m.group(3)), int(m.group(4)))) * (-1 if m.group(1) else 1)
        if re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() accepts
        pass
    return None


def _close(x, y, rel=1e-6):
    return abs(x - y) <= rel * max(abs(x), abs(y), 1e-9)


def _cheap_leaf(a, b):
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is None or y is None:
        raise _Undecided
    return _close(x, y)


_COMMANDS = {"cdot": "*", "times": "*", "div": "/", "pi": "pi", "infty": "oo", "ln": "log", "log": "log",
             "exp": "exp", "sin": "sin", "cos": "cos", "tan": "tan", "sec": "sec", "csc": "csc", "cot": "cot",
             "arcsin": "asin", "arccos": "acos", "arctan": "atan"}
_GREEK = set("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma "
             "tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega".split())


_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-zA-Z]|\\[a-zA-Z]+")


def _operand(s, i):
    """The argument written at s[i] (spaces skipped): {...}, (...), a number, a letter or a command."""
    while i < len(s) and s[i] == " ":
        i += 1
    if s.startswith("{", i):
        return _braced(s, i)
    if s.startswith("(", i):
        depth = 0
        for j in range(i, len(s)):
            depth += (s[j] == "(") - (s[j] == ")")
            if depth == 0:
                return s[i + 1:j], j + 1
        raise ValueError(f"unbalanced parentheses in {s!r}")
    m = _TOKEN.match(s, i)
    if not m:
        raise ValueError(f"no operand at {s[i:i + 12]!r}")
    return m.group(0), m.end()


def _latex_to_python(s):
    """Our small LaTeX -> sympy-syntax converter (\\frac, \\sqrt[n], ^, \\cdot, \\pi, ...); anything else
    (\\le, \\cup, \\text ...) is a ValueError, never a silently different expression."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            a, i = _braced(s, i + 5)
            b, i = _braced(s, i)
            out.append(f"(({_latex_to_python(a)})/({_latex_to_python(b)}))")
        elif s.startswith("\\sqrt", i):
            i, n = i + 5, "2"
            if s.startswith("[", i):
                j = s.index("]", i)
                n, i = s[i + 1:j], j + 1
            a, i = _braced(s, i)
            out.append(f"(({_latex_to_python(a)})**(1/({_latex_to_python(n)})))")
        elif s.startswith("\\log_", i):  # \log_{b} x = log(x) / log(b)
            b, i = _operand(s, i + 5)
            a, i = _operand(s, i)
            out.append(f"(log({_latex_to_python(a)})/log({_latex_to_python(b)}))")
        elif s.startswith("\\binom", i):
            a, i = _operand(s, i + 6)
            b, i = _operand(s, i)
            out.append(f"binomial({_latex_to_python(a)}, {_latex_to_python(b)})")
        elif s[i] == "^" and s.startswith("{", i + 1):
            a, i = _braced(s, i + 1)
            out.append(f"**({_latex_to_python(a)})")
        elif s[i] == "\\":
            m = re.match(r"\\([a-zA-Z]+)", s[i:])
            if not m or (m.group(1) not in _COMMANDS and m.group(1) not in _GREEK):
                raise ValueError(f"no sympy form for {s[i:i + 12]!r}")
            out.append(f" {_COMMANDS.get(m.group(1), m.group(1))} ")
            i += len(m.group(0))
        else:
            out.append({"^": "**", "{": "(", "}": ")"}.get(s[i], s[i]))
            i += 1
    return "".join(out)


def _to_sympy(s):
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations, implicit_multiplication_application
    names = {c: sympy.Symbol(c) for c in "ABCDFGHJKLMNOPQRSTUVWXYZ"}  # not sympy's S, N, Q, O ...
    names.update(e=sympy.E, i=sympy.I)
    return parse_expr(_latex_to_python(s), local_dict=names,
                      transformations=standard_transformations + (implicit_multiplication_application,))


def _sympy_leaf(a, b, failed):
    import sympy
    if a == b:
        return True
    try:
        if "=" in a or "=" in b:
            if a.count("=") != 1 or b.count("=") != 1:
                return False
            # the same equation up to a nonzero constant factor: (l1 - r1) / (l2 - r2) is a nonzero number
            ea, eb = (_to_sympy(l) - _to_sympy(r) for l, r in (a.split("="), b.split("=")))
            if ea.has(sympy.zoo, sympy.nan) or eb.has(sympy.zoo, sympy.nan):
                return False
            ratio = sympy.simplify(ea / eb)
            return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
        x, y = _to_sympy(a), _to_sympy(b)
        if x.has(sympy.zoo, sympy.nan) or y.has(sympy.zoo, sympy.nan):
            return False  # a division by zero: 1/0 and 2/0 are both zoo to sympy, but neither is an answer
        if x == y:
            return True
        if x.is_number and y.is_number and x.is_finite and y.is_finite:
            cx, cy = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
            return _close(cx, cy)
        return sympy.simplify(x - y) == 0
    except Exception:  # sympy raises many types on unparsable input
        failed.append((a, b))
        return False


def _sympy_grade(a, b):
    """Runs in the worker: (equivalent, reason)."""
    failed = []
    ok = _equiv(a, b, lambda x, y: _sympy_leaf(x, y, failed))
    return ok, "sympy" if ok or not failed else "parse error"


def _serve():
    """The worker's loop: one JSON [a, b] per line on stdin, one JSON [equivalent, reason] per line back."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print inside sympy goes to stderr, never into the answers
    import sympy  # noqa: F401  (before saying ready, so the first comparison's clock is fair)
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:  # ends when the parent closes the pipe or exits
        a, b = json.loads(line)
        try:
            res = _sympy_grade(a, b)
        except Exception:
            res = False, "parse error"
        out.write(json.dumps(res) + "\n")
        out.flush()


_worker, _worker_ready, _worker_lock = None, False, threading.Lock()


def _start_worker():
    """Start a worker without waiting for it: after a timeout it imports sympy while the caller goes on."""
    global _worker, _worker_ready
    # grader.py imports neither torch nor the model: a (re)started worker is ready in the time sympy takes
    code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
           "import grader; grader._serve()"
    _worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, bufsize=1)
    _worker_ready = False


def _ready_worker():
    global _worker_ready
    if _worker is None or _worker.poll() is not None:
        _stop_worker()
        _start_worker()
    if not _worker_ready:
        if _readline(_worker, 300) != "ready\n":
            _stop_worker()
            raise RuntimeError("the sympy grader process did not start")
        _worker_ready = True


def _stop_worker():
    global _worker
    if _worker is not None:
        _worker.kill()
        _worker.wait()
        _worker.stdin.close()
        _worker.stdout.close()
        _worker = None


atexit.register(_stop_worker)


def _readline(p, timeout):
    # select() waits on the pipe with a deadline; a plain readline() could wait forever
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    return p.stdout.readline() if ready else None


def _ask_worker(a, b, timeout):
    """One sympy comparison in the worker process. Killing the process is the only hard limit that works from any
    thread (signal.alarm only works in the main thread); a fresh worker is started at once. A plain subprocess,
    not multiprocessing: it never re-imports the caller's __main__, so any script can grade."""
    with _worker_lock:
        _ready_worker()
        _worker.stdin.write(json.dumps([a, b]) + "\n")
        _worker.stdin.flush()
        line = _readline(_worker, timeout)
        if line:
            return tuple(json.loads(line))
        _stop_worker()
        _start_worker()  # its start-up overlaps whatever the caller does before the next comparison
        return False, "timeout"


def grade(pred, gold, timeout=5.0):
    """(correct, reason): reason is exact | normalised | numeric | sympy | timeout | no answer | parse error | wrong."""
    if pred is None or not str(pred).strip():
        return False, "no answer"
    if str(pred).strip() == str(gold).strip():
        return True, "exact"
    (a, words_a), (b, words_b) = _normalize(pred), _normalize(gold)
    if a == b or (a.isalpha() and a.lower() == b.lower()):
        return True, "normalised"
    if words_a or words_b:  # words compare as words: to sympy "even" and "neve" are the same product of letters
        return a.lower() == b.lower(), "normalised" if a.lower() == b.lower() else "wrong"
    try:
        return (True, "numeric") if _equiv(a, b, _cheap_leaf) else (False, "wrong")
    except _Undecided:
        pass
    ok, reason = _ask_worker(a, b, timeout)
    return ok, reason if ok or reason != "sympy" else "wrong"


def is_equiv(pred, gold, timeout=5.0):
    return grade(pred, gold, timeout)[0]
