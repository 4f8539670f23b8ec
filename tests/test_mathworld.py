import filecmp
import os

import pytest

from data.files import open_bin, read_chunks, read_jsonl, read_thoughts
from data.mathworld import (DEFAULT_FAMILIES, FAMILIES, STEP_WORDINGS, generate, prepare, rephrase, thought_result)
import numpy as np
import re
from data.tokenizer import get_tokenizer

KNOBS = dict(n_docs=40, n_val_docs=10, n_eval=30, n_exemplars=4, n_valid=10, n_background_docs=20)


def test_gold_thoughts_derive_the_stated_answer():
    docs, held, exemplars = generate(seed=3, n_docs=300, n_eval=100)
    n = 0
    for doc in docs:
        assert doc[0]["text"].startswith("Problem:\n") and thought_result(doc[0]["gold"]) is None
        for chunk in doc[1:]:  # each later chunk states the previous problem's result: its thought derives it
            assert chunk["text"].startswith("Final Answer: ")
            assert thought_result(chunk["gold"]) == chunk["text"].split(": ", 1)[1].split("\n")[0]
            n += 1
        assert doc[-1]["text"].endswith("\n\n") and "Problem:" not in doc[-1]["text"]
    assert n >= 900
    assert {p["family"] for p in held} == set(DEFAULT_FAMILIES)
    every, _, _ = generate(seed=3, n_docs=5, n_eval=200, families=FAMILIES)
    assert all(thought_result(c["gold"]) == c["text"].split(": ", 1)[1].split("\n")[0] for d in every for c in d[1:])
    assert all(thought_result(p["gold_thought"]) == p["answer"] for p in held + exemplars)


def test_held_out_problems_never_appear_in_documents():
    docs, held, exemplars = generate(seed=1, n_docs=500, n_eval=200)
    text = "".join(c["text"] for doc in docs for c in doc)
    assert not any(f"Problem:\n{p['problem']}\n" in text for p in held + exemplars)


def test_teacher_error_rate_makes_wrong_thoughts_at_about_that_rate():
    docs, _, _ = generate(seed=0, n_docs=400, teacher_error_rate=0.5, n_eval=10)
    results = [c for doc in docs for c in doc[1:]]
    wrong = sum(thought_result(c["thought"]) != thought_result(c["gold"]) for c in results) / len(results)
    assert 0.3 < wrong < 0.55, wrong  # a wrong step can leave the result unchanged (e.g. under mod)
    clean, _, _ = generate(seed=0, n_docs=50, n_eval=10)
    assert all(c["thought"] == c["gold"] for doc in clean for c in doc)


def test_prepare_is_deterministic_and_complete(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare(a, seed=7, **KNOBS)
    prepare(b, seed=7, **KNOBS)
    names = sorted(f for f in os.listdir(a) if f != "meta.json")
    assert names == sorted(f for f in os.listdir(b) if f != "meta.json")
    for f in names:
        assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f
    assert not any(f.endswith(".tmp") for f in names)
    # splits are disjoint and sized as asked; the bootstrap split's gold thoughts cover its chunks
    warm, boot = read_chunks(os.path.join(a, "warm.chunks.jsonl")), read_chunks(os.path.join(a, "boot.chunks.jsonl"))
    assert len(warm) == 8 and len(boot) == 32
    gold = read_thoughts(os.path.join(a, "boot.gold.jsonl"))
    assert set(gold) == {c["id"] for doc in boot for c in doc}
    rows = [r for _, r in read_jsonl(os.path.join(a, "eval.jsonl"), required=("problem", "solution", "answer"))]
    assert len(rows) == 30 and all(r["solution"].endswith(f"\\boxed{{{r['answer']}}}$.") for r in rows)
    # a second prepare with other settings into the same directory is refused, not mixed in
    try:
        prepare(a, seed=8, **KNOBS)
        raise AssertionError("expected an error")
    except ValueError as e:
        assert "meta.json: made with seed=" in str(e) and "now asked for seed=8" in str(e)


def test_augmented_bin_shows_both_latent_orders(tmp_path):
    d = str(tmp_path)
    prepare(d, seed=0, **KNOBS)
    tok = get_tokenizer("mathworld")
    text = tok.decode(open_bin(os.path.join(d, "warm_aug.bin"), tokenizer="mathworld"))
    assert "<|START_OF_LATENT|><|PRIOR_PREFIX|>" in text and "<|END_OF_LATENT|>Final Answer: " in text
    assert "<|START_OF_LATENT|><|END_OF_LATENT|>Final Answer: " in text and "\nProblem:\n" in text
    assert "<|START_OF_LATENT|><|POSTERIOR_PREFIX|>" in text
    raw = tok.decode(open_bin(os.path.join(d, "warm_raw.bin")))
    assert "LATENT" not in raw and raw.count("<|endoftext|>") == 8


def test_a_killed_preparation_starts_again_and_ends_the_same(tmp_path, monkeypatch):
    """A kill in the middle of prepare (here: an error in the third bin) leaves no meta.json, so the rerun with
    the same settings prepares the directory again instead of refusing it, and ends byte-identical."""
    import data.mathworld
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    prepare(whole, seed=5, **KNOBS)
    real, calls = data.mathworld.build_raw_bin, []

    def dies_on_third(*a, **kw):
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)
    monkeypatch.setattr(data.mathworld, "build_raw_bin", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(cut, seed=5, **KNOBS)
    assert not os.path.exists(os.path.join(cut, "meta.json"))
    monkeypatch.setattr(data.files, "build_raw_bin", real)
    prepare(cut, seed=5, **KNOBS)
    names = sorted(os.listdir(whole))
    assert names == sorted(os.listdir(cut)) and ".partial" not in names
    for f in names:
        assert filecmp.cmp(os.path.join(whole, f), os.path.join(cut, f), shallow=False), f


def test_background_text_holds_other_families_only():
    from data.mathworld import background
    docs = background(0, 50, exclude=("chain", "total", "word"))
    problems = [line for doc in docs for line in doc.split("\n") if line and not line.startswith(("Problem:", "Solution: "))]
    assert len(problems) > 100 and "Solution: " in docs[0]
    assert not any(p.startswith("Start at") or " has " in p or (p.startswith("Compute") and "mod" not in p)
                   for p in problems)


def test_mathworld_tokenizer_keeps_digits_apart_and_words_whole():
    tok = get_tokenizer("mathworld")
    ids = tok.encode("Start at 17, double, then subtract 3.")
    pieces = [tok.decode([i]) for i in ids]
    assert "1" in pieces and "7" in pieces and "17" not in pieces and " 17" not in pieces
    assert " double" in pieces and " subtract" in pieces
    text = "Problem:\n<|END_OF_LATENT|> 7+5=12 => 12\n"
    assert tok.decode(tok.encode(text)) == text and tok.eol not in tok.encode(text)
    assert len(tok.encode("Start at 7, add 5, double, then subtract 3.")) < len(get_tokenizer("byte").encode(
        "Start at 7, add 5, double, then subtract 3.")) / 2


def test_the_mathworld_tokenizer_file_is_the_fit_of_the_worlds_text(tmp_path):
    """data/mathworld.tiktoken is what write_tokenizer fits from tokenizer_text: change the world, fit it again
    (python -m data.mathworld --write_tokenizer)."""
    from data.mathworld import write_tokenizer
    from data.tokenizer import MATHWORLD_BPE
    fresh = write_tokenizer(str(tmp_path / "fit.tiktoken"))
    assert open(fresh).read() == open(MATHWORLD_BPE).read()


def test_steps_valid_tells_a_derivation_from_a_copied_result():
    from data.mathworld import steps_valid
    problem = "Start at 5, subtract 2, add 7, add 4, then triple.\n"
    assert steps_valid("5-2=3; 3+7=10; 10+4=14; 14*3=42 => 42", problem)
    assert not steps_valid("5-2=3; 3+7=10; 10+4=14; 14*3=41 => 42", problem)  # a wrong step
    assert not steps_valid("5-2=3; 3+7=10 => 42", problem)  # the result copied over too few steps
    assert not steps_valid("9+1=10 => 10", problem)  # 9 is not a number of the problem
    assert not steps_valid("5*9=45 => 45", problem)  # 9 is not a number of the problem either
    assert not steps_valid("Exercises.", problem)
    docs, _, _ = generate(3, 40, max_level=4, families=["chain", "word", "total"], n_eval=0)
    for doc in docs:  # every gold derivation of the world passes on the problem it derives
        for prev, chunk in zip(doc, doc[1:]):
            assert steps_valid(chunk["gold"], prev["text"].rsplit("Problem:", 1)[-1])


def test_restate_style_copies_each_steps_words_and_leaves_the_rest_as_it_was():
    from data.mathworld import steps_valid, thought_steps
    terse, _, _ = generate(seed=5, n_docs=60, families=["chain"], max_level=4, n_eval=20)
    docs, held, exemplars = generate(seed=5, n_docs=60, families=["chain"], max_level=4, n_eval=20,
                                     thought_style="restate")
    # the same problems and documents (the style draws no random numbers); only the thoughts differ
    assert [[c["text"] for c in d] for d in docs] == [[c["text"] for c in d] for d in terse]
    for doc, tdoc in zip(docs, terse):
        assert doc[0]["gold"] == tdoc[0]["gold"] == "Exercises."
        for prev, chunk, tchunk in zip(doc, doc[1:], tdoc[1:]):
            problem = prev["text"].rsplit("Problem:\n", 1)[-1].strip()
            steps = chunk["gold"].rsplit(" =>", 1)[0].split("; ")
            words = [s.split(": ")[0] for s in steps]
            # the words are the problem's own, in its order, the last with its "then"
            assert problem == "Start at " + problem.split(" ", 3)[2].rstrip(",") + ", " + ", ".join(words) + "."
            assert [s.split(": ")[1] for s in steps] == tchunk["gold"].rsplit(" =>", 1)[0].split("; ")
            assert thought_result(chunk["gold"]) == thought_result(tchunk["gold"])
            assert thought_steps(chunk["gold"]) == thought_steps(tchunk["gold"]) and steps_valid(chunk["gold"], problem)
    assert all(thought_result(p["gold_thought"]) == p["answer"] for p in held + exemplars)
    assert not steps_valid("add 7: 5+7=12; then triple: 12*3=35 => 35", "Start at 5, add 7, then triple.")
    with pytest.raises(ValueError, match="chain family only"):
        generate(seed=0, n_docs=2, families=["chain", "word"], thought_style="restate")
    with pytest.raises(ValueError, match="thought_style must be one of"):
        generate(seed=0, n_docs=2, families=["chain"], thought_style="verbose")


def test_a_rephrased_problem_has_the_same_answer():
    """Every wording rephrase writes, read back step by step, gives the answer the document states."""
    forms = {f.format(k="").strip(): op for op, fs in STEP_WORDINGS.items() for f in fs}
    def answer_of(statement):  # "Begin with 9. Then plus 3, multiply by 2, ..., and finally subtract 2."
        x, rest = re.match(r"\D*?(\d+)[.;:]? ?(.*)", statement).groups()
        x = int(x)
        for step in re.split(r", next |, and finally |, last |; |, ", re.sub(r"^Then |\. What is the result\?$|\.$", "", rest)):
            k = re.search(r"\d+$", step)
            op = forms[step[:k.start()].strip() if k and not step.startswith(("multiply", "times")) else step]
            x = {"add": lambda: x + int(k[0]), "subtract": lambda: x - int(k[0]), "double": lambda: 2 * x,
                 "triple": lambda: 3 * x}[op]()
        return x
    docs, _, _ = generate(seed=5, n_docs=60, n_eval=0, n_exemplars=0, families=["chain"], max_level=4)
    n = 0
    for d, doc in enumerate(docs):
        text = "".join(c["text"] for c in doc)
        again = rephrase(text, np.random.default_rng(d))
        stated = re.findall(r"Final Answer: (\d+)", again)
        assert stated == re.findall(r"Final Answer: (\d+)", text) and "Start at" not in again
        problems = re.findall(r"Problem:\n(.*)\n", again)
        assert [answer_of(p) for p in problems] == [int(a) for a in stated]
        n += len(problems)
    assert n > 150
    with pytest.raises(ValueError, match="only the chain family"):
        rephrase("Problem:\nSolve 3x+2=11.\n", np.random.default_rng(0))
