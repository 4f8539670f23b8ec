"""
mathworld: the embedded corpus. A procedurally generated world of terse math text, made from a seed with numpy
alone (no download), in which the writer SKIPS the intermediate steps on purpose, as answer keys do:

    Problem:
    Start at 7, add 5, double, then subtract 3.
    Final Answer: 21

Every document is a few such problems, chunked so that a problem and its result fall in DIFFERENT chunks:

    chunk 0:    "Problem:\n{p1}\n"
    chunk i:    "Final Answer: {a_i}\n\nProblem:\n{p_i+1}\n"
    last chunk: "Final Answer: {a_n}\n\n"

docs/method.md, Evaluation explains why: the prior-order thought of chunk i then sits right after problem i and
before its answer, exactly where the latent evaluation prompt "Problem:\n{p}\n<SOL><PRIOR>" opens one.

For each chunk the generator also writes the gold latent thought, the skipped steps in one explicit style:

    chunk 0:    "Exercises."                        (nothing to derive yet)
    chunk i:    "7+5=12; 12*2=24; 24-3=21 => 21"    (problem i's derivation; "=> R" states the result R)

These play the teacher (GPT-4o-mini in the paper) for the warm-start split. For the bootstrap split they are
saved apart and used ONLY to measure how often the E-step recovers a thought with the right result.
teacher_error_rate makes the teacher imperfect: that fraction of derivations gets one wrong step, propagated.

    python -m data.mathworld --show 2         # print two documents, raw and thought-augmented
    python -m data.mathworld --write_tokenizer   # fit data/mathworld.tiktoken again (after changing the world)
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np

from data.files import (build_augmented_bin, build_raw_bin, check_settings, read_chunks, read_jsonl, read_meta,
                        read_thoughts, update_meta, write_chunks, write_json, write_jsonl)
from data.latent import augmented_document, show
from data.tokenizer import DIGITS_PAT, MATHWORLD_BPE, fit_bpe, get_tokenizer, save_bpe

# the embedded corpus's settings, here and nowhere else: em.py's config block and this module's command line
# read them (generate's own defaults are the generator's whole range: every default family, up to level 3)
WORLD = dict(
    n_docs=2000,                          # warm start + bootstrap documents
    problems_per_doc=(3, 5),              # problems per document (min, max)
    families=("chain",),                  # problem families (FAMILIES); serial chains need thoughts, raw text
                                          # learns parallel sums without them (docs/notebook.md)
    max_level=4,                          # problems have 2 to max_level + 1 steps
    warm_max_level=3,                     # > 0: the warm-start split's problems have at most warm_max_level + 1 steps
                                          # (a difficulty ladder: the teacher writes mostly short derivations)
    warm_long_share=0.3,                  # with warm_max_level: this share of warm problems comes from every level
                                          # (a few long teacher thoughts, so that M_0 sometimes samples a right one)
    n_eval=1000,                          # held-out problems in eval.jsonl and in valid.jsonl (each): +-0.03 at 95%
    warm_fraction=0.2,                    # the share of documents with teacher thoughts
    teacher_error_rate=0.0,               # the fraction of teacher thoughts with a wrong step
    thought_style="terse",                # terse: "7+5=12; ..." | restate: "add 5: 7+5=12; ..." (chain only; each
                                          # step first copies the problem's words for it: docs/notebook.md)
)
KNOBS = ("problems_per_doc", "families", "max_level", "warm_max_level", "warm_long_share", "n_eval",
         "teacher_error_rate", "thought_style")  # generate's
THOUGHT_STYLES = ("terse", "restate")

NAMES = ["Ann", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eva", "Tom"]
ITEMS = ["apples", "pens", "cards", "coins", "books", "shells", "stamps", "marbles"]


def chain(rng, level):
    x0 = int(rng.integers(2, 10))
    steps, words, x = [], [], x0
    for _ in range(level + 1):
        kind = rng.integers(4) if x <= 20 else rng.integers(2)  # keep every value below 60
        if kind == 0 or kind == 1 and x < 2:
            k = int(rng.integers(1, 10)); words.append(f"add {k}"); steps.append((x, "+", k, x + k))
        elif kind == 1:
            k = int(rng.integers(1, min(x, 9) + 1)); words.append(f"subtract {k}"); steps.append((x, "-", k, x - k))
        else:
            k = int(kind); words.append("double" if k == 2 else "triple"); steps.append((x, "*", k, x * k))
        x = steps[-1][3]
    return f"Start at {x0}, {', '.join(words[:-1])}, then {words[-1]}.", steps, x


def total(rng, level):
    nums = [int(v) for v in rng.integers(1, 10, size=level + 2)]
    steps, x = [], nums[0]
    for v in nums[1:]:
        steps.append((x, "+", v, x + v)); x += v
    return f"Compute {'+'.join(map(str, nums))}.", steps, x


def linear(rng, level):
    a, x, b = int(rng.integers(2, 6)), int(rng.integers(1, 10)), int(rng.integers(1, 10))
    if level == 1:
        return f"Solve {a}x+{b}={a * x + b}.", [(a * x + b, "-", b, a * x), (a * x, "/", a, x)], x
    c = int(rng.integers(1, a)); d = (a - c) * x + b  # a x + b = c x + d with a > c
    return (f"Solve {a}x+{b}={'' if c == 1 else c}x+{d}.",
            [(a, "-", c, a - c), (d, "-", b, d - b), (d - b, "/", a - c, x)], x)


def word(rng, level):
    name, item = NAMES[rng.integers(len(NAMES))], ITEMS[rng.integers(len(ITEMS))]
    have, bags, per = int(rng.integers(1, 10)), int(rng.integers(2, 6)), int(rng.integers(2, 6))
    text = f"{name} has {have} {item} and buys {bags} bags of {per}"
    steps = [(bags, "*", per, bags * per), (have, "+", bags * per, have + bags * per)]
    x = have + bags * per
    if level >= 2:
        give = int(rng.integers(1, 10)); text += f", then gives away {give}"
        steps.append((x, "-", give, x - give)); x -= give
    return text + f". How many {item} now?", steps, x


def poly(rng, level):
    a, b, c, x = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 10)), int(rng.integers(1, 2 + level))
    steps = [(x, "*", x, x * x), (a, "*", x * x, a * x * x), (b, "*", x, b * x), (a * x * x, "+", b * x, a * x * x + b * x),
             (a * x * x + b * x, "-", c, a * x * x + b * x - c)]
    return f"Evaluate {a}x^2+{b}x-{c} at x={x}.", steps, a * x * x + b * x - c


def gcd(rng, level):
    g = int(rng.integers(2, 4 + 2 * level))
    m, n = sorted(int(v) for v in rng.choice(np.arange(1, 5 + 2 * level), size=2, replace=False))
    if math.gcd(m, n) != 1:
        m = 1
    a, b, steps = g * n, g * m, []
    while b:
        steps.append((a, "mod", b, a % b)); a, b = b, a % b
    return f"Find gcd({g * n},{g * m}).", steps, a


def modular(rng, level):
    a, b, c, m = int(rng.integers(2, 10)), int(rng.integers(2, 10)), int(rng.integers(1, 10)), int(rng.integers(3, 10))
    return (f"Compute ({a}*{b}+{c}) mod {m}.",
            [(a, "*", b, a * b), (a * b, "+", c, a * b + c), (a * b + c, "mod", m, (a * b + c) % m)], (a * b + c) % m)


FAMILIES = {"chain": chain, "total": total, "linear": linear, "word": word, "poly": poly, "gcd": gcd,
            "modular": modular}
DEFAULT_FAMILIES = ("chain", "total", "linear", "word", "poly")  # the harder gcd and modular are opt-in
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b,
       "mod": lambda a, b: a % b}


def derivation(steps, answer, rng=None, error_rate=0.0, words=None):
    """The gold thought for a result chunk: 'a op b = v' steps, then '=> result'. With probability error_rate
    (teacher noise) one step's value is off by a small amount, and later steps use the wrong value. words: one
    label per step, written before it ('double: 12*2=24'), the restate style."""
    bad = int(rng.integers(len(steps))) if rng is not None and rng.random() < error_rate else -1
    out, fix = [], {}
    for i, (a, op, b, v) in enumerate(steps):
        a, b = fix.get(a, a), fix.get(b, b)
        w = OPS[op](a, b) if b or op not in ("/", "mod") else v
        if i == bad:
            w += int(rng.choice([-2, -1, 1, 2]))
        if w != v:
            fix[v] = w
        sep = " " if op == "mod" else ""
        out.append((f"{words[i]}: " if words else "") + f"{a}{sep}{op}{sep}{b}={w}")
    return "; ".join(out) + f" => {fix.get(answer, answer)}"


def chain_words(steps):
    """The words of a chain problem for each of its steps, as the problem states them ('add 5', 'double', ...,
    'then subtract 3'): a restate-style thought copies them, so that finding the next operation is a copy of the
    words after the last one copied, not a count of the operations done so far (docs/notebook.md)."""
    word = lambda op, b: {"+": f"add {b}", "-": f"subtract {b}"}.get(op) or {2: "double", 3: "triple"}[b]
    words = [word(op, b) for _, op, b, _ in steps]
    return words[:-1] + [f"then {words[-1]}"]


def thought_result(text):
    """The result a thought arrives at: what follows the last '=>' (this world's thoughts), else the last number
    (a worked solution of a real corpus, e.g. GSM8K's), or None if it states none."""
    if "=>" not in text:
        nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        return nums[-1].replace(",", "").rstrip(".") if nums else None
    r = text.rsplit("=>", 1)[1].strip()
    return r or None


def thought_steps(text):
    """How many steps a derivation has before its '=> result' (0 for a thought that is not a derivation): the rung
    of the difficulty ladder a chunk sits on, for figures broken down by length."""
    return text.rsplit("=>", 1)[0].count(";") + 1 if "=>" in text else 0


STEP = re.compile(r"^\s*(-?\d+)\s*(\+|-|\*|/|mod)\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
WORD_NUMBERS = {"double": 2, "triple": 3}


def thought_arithmetic(text):
    """The arithmetic of a derivation, [(a, op, b, value)] step by step (restate words dropped), then its result;
    None for a thought that is not one."""
    if "=>" not in text:
        return None
    body, result = text.rsplit("=>", 1)
    steps = [STEP.match(step.rsplit(":", 1)[-1]) for step in body.split(";")]
    return None if not all(steps) else ([m.groups() for m in steps], result.strip())


def complete(text, gold):
    """True when a thought does every operation of the gold derivation, in its order, and states its result: a
    thought that skips operations and lands on the answer by chance is sound (steps_valid) but not complete."""
    z = thought_arithmetic(text)
    return z is not None and z == thought_arithmetic(gold)


def steps_valid(text, problem):
    """True when the thought is a derivation whose every step is true arithmetic on numbers of the problem text
    (or on results of its earlier steps) and whose '=> R' is its last step's value. A thought can state the gold
    result (the posterior sees it in X) over wrong steps; this tells the two apart."""
    if "=>" not in text:
        return False
    body, result = text.rsplit("=>", 1)
    known = {int(v) for v in re.findall(r"\d+", problem)}
    known |= {v for w, v in WORD_NUMBERS.items() if w in problem}
    value = None
    for step in body.split(";"):
        m = STEP.match(step.rsplit(":", 1)[-1])  # a restate-style step: its words, then the arithmetic
        if not m:
            return False
        a, op, b, v = int(m[1]), m[2], int(m[3]), int(m[4])
        if a not in known or b not in known or (b == 0 and op in ("/", "mod")) or OPS[op](a, b) != v:
            return False
        known.add(v)
        value = v
    return result.strip() == str(value)


def problem(rng, families, max_level, error_rate=0.0, style="terse"):
    name = families[rng.integers(len(families))]
    level = int(rng.integers(1, max_level + 1))
    text, steps, answer = FAMILIES[name](rng, level)
    words = chain_words(steps) if style == "restate" else None
    return {"problem": text, "answer": str(answer), "family": name, "level": level,
            "thought": derivation(steps, answer, rng, error_rate, words),
            "gold_thought": derivation(steps, answer, words=words)}


FIRST_THOUGHT = "Exercises."


def problem_text(p):
    return f"Problem:\n{p['problem']}\n"


def result_text(p):
    return f"Final Answer: {p['answer']}\n\n"


def document(problems, thought="thought"):
    """Problems as chunks (statement of problem 1 | result i + statement i+1 | ... | result n) and their thoughts:
    the steps skipped between a problem and its result are the thought of the chunk holding the result."""
    texts = [problem_text(problems[0])] + [result_text(a) + problem_text(b) for a, b in zip(problems, problems[1:])]
    texts.append(result_text(problems[-1]))
    return [{"text": t, "thought": z, "gold": g} for t, z, g in
            zip(texts, [FIRST_THOUGHT] + [p[thought] for p in problems], [FIRST_THOUGHT] + [p["gold_thought"] for p in problems])]


def generate(seed=0, n_docs=4000, problems_per_doc=(3, 5), max_level=3, families=None, teacher_error_rate=0.0,
             n_eval=500, n_exemplars=8, n_valid=0, exclude=(), warm_docs=0, warm_max_level=0, warm_long_share=0.0,
             thought_style="terse"):
    """
    Deterministic from seed. Returns (docs, eval_problems, exemplars), and the validation problems too when
    n_valid > 0. A doc is a list of chunks {"text", "thought"} where thought is what the (possibly noisy) teacher
    writes, plus "gold" (the noise-free thought). Held-out problems never appear in any document.
    warm_max_level > 0 caps the level of the first warm_docs documents (the warm-start split): a difficulty
    ladder, where the teacher only shows short derivations and the longer ones are left for EM to infer;
    warm_long_share of the warm problems still come from every level (a few long teacher thoughts).
    """
    families = list(families or DEFAULT_FAMILIES)
    if thought_style not in THOUGHT_STYLES:
        raise ValueError(f"thought_style must be one of {THOUGHT_STYLES}, got {thought_style!r}")
    if thought_style == "restate" and set(families) != {"chain"}:
        raise ValueError(f"thought_style='restate' is defined for the chain family only, got families={families}")
    rng = np.random.default_rng(seed)
    held, seen = [], set(exclude)
    while len(held) < n_eval + n_exemplars + n_valid:
        p = problem(rng, families, max_level, style=thought_style)
        if p["problem"] not in seen:
            seen.add(p["problem"]); held.append(p)
    docs = []
    for d in range(n_docs):
        problems, level = [], min(max_level, warm_max_level) if warm_max_level and d < warm_docs else max_level
        for _ in range(int(rng.integers(problems_per_doc[0], problems_per_doc[1] + 1))):
            top = max_level if level < max_level and warm_long_share and rng.random() < warm_long_share else level
            p = problem(rng, families, top, teacher_error_rate, thought_style)
            while p["problem"] in seen:  # keep held-out problems out of training text
                p = problem(rng, families, top, teacher_error_rate, thought_style)
            problems.append(p)
        docs.append(document(problems))
    evals, exemplars = held[n_exemplars:n_exemplars + n_eval], held[:n_exemplars]
    return (docs, evals, exemplars) + ((held[n_exemplars + n_eval:],) if n_valid else ())


BACKGROUND_FAMILIES = ("linear", "poly", "gcd", "modular")


def background(seed, n_docs, families=None, max_level=3, exclude=()):
    """
    The base model's pretraining text: worked problems of OTHER families than the corpus's, solutions written out,
        Problem:
        Solve 3x+2=11.
        Solution: 11-2=9; 9/3=3 => 3
    It stands for what a pretrained LM knows before the paper's continued pretraining (every run restarts from a
    pretrained base: docs/method.md, The official code's settings): arithmetic, and that a worked solution copies numbers out of its problem.
    Which steps the corpus's own problems need ("double", "buys 3 bags of 4") it has never seen: that is what
    the corpus's thoughts teach.
    """
    families = [f for f in (families or BACKGROUND_FAMILIES) if f not in exclude] or list(BACKGROUND_FAMILIES)
    rng = np.random.default_rng([seed, 7])
    docs = []
    for _ in range(n_docs):
        ps = [problem(rng, families, max_level) for _ in range(int(rng.integers(3, 6)))]
        docs.append("".join(f"Problem:\n{p['problem']}\nSolution: {p['gold_thought']}\n\n" for p in ps))
    return docs


TOKENIZER_MERGES = 160  # enough for every word of this world to be one token


def tokenizer_text(seed=12345, n_docs=1000):
    """The text the "mathworld" tokenizer's merges are learned on (data/tokenizer.py): documents and their
    thoughts from a fixed seed of their own, so the tokenizer is the same for every corpus seed."""
    docs, _, _ = generate(seed, n_docs, n_eval=0, n_exemplars=0)
    return ["".join(c["text"] for c in doc) + " ".join(c["thought"] for c in doc) for doc in docs] + \
        background(seed, n_docs // 4)


def write_tokenizer(path=MATHWORLD_BPE):
    """Fit the "mathworld" tokenizer's merges to tokenizer_text and write them where data/tokenizer.py reads them."""
    save_bpe(path, fit_bpe(tokenizer_text(), TOKENIZER_MERGES, DIGITS_PAT))
    return path


# ----------------------------------------------------------------------------- the paper's other uses of the data
# (its Section 3: the same documents repeated, fresh ones, rephrased (WRAP), rephrased with the reasoning written in
# (WRAP-CoT)); em.py trains one raw model on each (--raw_fresh, --wrap)

def world_of(data_dir):
    """(the settings a prepared corpus of this world was made with, its held-out problems): what any more text of
    the same world needs, so that it never writes an evaluation, validation or exemplar problem."""
    knobs = read_meta(data_dir).get("mathworld")
    if knobs is None:
        raise ValueError(f"{data_dir}: not a corpus of the embedded world (no 'mathworld' in meta.json); more of its "
                         "text can only be written for one")
    held = {r["problem"] for name in ("eval", "valid", "exemplars") if os.path.exists(f"{data_dir}/{name}.jsonl")
            for _, r in read_jsonl(f"{data_dir}/{name}.jsonl")}
    return knobs, held


def fresh_documents(data_dir, n_tokens, tok, seed=0):
    """Raw documents of the bootstrap split's kind (every level, same problems per document) that no split of
    data_dir holds, until their raw tokens reach n_tokens: the raw-fresh baseline, what a world with more text
    would give. Held-out problems (eval, valid, exemplars) stay out, as in every training text; a problem may
    recur (a 2-step chain has a few thousand spellings), a document does not. Returns [(doc id, [chunk texts])]."""
    knobs, held = world_of(data_dir)
    seen = {"".join(c["text"] for c in doc) for split in ("warm", "boot", "val")
            for doc in read_chunks(f"{data_dir}/{split}.chunks.jsonl")}
    world = {k: knobs[k] for k in ("problems_per_doc", "families", "max_level") if k in knobs}
    out, got, block = [], 0, 0
    while got < n_tokens:
        docs, _, _ = generate([seed, knobs["seed"], 11, block], 1000, n_eval=0, n_exemplars=0, exclude=held, **world)
        for doc in docs:
            texts = [c["text"] for c in doc]
            if "".join(texts) in seen or got >= n_tokens:
                continue
            seen.add("".join(texts))
            out.append((f"fresh{len(out)}", texts))
            got += len(tok.encode("".join(texts))) + 1  # + its end-of-text token (data/files.py: raw_document)
        block += 1
    return out


CHAIN = re.compile(r"Start at (\d+), (.+), then (.+)\.")
CHAIN_WORDINGS = (  # (opening, separator, last, close): the problem's steps in another order of words
    ("Begin with {x}. Then {steps}", ", ", ", and finally {last}.", ""),
    ("Take {x}; {steps}", "; ", "; {last}. What is the result?", ""),
    ("From {x}: {steps}", ", next ", ", last {last}.", ""),
)
STEP_WORDINGS = {"add": ("add {k}", "plus {k}", "increase by {k}"), "subtract": ("subtract {k}", "minus {k}", "take away {k}"),
                 "double": ("double", "multiply by 2", "times 2"), "triple": ("triple", "multiply by 3", "times 3")}


def rephrase(text, rng):
    """A chain-world text with every problem statement in another wording (CHAIN_WORDINGS, STEP_WORDINGS): the same
    start, the same operations in the same order, so the same answer; everything else ("Final Answer: N") as it
    was. The WRAP baseline's rephrasing, by a writer that knows the world instead of an LLM."""
    def one(m):
        x, words = m[1], m[2].split(", ") + [m[3]]
        said = []
        for w in words:
            verb, *k = w.split(" ")
            forms = STEP_WORDINGS[verb]
            said.append(forms[int(rng.integers(len(forms)))].format(k=k[0] if k else ""))
        opening, sep, last, _ = CHAIN_WORDINGS[int(rng.integers(len(CHAIN_WORDINGS)))]
        return opening.format(x=x, steps=sep.join(said[:-1])) + last.format(last=said[-1])
    if "Problem:" in text and not CHAIN.search(text):
        raise ValueError(f"rephrase: only the chain family has other wordings, got {text[:80]!r}")
    return CHAIN.sub(one, text)


def rephrased_documents(chunks_path, n, seed=0):
    """n rephrasings of every document of a chunk file, each a document of its own: [(doc id, [chunk texts])].
    Each chunk restarts the rephrasing's generator, so a rephrased document keeps one style throughout (the same
    opening and step words in the same places), as WRAP gives each document one style prompt."""
    return [(f"{doc[0]['doc']}~wrap{r}", [rephrase(c["text"], np.random.default_rng([seed, d, r, 13])) for c in doc])
            for r in range(n) for d, doc in enumerate(read_chunks(chunks_path))]


def inline_documents(chunks_path, thoughts_path, skip_first=True):
    """Every document of a chunk file with each chunk's thought written into the text before it, "Solution: {thought}\n"
    (the background text's spelling), as plain text: no latent tokens, no coins (the WRAP-CoT baseline). The first
    chunk's thought is left out (nothing to derive yet: the constant FIRST_THOUGHT). [(doc id, [chunk texts])]."""
    thoughts = read_thoughts(thoughts_path)
    return [(doc[0]["doc"], [c["text"] if (skip_first and i == 0) else f"Solution: {thoughts[c['id']]}\n{c['text']}"
                             for i, c in enumerate(doc)]) for doc in read_chunks(chunks_path)]


def finetune_problems(data_dir, n, seed=0):
    """n solved problems of the world for the fine-tuning evaluation (the official run_finetune_eval.sh fine-tunes
    on the task's train split): the bootstrap split's kind, none of them held out, each with its gold derivation as
    thought and inline raw solution; rows in exemplars.jsonl's shape."""
    knobs, held = world_of(data_dir)
    rng, out = np.random.default_rng([seed, knobs["seed"], 17]), []
    while len(out) < n:
        p = problem(rng, list(knobs.get("families") or DEFAULT_FAMILIES), knobs.get("max_level", 3),
                    style=knobs.get("thought_style", "terse"))  # the thoughts the corpus's own spelling
        if p["problem"] not in held:
            out.append(inline_exemplar({**math_row(p), "thought": p["gold_thought"],
                                        "raw_solution": result_text(p).strip()}))
    return out


def inline_exemplar(row):
    """An exemplars.jsonl row whose raw solution shows the derivation inline, as inline_documents writes it."""
    return {**row, "raw_solution": f"Solution: {row['thought']}\n{row['raw_solution']}"}


def math_row(p):
    """A held-out problem in MATH's jsonl shape (the solution ends in \\boxed{answer}), for eval_math.py."""
    return {"problem": p["problem"], "solution": f"{p['gold_thought']}. The answer is $\\boxed{{{p['answer']}}}$.",
            "answer": p["answer"], "family": p["family"], "level": p["level"]}


def prepare(out_dir, seed=0, n_docs=WORLD["n_docs"], n_val_docs=200, warm_fraction=WORLD["warm_fraction"],
            tokenizer="mathworld", n_valid=WORLD["n_eval"], n_background_docs=4000, **knobs):
    """
    Write the embedded corpus's splits into out_dir (skipped when already complete with the same settings):
      warm.*   warm-start documents with the teacher's thoughts: chunks, thoughts, raw and augmented bins
      boot.*   bootstrap documents: chunks and raw bin; boot.gold.jsonl holds their gold thoughts, for
               measuring the E-step only (never trained on)
      val.*    validation documents: raw and augmented (gold thoughts) bins
      background.bin   derivations without problems: the base model's pretraining text (see background)
      eval.jsonl, valid.jsonl, exemplars.jsonl   held-out problems in MATH's shape: the evaluation set (final
               tables only), a validation set of other problems (for choosing settings), few-shot exemplars
    Everything is built in out_dir/.partial and moved into out_dir with meta.json last, so a directory with a
    meta.json is complete and a killed preparation simply starts again.
    """

    knobs = {**knobs, **{k: WORLD[k] for k in KNOBS if k not in knobs}}  # the world's defaults, WORLD
    settings = dict(seed=seed, n_docs=n_docs, n_val_docs=n_val_docs, warm_fraction=warm_fraction,
                    tokenizer=tokenizer, n_valid=n_valid, n_background_docs=n_background_docs, **knobs)
    if settings["thought_style"] == "terse":  # recorded only when set: corpora made before the option stay valid
        del settings["thought_style"]
    meta = read_meta(out_dir)
    if meta:
        check_settings(f"{out_dir}/meta.json", meta.get("mathworld", {}), settings)
        return meta  # complete, with these settings
    tok = get_tokenizer(tokenizer)
    n_warm = int(round(warm_fraction * n_docs))
    if knobs.get("warm_max_level"):
        knobs = {**knobs, "warm_docs": n_warm}
    docs, held, exemplars, valid = generate(seed, n_docs + n_val_docs, n_valid=n_valid, **knobs)
    splits = {"warm": docs[:n_warm], "boot": docs[n_warm:n_docs], "val": docs[n_docs:]}
    part = os.path.join(out_dir, ".partial")
    shutil.rmtree(part, ignore_errors=True)  # what a killed preparation left
    for name, split in splits.items():
        chunks = os.path.join(part, f"{name}.chunks.jsonl")
        write_chunks(chunks, ((f"{name}{d}", [c["text"] for c in doc]) for d, doc in enumerate(split)))
        key = "gold" if name == "val" else "thought"  # validation measures against the noise-free thoughts
        thoughts = os.path.join(part, f"{name}.gold.jsonl" if name == "boot" else f"{name}.thoughts.jsonl")
        write_jsonl(thoughts, ({"id": f"{name}{d}:{i}", "thought": c["gold" if name == "boot" else key]}
                               for d, doc in enumerate(split) for i, c in enumerate(doc)))
        build_raw_bin(tok, chunks, os.path.join(part, f"{name}_raw.bin"))
        if name != "boot":
            build_augmented_bin(tok, chunks, thoughts, os.path.join(part, f"{name}_aug.bin"), seed)
    bg = os.path.join(part, "background.chunks.jsonl")
    write_chunks(bg, ((f"bg{d}", [t]) for d, t in enumerate(background(seed, n_background_docs,
                                                                     exclude=knobs.get("families") or DEFAULT_FAMILIES))))
    build_raw_bin(tok, bg, os.path.join(part, "background.bin"))
    write_jsonl(os.path.join(part, "eval.jsonl"), (math_row(p) for p in held))
    write_jsonl(os.path.join(part, "valid.jsonl"), (math_row(p) for p in valid))
    write_jsonl(os.path.join(part, "exemplars.jsonl"),
                ({**math_row(p), "thought": p["gold_thought"], "raw_solution": result_text(p).strip()}
                 for p in exemplars))
    meta = update_meta(part, tok, mathworld=settings)  # its "mathworld" entry marks the directory complete
    for info in meta["bins"].values():  # the files the bins were built from, by their final names
        info.update({k: os.path.basename(v) for k, v in info.items() if k in ("chunks", "thoughts")})
    write_json(os.path.join(part, "meta.json"), meta)
    for name in sorted(os.listdir(part), key=lambda n: n == "meta.json"):  # meta.json last
        os.replace(os.path.join(part, name), os.path.join(out_dir, name))
    os.rmdir(part)
    return read_meta(out_dir)


def main(argv):
    ap = argparse.ArgumentParser(description="Generate or look at the embedded math corpus.")
    ap.add_argument("--show", type=int, default=0, help="print N documents, raw and with thoughts")
    ap.add_argument("--out_dir", default="", help="prepare the corpus into this directory")
    ap.add_argument("--write_tokenizer", action="store_true",
                    help=f"fit the mathworld tokenizer's merges again and write {os.path.relpath(MATHWORLD_BPE)}")
    ap.add_argument("--seed", type=int, default=0)
    for key in ("n_docs", "max_level", "warm_max_level", "warm_long_share", "n_eval", "warm_fraction",
                "teacher_error_rate"):
        ap.add_argument(f"--{key}", type=type(WORLD[key]), default=WORLD[key])
    ap.add_argument("--families", default=",".join(WORLD["families"]),
                    help=f"comma-separated, of {', '.join(FAMILIES)}")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.families.split(",")) - set(FAMILIES))
    if unknown:
        ap.error(f"--families: unknown {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    if args.write_tokenizer:
        print(f"wrote {write_tokenizer()}")
    world = dict(families=tuple(args.families.split(",")), max_level=args.max_level)
    if args.show:
        tok = get_tokenizer("mathworld")
        docs, held, _ = generate(args.seed, args.show, teacher_error_rate=args.teacher_error_rate, n_eval=5, **world)
        for i, doc in enumerate(docs):
            print(f"===== document {i}, raw =====\n" + "".join(c["text"] for c in doc))
            ids = augmented_document(tok, [c["text"] for c in doc], [c["thought"] for c in doc], (args.seed, i))
            print(f"===== document {i}, thought-augmented =====\n" + show(tok, ids) + "\n")
    if args.out_dir:
        t0 = time.time()
        meta = prepare(args.out_dir, args.seed, args.n_docs, warm_fraction=args.warm_fraction,
                       teacher_error_rate=args.teacher_error_rate, warm_max_level=args.warm_max_level,
                       warm_long_share=args.warm_long_share, n_eval=args.n_eval, n_valid=args.n_eval, **world)
        secs, mb = time.time() - t0, sum(os.path.getsize(os.path.join(args.out_dir, f"{s}.chunks.jsonl"))
                                         for s in ("warm", "boot", "val")) / 1e6
        print(json.dumps(meta, indent=1))
        print(f"{args.n_docs} documents ({mb:.2f} MB of chunk files) prepared in {secs:.1f}s: {mb / secs:.2f} MB/s")


if __name__ == "__main__":
    main(sys.argv[1:])
