"""
Few-shot evaluation on MATH / GSM8K-shaped jsonl (method.md, Evaluation), and the answer grader.

    python eval_math.py --ckpt=runs/x/m0/ckpt.pt --data=runs/x/data/eval.jsonl --exemplars=runs/x/data/exemplars.jsonl
    torchrun --nproc_per_node=8 eval_math.py --ckpt=... --data=../shared/data/gsm8k/test.jsonl --n_shot=8

Grading: extract the final answer (last \\boxed{...}, else "Final Answer:", "The answer is", "#### N", else the
last number), normalise both strings (units, \\text, \\dfrac, spacing, ...), and if they still differ test
mathematical equivalence with sympy. sympy can hang on innocent-looking input (9^{9^{9^9}}), so every sympy call
runs in a worker process that is killed after `timeout` seconds; cheap checks run in-process first.
"""
import atexit
import math
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import nullcontext
from fractions import Fraction

import torch

from configurator import apply, defaults_of, parse_args
from data.files import read_jsonl, write_json, write_jsonl
from data.latent import latent_eval_prompt, raw_eval_prompt, show
from data.tokenizer import get_tokenizer
from model import load_checkpoint

# -----------------------------------------------------------------------------
ckpt = ""                 # a checkpoint of train.py (ckpt["latent"] picks the prompt style)
data = ""                 # MATH-shaped (problem, solution[, answer]) or GSM8K-shaped (question, answer) jsonl
exemplars = ""            # few-shot rows of the same shapes ("" = GSM8K's sibling train.jsonl)
n_shot = 4
style = "auto"            # auto | raw | latent
max_new_tokens = 512
batch_size = 64
limit = 0                 # 0 = every problem
out_dir = ""              # where results.json and problems.jsonl go ("" = not written)
device = "auto"
timeout = 5.0             # seconds per sympy comparison
# -----------------------------------------------------------------------------
DEFAULTS = defaults_of(globals())

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


_MARKER = re.compile(r"Final Answer:[ \t]*(.*)|[Tt]he (?:final )?answer is:?[ \t]*(.*)|####[ \t]*(.*)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text):
    """The final answer a solution states, or None."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    # the last stated marker wins: a model may write "The answer is 5." and then "#### 5"
    for m in reversed(list(_MARKER.finditer(text))):
        a = next(g for g in m.groups() if g is not None).strip().rstrip(".").strip()
        if len(a) > 1 and a[0] == a[-1] == "$":
            a = a[1:-1].strip()
        if m.group(3) is not None:
            a = a.replace(",", "")  # GSM8K: "#### 1,000"
        if a:
            return a
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None

# ============================================================================= normalisation

_UNIT = (r"(?:square |sq\.? |cubic )?(?:units?|cm|centimeters?|mm|m|meters?|km|kilometers?|inch(?:es)?|in|feet|foot|"
         r"ft|yards?|yd|miles?|mph|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|degrees?|"
         r"dollars?|cents?|pounds?|lbs?|ounces?|oz|grams?|g|kg|liters?|gallons?|cups?|students?|people|points?|"
         r"ways?|marbles?|coins?|eggs?|apples?|books?|outfits?|handshakes?|games?|times?|percent)")
_TEXT = r"\\(?:text|textbf|textit|textnormal|mbox|mathrm|mathbf|operatorname)\s*"


def normalize(s):
    """A canonical string for an answer: presentation (units, spacing, \\dfrac, $...$) removed."""
    s = str(s).strip().replace("\n", " ")
    s = re.sub(r"\\(?:left|right|displaystyle)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\!|\\quad|\\qquad", "", s)
    s = re.sub(r"(?<!\\)\\[,;: ]|~", " ", s)  # not the row break \\\\ of a matrix
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("{,}", ",")
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|°|\\degree", "", s)
    s = re.sub(r"\\?[%$]", "", s)
    s = re.sub(rf"(?<=\S)\s*{_TEXT}\{{\s*{_UNIT}\s*\}}(\^\{{?[23]\}}?)?\s*$", "", s)  # 5\text{ cm}^2
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
    s = s.replace(" ", "")
    s = re.sub(r"^\(([A-E])\)$", r"\1", s)  # multiple choice: (C) -> C
    return s

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
    m = re.fullmatch(r"\\begin\{[pbvBV]?matrix\}(.*)\\end\{[pbvBV]?matrix\}", s)
    return [r.split("&") for r in m.group(1).split("\\\\") if r] if m else None


def _same_multiset(xs, ys, leaf):
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
            ratio = sympy.simplify(ea / eb)
            return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
        x, y = _to_sympy(a), _to_sympy(b)
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


_worker, _worker_lock = None, threading.Lock()


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
    thread (signal.alarm only works in the main thread); the next call starts a fresh worker. A plain subprocess,
    not multiprocessing: it never re-imports the caller's __main__, so any script can grade."""
    global _worker
    with _worker_lock:
        if _worker is None or _worker.poll() is not None:
            _stop_worker()
            code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
                   "import eval_math; eval_math._serve()"
            _worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, bufsize=1)
            if _readline(_worker, 300) != "ready\n":
                _stop_worker()
                raise RuntimeError("the sympy grader process did not start")
        _worker.stdin.write(json.dumps([a, b]) + "\n")
        _worker.stdin.flush()
        line = _readline(_worker, timeout)
        if line:
            return tuple(json.loads(line))
        _stop_worker()
        return False, "timeout"


def grade(pred, gold, timeout=5.0):
    """(correct, reason): reason is exact | normalised | numeric | sympy | timeout | no answer | parse error | wrong."""
    if pred is None or not str(pred).strip():
        return False, "no answer"
    if str(pred).strip() == str(gold).strip():
        return True, "exact"
    a, b = normalize(pred), normalize(gold)
    if a == b or (a.isalpha() and a.lower() == b.lower()):
        return True, "normalised"
    try:
        return (True, "numeric") if _equiv(a, b, _cheap_leaf) else (False, "wrong")
    except _Undecided:
        pass
    ok, reason = _ask_worker(a, b, timeout)
    return ok, reason if ok or reason != "sympy" else "wrong"


def is_equiv(pred, gold, timeout=5.0):
    return grade(pred, gold, timeout)[0]

# ============================================================================= data

def load_rows(path):
    """MATH-shaped (problem, solution[, answer]) or GSM8K-shaped (question, answer "... #### N") jsonl ->
    dicts with problem, gold, solution, thought, raw_solution and the breakdown fields; errors name path:line."""
    out = []
    for n, r in read_jsonl(path):
        if "question" in r:  # GSM8K: the reasoning, then "#### N"; <<2*3=6>> are calculator annotations
            if "####" not in str(r.get("answer", "")):
                raise ValueError(f"{path}:{n}: a GSM8K row needs an 'answer' ending in '#### N'")
            work, gold = r["answer"].rsplit("####", 1)
            gold = gold.strip().replace(",", "")
            text = re.sub(r"<<[^>]*>>", "", work).strip() + f"\nThe answer is {gold}."
            row = dict(kind="gsm8k", problem=r["question"], gold=gold, solution=text, thought=text, raw_solution=text)
        elif "problem" in r:
            sol = r.get("solution")
            gold = r.get("answer", extract_answer(sol) if sol else None)
            if gold is None or not str(gold).strip():
                raise ValueError(f"{path}:{n}: no 'answer', and no \\boxed answer in 'solution'")
            gold = str(gold)
            row = dict(kind="math", problem=r["problem"], gold=gold, solution=sol, thought=r.get("thought", sol or gold),
                       raw_solution=r.get("raw_solution", sol or f"Final Answer: {gold}"))
        else:
            raise ValueError(f"{path}:{n}: no 'problem' (MATH) or 'question' (GSM8K) field")
        row.update({k: r[k] for k in ("subject", "level", "family") if k in r})
        row["id"] = r.get("unique_id", r.get("id", len(out)))
        out.append(row)
    return out


def wilson(k, n, z=1.96):
    """95% Wilson score interval of k successes in n."""
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)

# ============================================================================= evaluation

def evaluate(ckpt, data, exemplars=None, n_shot=4, style="auto", max_new_tokens=512, batch_size=64, limit=None,
             out_dir=None, device="auto", timeout=5.0):
    """Greedy few-shot accuracy of a checkpoint on a problem file. Returns the summary dict (every rank)."""
    t0 = time.time()
    dist = torch.distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    rows = load_rows(data)[:limit or None]
    if not rows:
        raise ValueError(f"{data}: no problems")
    if not exemplars:  # only GSM8K has a default: the first problems of its own train.jsonl
        sibling = os.path.join(os.path.dirname(os.path.abspath(data)), "train.jsonl")
        if rows[0]["kind"] != "gsm8k" or not os.path.exists(sibling):
            raise ValueError(f"{data}: no exemplars given (a jsonl of solved problems in the same shape); only "
                             f"GSM8K-shaped data defaults to a train.jsonl beside it ({sibling})")
        exemplars = sibling
    shots = load_rows(exemplars)[:n_shot]

    if device == "auto":
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    model, ck = load_checkpoint(ckpt, device)
    model.eval()
    tok = get_tokenizer(ck["tokenizer"])
    style = ("latent" if ck.get("latent") else "raw") if style == "auto" else style
    if style not in ("raw", "latent"):
        raise ValueError(f"style must be auto, raw or latent, got {style!r}")

    def prompt_for(problem, shots):
        if style == "raw":
            return raw_eval_prompt(tok, [(s["problem"], s["raw_solution"]) for s in shots], problem)
        return latent_eval_prompt(tok, [(s["problem"], s["thought"], s["gold"]) for s in shots], problem)

    # a prompt must leave room for an answer: drop exemplars from the front until it does
    T = model.config.block_size
    room = min(max_new_tokens, T // 4)
    mine = [i for i in range(len(rows)) if i % world == rank]
    prompts, dropped = {}, 0
    for i in mine:
        k = 0
        while True:
            p = prompt_for(rows[i]["problem"], shots[k:])
            if len(p) + room <= T or k == len(shots):
                break
            k += 1
        dropped += k > 0
        prompts[i] = p[-(T - room):]  # the problem alone too long: keep its end (rare)

    stops = [tok.eot] + ([tok.sol] if style == "latent" else [])  # a new latent = a new chunk
    banned = tok.latent_ids if style == "raw" else None
    order = sorted(mine, key=lambda i: len(prompts[i]))  # similar lengths per batch: little padding
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    results = []
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = [prompts[i] for i in idx]
        new = min(max_new_tokens, T - max(len(p) for p in batch))
        with ctx:
            gens, _, _ = model.generate(batch, max_new_tokens=new, temperature=0, stop_tokens=stops,
                                        banned_tokens=banned, seed=0)
        for i, g in zip(idx, gens):
            body = g[:-1] if g and g[-1] in stops else g
            thought = None
            if style == "latent":  # the answer is what follows <|END_OF_LATENT|>: "Final Answer: ..."
                cut = body.index(tok.eol) if tok.eol in body else len(body)
                thought, text = tok.decode(body[:cut]), tok.decode(body[cut + 1:])
            else:
                text = tok.decode(body)
            text = text.split("Problem:")[0]  # the model went on to invent the next problem
            pred = extract_answer(text)
            ok, reason = grade(pred, rows[i]["gold"], timeout)
            results.append(dict(index=i, id=rows[i]["id"], prompt=show(tok, prompts[i]), generation=show(tok, g),
                                thought=thought, graded=text, extracted=pred, gold=rows[i]["gold"], correct=ok,
                                reason=reason, **{k: rows[i][k] for k in ("subject", "level", "family") if k in rows[i]}))
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (results, dropped))
        results, dropped = [r for p in parts for r in p[0]], sum(p[1] for p in parts)
    results.sort(key=lambda r: r["index"])

    n, correct = len(results), sum(r["correct"] for r in results)
    lo, hi = wilson(correct, n)
    breakdown = {}
    for key in ("subject", "level", "family"):
        groups = defaultdict(list)
        for r in results:
            if key in r:
                groups[str(r[key])].append(r["correct"])
        if groups:
            breakdown[key] = {v: {"accuracy": sum(c) / len(c), "n": len(c)} for v, c in sorted(groups.items())}
    summary = dict(accuracy=correct / n, ci_low=lo, ci_high=hi, n=n, correct=correct, breakdown=breakdown,
                   timeouts=sum(r["reason"] == "timeout" for r in results),
                   no_answer=sum(r["reason"] == "no answer" for r in results), style=style, n_shot=len(shots),
                   dropped_exemplars=dropped, ckpt=str(ckpt), data=str(data), wall_s=time.time() - t0)
    if out_dir and rank == 0:
        write_json(os.path.join(out_dir, "results.json"), summary)
        write_jsonl(os.path.join(out_dir, "problems.jsonl"), results)
    return summary


def print_table(r):
    print(f"{r['style']} {r['n_shot']}-shot: accuracy {r['accuracy']:.4f} ({r['correct']}/{r['n']}), "
          f"95% CI [{r['ci_low']:.4f}, {r['ci_high']:.4f}], no answer {r['no_answer']}, timeouts {r['timeouts']}")
    for key, groups in r["breakdown"].items():
        for v, g in groups.items():
            print(f"  {key:8s} {v:24s} {g['accuracy']:.4f}  n={g['n']}")


if __name__ == "__main__":
    cfg = apply(DEFAULTS, parse_args(sys.argv[1:], DEFAULTS), "command line")
    if not cfg["ckpt"] or not cfg["data"]:
        sys.exit("usage: python eval_math.py --ckpt=CKPT --data=PROBLEMS.jsonl [--exemplars=...] [--n_shot=4]")
    if "RANK" in os.environ:  # torchrun: one process per GPU, problems split by index
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    r = evaluate(cfg["ckpt"], cfg["data"], cfg["exemplars"] or None, cfg["n_shot"], cfg["style"],
                 cfg["max_new_tokens"], cfg["batch_size"], cfg["limit"] or None, cfg["out_dir"] or None,
                 cfg["device"], cfg["timeout"])
    if int(os.environ.get("RANK", 0)) == 0:
        print_table(r)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
