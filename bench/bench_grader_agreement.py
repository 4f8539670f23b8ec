"""
Agreement of our grader (grader.grade) with the expected verdicts of graders written by others, on their test cases
transcribed in tests/data/grader_cases/*.jsonl (input strings and verdicts only; each row names repo, path, commit
and line). Not a test: tests/test_grader.py checks that every disagreement is one kept on purpose.

    python bench/bench_grader_agreement.py            # agreement per suite, then each disagreement
    python bench/bench_grader_agreement.py --all      # every case with its verdict

Both strings of a case go through answer_of (the same for gold and prediction): the suites feed whole model outputs
("... so \\boxed{4}", "$[0,1)$") to their graders, ours grades extracted answers.
"""
import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import grader  # noqa: E402

CASES = os.path.join(ROOT, "tests", "data", "grader_cases")
SUITES = ("hendrycks_math", "qwen25_math", "math_verify")
_SPAN = re.compile(r"\$\$?((?:\\.|[^$\\])+)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)


def answer_of(text, numbers_only=False):
    """The answer our grader is given for one string of a case: a stated answer (\\boxed, "The answer is") as
    extract_answer finds it; else the last $...$ span; else the string itself, or its last number where the suite
    extracts only numbers from prose."""
    if numbers_only or "\\boxed" in text or "\\fbox" in text or re.search(r"answer is|Final Answer:|####", text):
        return grader.extract_answer(text)
    spans = _SPAN.findall(text)
    if spans:
        return next(g for g in spans[-1] if g)
    return text


def load(suite):
    with open(os.path.join(CASES, suite + ".jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def kept():
    """{case id: reason} for the disagreements kept on purpose."""
    with open(os.path.join(CASES, "kept_disagreements.jsonl")) as f:
        return {r["id"]: r["reason"] for r in map(json.loads, f) if r}


def verdict(case, timeout=5.0):
    numbers_only = case.get("options", {}).get("match_types") == ["expr"]
    pred, gold = answer_of(case["pred"], numbers_only), answer_of(case["gold"], numbers_only)
    if gold is None:
        return False, "no gold"
    return grader.grade(pred, gold, timeout)


def agreement(suite, timeout=5.0):
    """[(case, our verdict, reason)] for every case of a suite whose verdict differs from the expected one, and n."""
    cases = load(suite)
    out = []
    for c in cases:
        ok, reason = verdict(c, timeout)
        if ok != c["expected"]:
            out.append((c, ok, reason))
    return out, len(cases)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--all", action="store_true")
    args = p.parse_args()
    reasons = kept()
    rows = []
    for suite in SUITES:
        t0 = time.time()
        bad, n = agreement(suite, args.timeout)
        unexplained = [b for b in bad if b[0]["id"] not in reasons]
        print(f"{suite:16s} {n - len(bad):4d}/{n:<4d} agree ({(n - len(bad)) / n:6.1%}); {len(bad) - len(unexplained)} "
              f"kept disagreements, {len(unexplained)} unexplained; {time.time() - t0:.1f} s")
        rows += bad
    for c, ok, reason in rows:
        print(f"\n{c['id']} {c['repo']}/{c['path']}:{c['line']} expected {c['expected']}, ours {ok} ({reason})")
        print(f"  gold {c['gold'][:120]!r}\n  pred {c['pred'][:120]!r}")
        print(f"  kept: {reasons.get(c['id'], 'NO: unexplained')}")
    if args.all:
        for suite in SUITES:
            for c in load(suite):
                print(c["id"], verdict(c, args.timeout), c["expected"])


if __name__ == "__main__":
    main()
