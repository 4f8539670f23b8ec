"""
Few-shot evaluation on MATH / GSM8K-shaped jsonl (method.md, Evaluation); the answer grader lives in grader.py.

    python eval_math.py --ckpt=runs/x/m0/ckpt.pt --data=runs/x/data/eval.jsonl --exemplars=runs/x/data/exemplars.jsonl
    torchrun --nproc_per_node=8 eval_math.py --ckpt=... --data=../shared/data/gsm8k/test.jsonl --n_shot=8

extract_answer, grade and is_equiv are re-exported from grader.py so that older callers keep working.
"""
import math
import os
import re
import sys
import time
from collections import defaultdict
from contextlib import nullcontext

import torch
from tqdm import tqdm

from configurator import apply, defaults_of, parse_args
from data.files import read_jsonl, write_json, write_jsonl
from data.latent import latent_eval_prompt, raw_eval_prompt, show
from data.tokenizer import get_tokenizer
from grader import extract_answer, grade, is_equiv, normalize  # noqa: F401  (re-exported)
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
    bar = tqdm(total=len(order), unit="problem", desc="evaluation", disable=rank != 0 or not sys.stderr.isatty())
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
        bar.update(len(idx))
    bar.close()
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
