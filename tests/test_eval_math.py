import json
import os
import time

import pytest
import torch

import eval_math
from conftest import SHARED_DATA
from data.files import write_jsonl
from data.tokenizer import get_tokenizer
from common import save_checkpoint
from eval_math import evaluate
from grader import extract_answer, grade, is_equiv
from model import GPT, GPTConfig

MATH500 = os.path.join(SHARED_DATA, "math500", "test.jsonl")
GSM8K = os.path.join(SHARED_DATA, "gsm8k", "test.jsonl")


def rows(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not found (the shared data sets sit beside the repository)")
    return [json.loads(l) for l in open(path)]


def test_math500_extraction_and_self_equivalence():
    data = rows(MATH500)
    bad = [(extract_answer(r["solution"]), r["answer"]) for r in data
           if not is_equiv(extract_answer(r["solution"]), r["answer"])]
    assert len(bad) <= 0.01 * len(data), bad[:10]
    assert all(is_equiv(r["answer"], r["answer"]) for r in data)


@pytest.mark.parametrize("pred,gold", [
    ("0.5", "\\frac{1}{2}"), ("\\dfrac{3}{4}", "\\frac34"), ("2, 1", "1, 2"), ("\\{3, 1\\}", "\\{1, 3\\}"),
    ("5 \\text{ cm}", "5"), ("x = 3", "3"), ("2\\sqrt{2}", "\\sqrt{8}"), ("1,000", "1000"), ("90^\\circ", "90"),
    ("50\\%", "50"), ("\\frac{\\pi}{2}", "\\pi/2"), ("\\left(0, 1\\right]", "(0,1]"), ("y = 2x+1", "2x+1=y"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4.0\\end{pmatrix}"),
])
def test_equivalent_rewritings_are_accepted(pred, gold):
    assert is_equiv(pred, gold), grade(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("0.6", "\\frac{1}{2}"), ("(2, 1)", "(1, 2)"), ("[0, 1]", "(0, 1)"), ("2\\sqrt{3}", "\\sqrt{8}"), ("7", "8"),
    ("x^2+1", "(x+1)^2"), (None, "3"),
])
def test_perturbed_answers_are_rejected(pred, gold):
    assert not is_equiv(pred, gold)


def test_math500_answers_perturbed_by_one_are_rejected():
    data = [r for r in rows(MATH500) if r["answer"].strip().lstrip("-").isdigit()]
    assert len(data) > 100
    assert not any(is_equiv(str(int(r["answer"]) + 1), r["answer"]) for r in data)


def test_pathological_input_returns_within_the_limit():
    t = time.time()
    ok, reason = grade("9^{9^{9^{9^{9}}}}", "1", timeout=2.0)
    assert not ok and reason == "timeout" and time.time() - t < 10
    assert is_equiv("x+\\frac{1}{3}", "\\frac13+x", timeout=30)  # the worker is replaced and works again


def test_gsm8k_extraction_gives_the_number_after_hashes():
    for r in rows(GSM8K):
        assert extract_answer(r["answer"]) == r["answer"].split("####")[-1].strip().replace(",", "")


def test_extraction_forms():
    assert extract_answer("so $\\boxed{\\frac{1}{2}}$ and then \\boxed{x^{2}}") == "x^{2}"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("steps\nFinal Answer: 42.\nmore") == "42"
    assert extract_answer("The answer is 17.") == "17"
    assert extract_answer("it costs 1,200 dollars") == "1200"
    assert extract_answer("nothing here") is None


def tiny_ckpt(path, latent):
    tok = get_tokenizer("byte")
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=256, vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(path, m, "byte", latent, config={})
    return path


def problems(tmp_path):
    data = str(tmp_path / "eval.jsonl")
    write_jsonl(data, [{"problem": f"Compute {i}+{i}.", "solution": f"$\\boxed{{{2 * i}}}$", "answer": str(2 * i),
                        "family": "total"} for i in range(1, 6)])
    ex = str(tmp_path / "ex.jsonl")
    write_jsonl(ex, [{"problem": "Compute 7+7.", "solution": "7+7=14", "answer": "14", "thought": "7+7=14 => 14",
                      "raw_solution": "Final Answer: 14"}])
    return data, ex


@pytest.mark.parametrize("latent", [False, True])
def test_evaluate_end_to_end(tmp_path, latent):
    data, ex = problems(tmp_path)
    ck = tiny_ckpt(str(tmp_path / "m.pt"), latent)
    r = evaluate(ck, data, ex, n_shot=1, max_new_tokens=24, batch_size=2, out_dir=str(tmp_path / "out"), device="cpu")
    lines = [json.loads(l) for l in open(tmp_path / "out" / "problems.jsonl")]
    assert r["n"] == 5 == len(lines) and r["accuracy"] == r["correct"] / 5 and r["style"] == ("latent" if latent else "raw")
    assert r["breakdown"]["family"]["total"]["n"] == 5
    if not latent:  # the latent tokens are banned from a raw model's generations
        assert not any("LATENT" in l["generation"] or "PREFIX" in l["generation"] for l in lines)


def test_evaluate_grades_what_the_model_generates(tmp_path, monkeypatch):
    # a model that answers every problem right (through the latent format) scores 1.0; the wrong answer 0.0
    data, ex = problems(tmp_path)
    ck = tiny_ckpt(str(tmp_path / "m.pt"), True)
    tok = get_tokenizer("byte")

    def fake_generate(self, prompts, shift, **kw):
        out = []
        for p in prompts:
            i = int(tok.decode(p).split("Compute ")[-1].split("+")[0])
            out.append(tok.encode(f"{i}+{i}={2 * i + shift}") + [tok.eol] + tok.encode(f"Final Answer: {2 * i + shift}\n\nProblem:\nx"))
        return out, [[0.0] * len(o) for o in out], [False] * len(out)
    for shift, want in ((0, 1.0), (1, 0.0)):
        monkeypatch.setattr(GPT, "generate", lambda self, prompts, **kw: fake_generate(self, prompts, shift, **kw))
        assert evaluate(ck, data, ex, n_shot=1, max_new_tokens=24, device="cpu")["accuracy"] == want


def test_bad_input_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"problem": "a", "answer": "1"}\n{"problem": \n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        eval_math.load_rows(str(p))
    p.write_text('{"problem": "a", "answer": "1"}\n{"text": "no problem here"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: no 'problem'"):
        eval_math.load_rows(str(p))
