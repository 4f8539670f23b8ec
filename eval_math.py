"""
Few-shot evaluation on MATH / GSM8K-shaped jsonl (docs/method.md, Evaluation); the answer grader lives in grader.py.

    python eval_math.py --ckpt=runs/x/m0/ckpt.pt --data=runs/x/data/eval.jsonl --exemplars=runs/x/data/exemplars.jsonl
    torchrun --nproc_per_node=8 eval_math.py --ckpt=... --data=../shared/data/gsm8k/test.jsonl --n_shot=8
"""
import math
import os
import re
import sys
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from configurator import apply, command_line, defaults_of, usage_error
from common import load_checkpoint, rank0, setup, teardown
from data.files import read_jsonl, write_json, write_jsonl
from data.latent import latent_eval_prompt, raw_eval_prompt, show
from data.tokenizer import get_tokenizer
from grader import extract_answer, grade

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

def evaluate(ckpt, data, exemplars="", **settings):
    """Greedy few-shot accuracy of a checkpoint on a problem file. settings: the keys of the config block above,
    whose defaults apply to the rest. Returns the summary dict (every rank)."""
    cfg = apply(DEFAULTS, {**settings, "ckpt": ckpt, "data": data, "exemplars": exemplars or ""}, "evaluate()")
    t0 = time.time()
    rows = load_rows(data)[:cfg["limit"] or None]
    if not rows:
        raise ValueError(f"{data}: no problems")
    exemplars = cfg["exemplars"]
    if not exemplars:  # only GSM8K has a default: the first problems of its own train.jsonl
        sibling = os.path.join(os.path.dirname(os.path.abspath(data)), "train.jsonl")
        if rows[0]["kind"] != "gsm8k" or not os.path.exists(sibling):
            raise ValueError(f"{data}: no exemplars given (a jsonl of solved problems in the same shape); only "
                             f"GSM8K-shaped data defaults to a train.jsonl beside it ({sibling})")
        exemplars = sibling
    shots = load_rows(exemplars)[:cfg["n_shot"]]
    compute = setup(cfg["device"])
    model, checkpoint = load_checkpoint(ckpt, compute.device)
    model.eval()
    tok = get_tokenizer(checkpoint["tokenizer"])
    style = ("latent" if checkpoint.get("latent") else "raw") if cfg["style"] == "auto" else cfg["style"]
    if style not in ("raw", "latent"):
        raise ValueError(f"style must be auto, raw or latent, got {style!r}")
    mine = [i for i in range(len(rows)) if i % compute.world == compute.rank]
    prompts, dropped = few_shot_prompts(tok, style, rows, mine, shots, model.config.block_size, cfg["max_new_tokens"])
    results = []
    for idx, gens in generate_answers(model, tok, style, prompts, cfg, compute):
        for i, g in zip(idx, gens):
            results.append(grade_generation(tok, style, i, rows[i], prompts[i], g, cfg["timeout"]))
    if compute.world > 1:
        parts = [None] * compute.world
        torch.distributed.all_gather_object(parts, (results, dropped))
        results, dropped = [r for p in parts for r in p[0]], sum(p[1] for p in parts)
    results.sort(key=lambda r: r["index"])
    summary = dict(**accuracy(results), style=style, n_shot=len(shots), dropped_exemplars=dropped, ckpt=str(ckpt),
                   data=str(data), wall_s=time.time() - t0)
    if cfg["out_dir"] and compute.rank == 0:
        write_json(os.path.join(cfg["out_dir"], "results.json"), summary)
        write_jsonl(os.path.join(cfg["out_dir"], "problems.jsonl"), results)
    return summary


def few_shot_prompts(tok, style, rows, mine, shots, T, max_new_tokens):
    """The prompt of each problem (docs/method.md, Evaluation): exemplars, then the problem. A prompt must leave room
    for an answer: exemplars are dropped from the front until it does. Returns (prompts by index, how many lost some)."""
    def prompt_for(problem, shots):
        if style == "raw":
            return raw_eval_prompt(tok, [(s["problem"], s["raw_solution"]) for s in shots], problem)
        return latent_eval_prompt(tok, [(s["problem"], s["thought"], s["gold"]) for s in shots], problem)

    room = min(max_new_tokens, T // 4)
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
    return prompts, dropped


def generate_answers(model, tok, style, prompts, cfg, compute):
    """Greedy continuations in batches of similar prompt lengths; yields (indices, generations)."""
    stops = [tok.eot] + ([tok.sol] if style == "latent" else [])  # a new latent = a new chunk
    order = sorted(prompts, key=lambda i: len(prompts[i]))  # similar lengths per batch: little padding
    T, B = model.config.block_size, cfg["batch_size"]
    bar = tqdm(total=len(order), unit="problem", desc="evaluation",
               disable=compute.rank != 0 or not sys.stderr.isatty())
    for b in range(0, len(order), B):
        idx = order[b:b + B]
        batch = [prompts[i] for i in idx]
        with compute.ctx:
            gens, _, _ = model.generate(batch, max_new_tokens=min(cfg["max_new_tokens"], T - max(map(len, batch))),
                                        temperature=0, stop_tokens=stops, seed=0,
                                        banned_tokens=tok.latent_ids if style == "raw" else None)
        yield idx, gens
        bar.update(len(idx))
    bar.close()


def grade_generation(tok, style, i, row, prompt, g, timeout):
    """One problem's record: the answer read from the generation and graded against the gold one."""
    body = g[:-1] if g and g[-1] in (tok.eot, tok.sol) else g
    thought = None
    if style == "latent":  # the answer is what follows <|END_OF_LATENT|>: "Final Answer: ..."
        cut = body.index(tok.eol) if tok.eol in body else len(body)
        thought, text = tok.decode(body[:cut]), tok.decode(body[cut + 1:])
    else:
        text = tok.decode(body)
    text = text.split("Problem:")[0]  # the model went on to invent the next problem
    pred = extract_answer(text)
    ok, reason = grade(pred, row["gold"], timeout)
    return dict(index=i, id=row["id"], prompt=show(tok, prompt), generation=show(tok, g), thought=thought, graded=text,
                extracted=pred, gold=row["gold"], correct=ok, reason=reason,
                **{k: row[k] for k in ("subject", "level", "family") if k in row})


def accuracy(results):
    """Accuracy with its 95% Wilson interval, per subject / level / family where the rows have them."""
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
    return dict(accuracy=correct / n, ci_low=lo, ci_high=hi, n=n, correct=correct, breakdown=breakdown,
                timeouts=sum(r["reason"] == "timeout" for r in results),
                no_answer=sum(r["reason"] == "no answer" for r in results))


def print_table(r):
    print(f"{r['style']} {r['n_shot']}-shot: accuracy {r['accuracy']:.4f} ({r['correct']}/{r['n']}), "
          f"95% CI [{r['ci_low']:.4f}, {r['ci_high']:.4f}], no answer {r['no_answer']}, timeouts {r['timeouts']}")
    for key, groups in r["breakdown"].items():
        for v, g in groups.items():
            print(f"  {key:8s} {v:24s} {g['accuracy']:.4f}  n={g['n']}")


if __name__ == "__main__":
    cfg = command_line(sys.argv[1:], DEFAULTS)
    if not cfg["ckpt"] or not cfg["data"]:
        usage_error("usage: python eval_math.py --ckpt=CKPT --data=PROBLEMS.jsonl [--exemplars=...] [--n_shot=4]")
    summary = evaluate(**cfg)  # torchrun: one process per GPU, problems split by index
    if rank0():
        print_table(summary)
    teardown()
