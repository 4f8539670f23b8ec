"""The whole EM loop on the CPU smoke preset: every stage's files, the results table, and resuming."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from data.files import open_bin, read_chunks, read_jsonl, read_thoughts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def em(run_dir, *args):
    cmd = [sys.executable, "em.py", "config/em_cpu_smoke.py", f"--run_dir={run_dir}", "--threads=1", *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def table(run_dir):
    rows = json.load(open(os.path.join(run_dir, "results.json")))["rows"]
    # everything but times and speeds must agree between runs
    timing = ("wall_s", "train_s", "chunks_per_s", "decode_tokens_per_s", "timings", "timing_fractions")
    keep = lambda r: {k: v for k, v in r.items() if k not in timing and not (k == "estep" and isinstance(v, dict))}
    return {name: (keep(r), keep(r.get("estep", {})), r.get("val")) for name, r in rows.items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("em") / "full")
    out = em(d)
    return d, out


def test_every_stage_leaves_its_files_and_the_table_has_every_row(full_run):
    d, out = full_run
    for f in ["data/meta.json", "data/warm_aug.bin", "data/boot.chunks.jsonl", "data/boot.gold.jsonl", "data/eval.jsonl",
              "data/valid.jsonl", "data/background.bin", "base/init.pt", "base/ckpt.pt", "m0/ckpt.pt", "m0/eval/problems.jsonl", "raw_token_match/ckpt.pt", "raw_flop_match/ckpt.pt",
              "iter1/estep/thoughts.jsonl", "iter1/estep/aug.bin", "iter1/estep/summary.json", "iter2/mstep/ckpt.pt",
              "iter2/mstep/eval/problems.jsonl", "results.md", "results.json"]:
        assert os.path.exists(os.path.join(d, f)), f
    rows = json.load(open(os.path.join(d, "results.json")))["rows"]
    assert list(rows) == ["raw-token-match", "raw-FLOP-match", "M0 (warm start)", "EM iteration 1", "EM iteration 2"]
    for name, r in rows.items():
        assert 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1 and r["n"] == 40, name
    # every latent training gets the same budget; raw-token-match sees the raw tokens for the same epochs
    latent = {rows[n]["tokens"] for n in ("raw-FLOP-match", "EM iteration 1", "EM iteration 2")}
    assert len(latent) == 1 and rows["raw-token-match"]["tokens"] < latent.pop()
    # M_0 has its own budget: m0_epochs (1.0 in the smoke preset) passes over the warm-start split
    warm = json.load(open(os.path.join(d, "data", "stage.json")))["warm_aug"]
    assert warm <= rows["M0 (warm start)"]["tokens"] < warm + 256 * 8
    e = rows["EM iteration 1"]["estep"]
    assert e["K"] == 2 and 1 <= e["ess"] <= 2 and e["elbo"] < 0 and 0 <= e["agree_chosen"] <= 1
    md = open(os.path.join(d, "results.md")).read()
    assert "| EM iteration 2 |" in md and "| raw-FLOP-match |" in md
    # every latent model's held-out ELBO, on validation chunks (10 documents), K = 1, 2, 4 from one set of samples
    for name, sub in (("M0 (warm start)", "m0"), ("EM iteration 1", "iter1/mstep"), ("EM iteration 2", "iter2/mstep")):
        held = json.load(open(os.path.join(d, sub, "heldout", "stage.json")))
        assert held["elbo_by_k"] == rows[name]["heldout_elbo"] and list(held["elbo_by_k"]) == ["1", "2", "4"]
        assert held["chunks"] == sum(1 for line in open(os.path.join(d, "data", "val.chunks.jsonl"))
                                     if json.loads(line)["doc"] in {f"val{i}" for i in range(10)})
        assert all(v < 0 for v in held["elbo_by_k"].values()), held
    assert "heldout_elbo" not in rows["raw-FLOP-match"] and "(-val raw loss)" in md
    # the bootstrap split's gold thoughts are never trained on: no M-step bin is built from boot.gold.jsonl
    meta = json.load(open(os.path.join(d, "iter1", "estep", "meta.json")))
    assert all("gold" not in str(b.get("thoughts", "")) for b in meta["bins"].values())


def test_the_papers_other_uses_of_the_documents(full_run, tmp_path):
    """--raw_fresh and --wrap (the paper's Section 3 rows) on the smoke run's corpus and base: raw-fresh reads unique
    documents once, none of them a bootstrap document; WRAP reads every document and two rephrasings of it; WRAP-CoT
    reads the documents with their gold derivations as plain text, and is prompted with derivations inline."""
    from data.tokenizer import get_tokenizer
    d_full, _ = full_run
    d = str(tmp_path / "section3")
    tok = get_tokenizer("mathworld")
    out = em(d, f"--reuse_from={d_full}", "--em=False", "--baselines=False", "--raw_fresh=True", "--wrap=True",
             "--worth=2,", "--finetune_eval=True", "--finetune_problems=50")
    # the plan announced up front holds the fine-tunings too (of its own models, not of the shared M_0), and every
    # stage's "k of N" counts against it
    made = ["raw_fresh", "wrap", "wrap_cot", "worth_x2"]
    assert re.search(r"(\d+) stages to run: (.*?);", out).groups() == ("8", ", ".join(made + [f"{n}/finetune" for n in made]))
    assert re.findall(r"---- (\S+) \(stage (\d+) of the (\d+) ", out) == [  # run in the order announced
        (n, str(k), "8") for k, n in enumerate(made + [f"{n}/finetune" for n in made], 1)]
    results = json.load(open(os.path.join(d, "results.json")))
    rows = results["rows"]  # beside the shared rows of the smoke run
    assert list(rows)[:6] == ["raw-token-match", "raw-FLOP-match", "raw-fresh", "rephrased (WRAP)",
                              "inline thoughts (WRAP-CoT)", "raw, 2x the unique tokens"]
    # the thought-worth curve: raw-FLOP-match's unique tokens at 1x, twice as many, and raw-fresh's
    x = [p["unique_x"] for p in results["worth"]["curve"]]
    assert x[0] == 1.0 and 2.0 <= x[1] < 2.1 and x[2] == rows["raw-fresh"]["unique_x"] > 2.1
    assert list(results["worth"]["placed"]) == ["M0 (warm start)"]  # the one latent row --reuse_from shares
    # the fine-tuning evaluation of every model this run trained (not the shared ones): 2 seeds each, on
    # 50 solved problems none of which is held out, spelt as the model's own training spelt them
    for name, r in results["rows"].items():
        if name not in ("raw-token-match", "raw-FLOP-match", "M0 (warm start)"):  # shared models: their own run's
            f = r["finetune"]
            assert len(f["seeds"]) == 2 and f["min"] <= f["mean"] <= f["max"], name
    solved = [r for _, r in read_jsonl(os.path.join(d, "finetune_data", "problems_50_seed0.jsonl"))]
    held = {r["problem"] for _, r in read_jsonl(os.path.join(d_full, "data", "eval.jsonl"))}
    assert len(solved) == 50 and not {r["problem"] for r in solved} & held
    latent_ids = set(tok.latent_ids)
    assert not os.path.exists(os.path.join(d, "m0", "finetune"))  # M_0 is the smoke run's, shared: not fine-tuned here
    assert not set(open_bin(os.path.join(d, "wrap_cot", "finetune", "solved_50.bin")).tolist()) & latent_ids
    budget = rows.pop("raw-FLOP-match")["tokens"]
    rows = {n: rows[n] for n in list(rows)[1:4]}
    assert all(r["tokens"] == budget and r["n"] == 40 and r["latent"] is False for r in rows.values())
    text = lambda path: {"".join(c["text"] for c in doc) for doc in read_chunks(path)}
    boot, fresh = text(os.path.join(d_full, "data", "boot.chunks.jsonl")), text(os.path.join(d, "raw_fresh", "fresh.chunks.jsonl"))
    assert fresh and not fresh & boot
    passes = json.load(open(os.path.join(d, "raw_fresh", "meta.json")))["bins"]["passes.bin"]
    assert passes["passes"] == 1 and passes["tokens"] >= budget  # read once: no document repeats
    wrapped = read_chunks(os.path.join(d, "wrap", "wrap.chunks.jsonl"))
    n_docs = sum(len(read_chunks(os.path.join(d_full, "data", f"{s}.chunks.jsonl"))) for s in ("warm", "boot"))
    assert len(wrapped) == 2 * n_docs and all("Start at" not in c["text"] for doc in wrapped for c in doc)
    inline = {c["id"]: c["text"] for doc in read_chunks(os.path.join(d, "wrap_cot", "inline.chunks.jsonl")) for c in doc}
    gold = read_thoughts(os.path.join(d_full, "data", "boot.gold.jsonl"))
    assert all(inline[i].startswith(f"Solution: {z}\nFinal Answer: ") for i, z in gold.items() if not i.endswith(":0"))
    assert not set(open_bin(os.path.join(d, "wrap_cot", "inline_raw.bin")).tolist()) & set(tok.latent_ids)
    prompt = next(r for _, r in read_jsonl(os.path.join(d, "wrap_cot", "eval", "problems.jsonl")))["prompt"]
    assert "\nSolution: " in prompt and "=>" in prompt  # the exemplars show their derivations inline


def test_interrupted_run_resumes_to_the_same_table(full_run, tmp_path):
    d_full, _ = full_run
    d = str(tmp_path / "cut")
    out = em(d, "--stop_after=iter1/estep")
    assert "stopping after iter1/estep" in out and not os.path.exists(os.path.join(d, "results.json"))
    out = em(d)
    assert "---- m0" not in out and "---- iter1/mstep" in out  # finished stages are not run again
    assert table(d) == table(d_full)


def test_killed_anywhere_resumes_to_the_same_table(full_run, tmp_path):
    """SIGKILL (no clean-up runs) during the data stage, the base pretraining, M_0's training and the E-step; each
    time the same command resumes, and the finished run's table equals the uninterrupted one."""
    import signal
    import time
    d_full, _ = full_run
    d = str(tmp_path / "killed")
    cmd = [sys.executable, "em.py", "config/em_cpu_smoke.py", f"--run_dir={d}", "--threads=1"]
    for marker in ("data/.partial", "base/log.jsonl", "m0/log.jsonl", "iter1/estep/settings.json"):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while not os.path.exists(os.path.join(d, marker)) and p.poll() is None and time.time() - t0 < 300:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert os.path.exists(os.path.join(d, marker)), marker
        assert not os.path.exists(os.path.join(d, "results.json")), marker  # it was killed before the end
    em(d)
    assert table(d) == table(d_full)


def test_a_finished_stage_is_not_served_for_other_settings(full_run):
    d, _ = full_run
    before = open(os.path.join(d, "results.md")).read()
    cmd = [sys.executable, "em.py", "config/em_cpu_smoke.py", f"--run_dir={d}", "--threads=1", "--K=3"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "iter1/estep/stage.json" in r.stderr and "K=2" in r.stderr and "K=3" in r.stderr, r.stderr[-2000:]
    assert open(os.path.join(d, "results.md")).read() == before  # nothing was rewritten


def test_report_replaces_results_whole(tmp_path):
    from report import write_results
    d = tmp_path / "run"
    d.mkdir()
    (tmp_path / "old.md").write_text("the old table\n")
    os.link(tmp_path / "old.md", d / "results.md")  # a second name: an in-place rewrite would change it too
    write_results({"run_dir": str(d), "iters": 0, "K": 2, "selection": "importance", "continue_from_previous": False})
    assert (tmp_path / "old.md").read_text() == "the old table\n"
    assert "| run |" in (d / "results.md").read_text()
    assert sorted(os.listdir(d)) == ["report.html", "results.json", "results.md"]


def test_the_whole_loop_runs_on_a_prepared_real_corpus(tmp_path):
    """em.py --data_dir: GSM8K's first 120 training problems as the corpus (their worked solutions as the warm-start
    thoughts, data/prepare.py gsm8k), a tokenizer fitted to them recorded in the directory, a fresh base (no background
    text), GSM8K test rows as the evaluation set; every stage runs and the gold-based figures come from the
    solutions of the bootstrap split."""
    shared = os.path.join(os.path.dirname(ROOT), "shared", "data", "gsm8k")
    if not os.path.exists(os.path.join(shared, "train.jsonl")):
        pytest.skip(f"GSM8K not found at {shared} (the shared data sets beside the repository)")
    data = str(tmp_path / "gsm8k")
    r = subprocess.run([sys.executable, "-m", "data.prepare", "gsm8k", f"--train={shared}/train.jsonl",
                        f"--test={shared}/test.jsonl", f"--out_dir={data}", "--limit=120", "--val_fraction=0.25",
                        "--tokenizer=fit:200"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = str(tmp_path / "run")
    em(d, f"--data_dir={data}", "--base_epochs=0", "--iters=1", "--eval_limit=6", "--eval_shots=0",
       "--eval_max_new_tokens=16", "--max_thought_tokens=24", "--train_overrides={'block_size': 256, 'n_layer': 1}")
    rows = json.load(open(os.path.join(d, "results.json")))["rows"]
    assert set(rows) >= {"M0 (warm start)", "raw-token-match", "raw-FLOP-match", "EM iteration 1"}
    assert all(r["n"] == 6 for r in rows.values())
    e = rows["EM iteration 1"]["estep"]
    assert e["chunks"] > 0 and e["gold_chunks"] > 0 and e["agree_chosen"] is not None
    assert json.load(open(os.path.join(d, "m0", "eval", "results.json")))["data"].endswith("eval.jsonl")
    assert os.listdir(os.path.join(d, "data")) == ["stage.json"]  # the corpus is read where it is, never copied
    ck = torch.load(os.path.join(d, "m0", "ckpt.pt"), weights_only=False)
    assert ck["tokenizer"] == os.path.join(data, "tokenizer-200.tiktoken") and ck["model_args"]["vocab_size"] == 256 + 200 + 5


def test_seeds_runs_each_seed_as_the_same_run_alone_and_writes_their_page(tmp_path):
    # the official reading of the corpus (whole passes, a coin per pass): em.py's other tests run the default windows
    small = ["--iters=1", "--baselines=False", "--n_docs=60", "--eval_limit=8", "--sampler=passes", "--coin=per_pass"]
    d = str(tmp_path / "sweep")
    out = em(d, "--seeds=0,1", *small)
    assert "2 seeds, 1 at a time" in out
    for s in (0, 1):
        cfg = json.load(open(os.path.join(d, f"seed{s}", "results.json")))["config"]
        assert cfg["seed"] == cfg["data_seed"] == s and cfg["n_docs"] == 60 and cfg["sampler"] == "passes"
        assert os.path.exists(os.path.join(d, f"seed{s}", "iter1", "mstep", "passes.bin"))
    md = open(os.path.join(d, "seeds.md")).read()
    assert "seed=0" in md and "seed=1" in md and "EM iteration 1" in md
    alone = str(tmp_path / "alone")
    em(alone, "--seed=1", "--data_seed=1", *small)
    assert table(os.path.join(d, "seed1")) == table(alone)
    bad = subprocess.run([sys.executable, "em.py", "--seeds=0,x"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "seeds" in bad.stderr


def test_the_plan_estimates_the_timed_stages_and_names_the_untimed_ones(tmp_path, capsys):
    """The first line's ETA: measured stage kinds are summed; a kind never timed (a fine-tuning) is named, not
    counted as 0 minutes, and a plan of untimed stages only gets no figure at all."""
    sys.path.insert(0, ROOT)
    import em
    cfg = {"run_dir": str(tmp_path), "stop_after": ""}
    em.Stages(cfg, "cpu", ["base", "m0", "m0/finetune", "iter1/mstep/finetune"])
    expected = em.EXPECTED_MIN["cpu"]["base"] + em.EXPECTED_MIN["cpu"]["m0"]
    assert f"expected about {expected:.0f} min (measured for the default settings), plus 2 not timed yet (finetune)" \
        in capsys.readouterr().out
    os.makedirs(tmp_path / "base")
    open(tmp_path / "base" / "stage.json", "w").write("{}")  # done: not in the plan
    em.Stages(cfg, "cpu", ["base", "m0/finetune"])
    assert "1 stages to run: m0/finetune; no time estimate yet" in capsys.readouterr().out
