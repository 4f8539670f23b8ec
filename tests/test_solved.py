"""data/files.py: build_solved_bin, the fine-tuning evaluation's documents: each model reads a solved problem as
its own evaluation prompt continues it."""
import numpy as np

from data.files import build_solved_bin, open_bin
from data.latent import latent_eval_prompt, raw_eval_prompt
from data.mathworld import inline_exemplar, math_row, problem, result_text
from data.tokenizer import get_tokenizer


def rows(n):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        p = problem(rng, ["chain"], 4)
        r = inline_exemplar({**math_row(p), "thought": p["gold_thought"], "raw_solution": result_text(p).strip()})
        out.append({**r, "gold": r["answer"]})
    return out


def test_each_spelling_continues_its_own_zero_shot_prompt(tmp_path):
    tok = get_tokenizer("mathworld")
    rs = rows(5)
    for latent in (True, False):
        path = str(tmp_path / f"solved_{latent}.bin")
        info = build_solved_bin(tok, rs, path, latent)
        ids = open_bin(path).tolist()
        assert info["docs"] == 5 and len(ids) == info["tokens"]
        docs, cur = [], []
        for t in ids:  # documents end with <|endoftext|>
            cur.append(t)
            if t == tok.eot:
                docs.append(cur)
                cur = []
        for doc, r in zip(docs, rs):
            prompt = (latent_eval_prompt if latent else raw_eval_prompt)(tok, [], r["problem"])[1:]  # after its <eot>
            assert doc[:len(prompt)] == prompt, latent  # the fine-tuning text continues the evaluation prompt
            assert bool(set(doc) & set(tok.latent_ids)) == latent  # latent tokens only in the latent spelling
            assert r["thought"] in tok.decode(doc) and f"Final Answer: {r['answer']}" in tok.decode(doc)
