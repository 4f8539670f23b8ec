"""
Benchmark of the answer grader (grader.grade), not a test: answers graded per second on four workloads.

    python bench/bench_grader.py                           # uses ../shared/data (MATH500, GSM8K test)
    python bench/bench_grader.py --math=PATH --gsm8k=PATH

  gsm8k      the number after #### written as "$1,234.00" against the number itself (the cheap numeric path)
  math500    extract_answer(solution) against the answer field, extraction included (mostly exact)
  rewrites   each MATH500 answer against a rewriting that needs sympy (\\frac -> /, 2\\sqrt{3} -> \\sqrt{12}, ...)
  mismatched answer i against answer i+1: mostly wrong, and rejecting needs the full path
The sympy comparisons run in one worker process (grader._ask_worker); its start-up is timed separately.
"""
import argparse
import os
import re
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.files import read_jsonl  # noqa: E402
import grader  # noqa: E402  (no torch: the grader alone)

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--math", default=os.path.join(here, "..", "shared", "data", "math500", "test.jsonl"))
p.add_argument("--gsm8k", default=os.path.join(here, "..", "shared", "data", "gsm8k", "test.jsonl"))
p.add_argument("--timeout", type=float, default=5.0)
args = p.parse_args()

math_rows = [r for _, r in read_jsonl(args.math)]
gsm_rows = [r for _, r in read_jsonl(args.gsm8k)]


def rewrite(a):
    """An equivalent answer that string normalisation does not reach."""
    b = re.sub(r"\\frac\{(-?\d+)\}\{(\d+)\}", r"(\1)/(\2)", a)
    b = re.sub(r"(\d+)\\sqrt\{(\d+)\}", lambda m: f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}", b)
    if b == a and re.fullmatch(r"-?\d+", a):
        b = f"{a}+0*\\pi"  # an integer, written as an expression
    return b


workloads = {
    "gsm8k": [(f"\\${float(g.replace(',', '')):,.2f}", g) for g in (r["answer"].rsplit("####", 1)[1].strip()
                                                                      for r in gsm_rows)],
    "math500": [(r["solution"], r["answer"]) for r in math_rows],
    "rewrites": [(rewrite(r["answer"]), r["answer"]) for r in math_rows],
    "mismatched": [(math_rows[i]["answer"], math_rows[(i + 1) % len(math_rows)]["answer"])
                   for i in range(len(math_rows))],
}

t0 = time.time()
grader.grade("x^2", "x*x", args.timeout)  # starts the sympy worker
print(f"sympy worker start-up: {time.time() - t0:.2f} s (once per process)")
print(f"{'workload':12s} {'pairs':>6s} {'answers/s':>10s} {'accepted':>9s}  reasons")
for name, pairs in workloads.items():
    t0 = time.time()
    extract = name == "math500"
    res = [grader.grade(grader.extract_answer(a) if extract else a, b, args.timeout) for a, b in pairs]
    dt = time.time() - t0
    reasons = Counter(r for _, r in res)
    print(f"{name:12s} {len(pairs):6d} {len(pairs) / dt:10.1f} {sum(ok for ok, _ in res) / len(res):9.3f}  "
          + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
