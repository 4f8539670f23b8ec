"""report.html of a real smoke run: the table, the plots, the thoughts with their weights, escaping, the optional
parts (matplotlib, gold thoughts), a sweep page, and the page as a headless browser renders it."""
import base64
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from report import write_report, write_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"



def has_matplotlib():
    """The plots are an optional extra: without matplotlib the page leaves them out (tested on its own below)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

def copy_run(src, dst):
    """The smoke run without its checkpoints and bins (the page reads neither): a copy a test may change."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pt", "*.bin"))
    return str(dst)


def shard(run, t):
    path = os.path.join(run, f"iter{t}", "estep", "shards", "shard_00000.jsonl")
    return path, {r["id"]: r for r in map(json.loads, open(path))}


def blocks(page):
    """{(iteration, chunk id): html of its K thoughts} of the thoughts section."""
    parts = re.split(r"<div class='iter' data-iter='(\d+)' data-chunk='([^']*)'>", page)
    return {(int(parts[i]), parts[i + 1]): parts[i + 2].split("<h3>")[0] for i in range(1, len(parts), 3)}


def softmax_used(samples):
    """The weights the E-step resampled with, recomputed here: truncated thoughts get 0 unless all K are."""
    all_trunc = all(s["truncated"] for s in samples)
    lw = [s["logw"] if all_trunc or not s["truncated"] else -math.inf for s in samples]
    m = max(lw)
    e = [math.exp(x - m) for x in lw]
    return [x / sum(e) for x in e]


@pytest.fixture(scope="module")
def page(smoke_run):
    return open(os.path.join(smoke_run, "report.html"), encoding="utf-8").read()


def test_em_writes_the_page_with_every_row_and_the_plots(smoke_run, page):
    rows = json.load(open(os.path.join(smoke_run, "results.json")))["rows"]
    for name, r in rows.items():
        assert f"<td>{name}</td><td>{r['accuracy']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})</td>" in page
    e = rows["EM iteration 2"]["estep"]
    assert f"<td>{e['elbo']:.2f}</td><td>{e['ess']:.2f}</td><td>{e['agree_chosen']:.3f} / {e['agree_random']:.3f}</td>" in page
    # the table by the problem's number of steps: every rung of the evaluation set, with the E-step's agreement there
    levels = sorted(rows["M0 (warm start)"]["breakdown"]["level"], key=int)
    by_steps = page.split("<h2>By the problem's number of steps</h2>")[1].split("</table>")[0]
    assert "".join(f"<th>{int(n) + 1} steps</th>" for n in levels) in by_steps
    shown = [r for steps, r in e["by_steps"].items() if str(int(steps) - 1) in levels]
    assert shown and all(f"E-step {r['agree_chosen']:.2f} / {r['agree_random']:.2f}" in by_steps for r in shown)
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">', page)
    try:
        import matplotlib  # noqa: F401  (an optional extra: without it the plots are left out, tested below)
    except ImportError:
        imgs = None
    assert imgs is None or [a for a, _ in imgs] == ["accuracy per EM iteration", "E-step ELBO, effective sample size and gold agreement "
                                    "per iteration", "train and validation loss of every training run"]
    assert imgs is None or all(base64.b64decode(b).startswith(PNG) for _, b in imgs)
    assert "http://" not in page and "https://" not in page and "<link" not in page  # nothing to fetch


def test_the_thoughts_are_the_shards_with_their_weights(smoke_run, page):
    got = blocks(page)
    ids = sorted({c for _, c in got})
    assert len(ids) == 4 and sorted(got) == sorted((t, c) for t in (1, 2) for c in ids)  # same chunks every iteration
    chunks = {json.loads(l)["id"]: json.loads(l) for l in open(os.path.join(smoke_run, "data", "boot.chunks.jsonl"))}
    golds = {json.loads(l)["id"]: json.loads(l)["thought"] for l in open(os.path.join(smoke_run, "data", "boot.gold.jsonl"))}
    for c in ids:
        assert chunks[c]["idx"] > 0  # never a document's first chunk, whose thoughts are all "Exercises."
        assert f"<h3>chunk {c}</h3>" in page
        assert f"<span class='gold'>{html.escape(golds[c])}</span>" in page
    for (t, c), block in got.items():
        row = shard(smoke_run, t)[1][c]
        w = softmax_used(row["samples"])
        shown = [float(x) for x in re.findall(r"w = ([0-9.]+)", block)]
        assert len(shown) == len(row["samples"]) == 2
        assert shown == pytest.approx(w, abs=1e-3)
        bars = [float(x) for x in re.findall(r"<div style='width:([0-9.]+)%'>", block)]
        assert bars == pytest.approx([100 * x for x in w], abs=0.1)
        for s in row["samples"]:
            assert f"log w {s['logw']:.2f}" in block and f"log q(Z|X,P) {s['logq']:.2f}" in block
        # the chosen one is marked, and only it
        marked = re.findall(r"<div class='sample( chosen)?'><div class='thought'>\[(\d)\]", block)
        assert [int(k) for m, k in marked if m] == [row["chosen"]] and len(marked) == 2


def test_thought_text_is_escaped(smoke_run, tmp_path, page):
    run = copy_run(smoke_run, tmp_path / "run")
    c = next(iter(blocks(page)))[1]
    path, rows = shard(run, 1)
    evil = "<script>alert('x')</script> & \x00"
    rows[c]["samples"][0]["text"] = evil
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows.values())
    out = write_report(run, str(tmp_path / "r.html"))
    text = open(out, encoding="utf-8").read()
    assert "<script>" not in text and "\x00" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; \\x00" in text


def test_without_matplotlib_or_gold_thoughts_the_rest_stays(smoke_run, tmp_path, monkeypatch):
    run = copy_run(smoke_run, tmp_path / "run")
    os.remove(os.path.join(run, "data", "boot.gold.jsonl"))  # a real corpus has none
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    text = open(write_report(run), encoding="utf-8").read()
    assert "<img" not in text and "<code>pip install matplotlib</code>" in text
    assert "<td>EM iteration 2</td>" in text and len(blocks(text)) == 8
    assert "class='gold'" not in text and "&#10003; gold result" not in text


def test_a_run_without_results_json_shows_its_finished_stages(smoke_run, tmp_path):
    run = copy_run(smoke_run, tmp_path / "run")
    os.remove(os.path.join(run, "results.json"))
    shutil.rmtree(os.path.join(run, "iter2", "mstep"))  # as if iteration 2's M-step were still training
    text = open(write_report(run), encoding="utf-8").read()
    assert "no results.json yet" in text
    assert "<td>EM iteration 1</td>" in text and "<td>EM iteration 2</td>" not in text
    assert len(blocks(text)) == 8  # iteration 2's E-step is done: its thoughts are shown


def test_a_sweep_page_labels_runs_by_what_differs(smoke_run, tmp_path):
    run = copy_run(smoke_run, tmp_path / "k4")
    r = json.load(open(os.path.join(run, "results.json")))
    r["config"]["K"] = 4
    json.dump(r, open(os.path.join(run, "results.json"), "w"))
    out = str(tmp_path / "sweep.html")
    subprocess.run([sys.executable, "-m", "report", smoke_run, run, f"--out={out}"], cwd=ROOT, check=True,
                   capture_output=True)
    text = open(out, encoding="utf-8").read()
    assert "<h3>K=2</h3>" in text and "<h3>K=4</h3>" in text
    # the runs' accuracy plot, iteration 1 against K, and the mean-and-spread plot; the spread table as markdown
    assert text.count("<table class='results'>") == 2 and text.count("data:image/png;base64,") == (3 if has_matplotlib() else 0)
    assert ("Iteration 1 against K" in text) == has_matplotlib()
    assert (tmp_path / "sweep_by_K.png").exists() == has_matplotlib()
    assert "Mean and spread over the runs" in text and (tmp_path / "sweep.md").read_text().startswith("2 runs: K=2, K=4")


def test_a_failing_page_never_fails_the_run(smoke_run, tmp_path, monkeypatch, capsys):
    import report

    def broken(run_dir):
        raise RuntimeError("no ink")
    monkeypatch.setattr(report, "write_report", broken)
    run = copy_run(smoke_run, tmp_path / "run")
    cfg = json.load(open(os.path.join(run, "results.json")))["config"]
    rows = report.write_results({**cfg, "run_dir": run})
    assert "EM iteration 2" in rows and "report.html not written: RuntimeError('no ink')" in capsys.readouterr().out


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH "
                                            "(apt-get install chromium) to render the page headless")
def test_a_browser_renders_the_table_plots_and_thoughts(smoke_run, tmp_path):
    path = os.path.join(smoke_run, "report.html")
    flags = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120).stdout
    assert "<table class=\"results\">" in dom and "<td>EM iteration 2</td>" in dom
    assert dom.count('src="data:image/png;base64,') == (3 if has_matplotlib() else 0)
    assert dom.count('class="iter"') == 8 and dom.count('class="sample chosen"') == 8
    shot = tmp_path / "page.png"
    subprocess.run(flags + ["--window-size=1280,3000", f"--screenshot={shot}", f"file://{path}"], capture_output=True,
                   timeout=120)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 50_000  # a drawn page, not a blank one


def test_transfer_is_this_random_of_k_minus_the_previous_choice():
    from report import table
    row = lambda chosen, rnd: {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "tokens": 1e6,
                               "estep": {"agree_chosen": chosen, "agree_random": rnd, "wall_s": 60}}
    rows = {"M0 (warm start)": {"accuracy": 0.4, "ci_low": 0.3, "ci_high": 0.5, "tokens": 1e6},
            "EM iteration 1": row(0.70, 0.40), "EM iteration 2": row(0.80, 0.65)}
    head, cells = table(rows)
    col = head.index("transfer")
    assert [c[col] for c in cells] == ["", "", "-0.050"]  # 0.65 at iteration 2 against 0.70 chosen at 1


def test_steps_table_gives_each_rung_its_accuracy_agreement_and_transfer():
    from report import results_markdown
    level = lambda *a: {"level": {str(i + 1): {"accuracy": x, "n": 10} for i, x in enumerate(a)}}
    row = lambda acc, steps: {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "tokens": 1e6, "breakdown": acc,
                              "estep": {"agree_chosen": 0.5, "agree_random": 0.3, "wall_s": 60, "by_steps": steps}}
    rung = lambda c, r: {"chunks": 10, "agree_chosen": c, "agree_random": r}
    rows = {"M0 (warm start)": {"accuracy": 0.4, "ci_low": 0.3, "ci_high": 0.5, "tokens": 1e6,
                                "breakdown": level(0.9, 0.2)},
            "EM iteration 1": row(level(0.95, 0.5), {"2": rung(0.9, 0.8), "3": rung(0.6, 0.2)}),
            "EM iteration 2": row(level(0.99, 0.7), {"2": rung(0.95, 0.9), "3": rung(0.8, 0.45)})}
    md = results_markdown({"K": 4, "selection": "importance", "continue_from_previous": False}, rows)
    assert "| run | 2 steps | 3 steps |" in md and "| M0 (warm start) | 0.90 | 0.20 |" in md
    assert "| EM iteration 1 | 0.95; E-step 0.90 / 0.80 | 0.50; E-step 0.60 / 0.20 |" in md
    # iteration 2's random of K on a rung minus iteration 1's chosen on the same rung: +0.00 and -0.15
    assert "| EM iteration 2 | 0.99; E-step 0.95 / 0.90 (+0.00) | 0.70; E-step 0.80 / 0.45 (-0.15) |" in md
    assert md.startswith("K = 4, selection = importance, restart from base")  # temperature 1 (the default) unsaid
    tempered = results_markdown({"K": 4, "selection": "importance", "continue_from_previous": False,
                                 "estep_temperature": 0.7}, rows)
    assert tempered.startswith("K = 4, temperature 0.7, selection = importance")


def test_spread_is_mean_min_max_of_what_every_run_has():
    from report import spread, spread_markdown
    acc = lambda a, **e: {"accuracy": a, "ci_low": a - 0.1, "ci_high": a + 0.1, "tokens": 1e6, "valid": {"accuracy": a / 2},
                          **({"estep": e} if e else {})}
    run = lambda m0, it1, it2, chosen1, random2, **extra: ({"eval_split": "eval"}, {
        "raw-FLOP-match": acc(0.3), "M0 (warm start)": acc(m0), **extra,
        "EM iteration 1": acc(it1, agree_chosen=chosen1, agree_random=0.2),
        "EM iteration 2": acc(it2, agree_chosen=0.9, agree_random=random2)})
    runs = [run(0.5, 0.6, 0.8, 0.7, 0.6), run(0.4, 0.6, 0.5, 0.5, 0.5, **{"gold thoughts (oracle)": acc(0.9)})]
    s = dict(spread(runs))
    assert "gold thoughts (oracle)" not in s  # one run lacks it: left out, not averaged over one
    assert s["M0 (warm start)"]["eval"][:3] == (0.45, 0.4, 0.5) and s["M0 (warm start)"]["valid"][0] == 0.225
    step = s["EM iteration 2"]["step"]  # +0.2 in one run, -0.1 in the other: the min shows the run that falls
    assert abs(step[0] - 0.05) < 1e-9 and abs(step[1] + 0.1) < 1e-9 and abs(step[2] - 0.2) < 1e-9
    transfer = s["EM iteration 2"]["transfer"][3]  # iteration 2's random of K minus iteration 1's chosen, per run
    assert [round(t, 6) for t in transfer] == [-0.1, 0.0] and "transfer" not in s["EM iteration 1"]
    md = spread_markdown(runs, ["seed=0", "seed=1"])
    assert "| EM iteration 2 | 0.650 (0.500-0.800) |" in md and "+0.050 (-0.100 to +0.200)" in md


def test_spread_of_a_valid_split_run_has_no_eval_figure():
    from report import spread
    row = {"accuracy": 0.7, "ci_low": 0.6, "ci_high": 0.8, "tokens": 1e6}
    s = dict(spread([({"eval_split": "valid"}, {"M0 (warm start)": row})] * 2))
    assert "eval" not in s["M0 (warm start)"] and s["M0 (warm start)"]["valid"][0] == 0.7


def test_thought_worth_places_each_latent_row_on_the_raw_curve():
    from report import thought_worth
    rows = {"raw-FLOP-match": {"accuracy": 0.4}, "raw, 2x the unique tokens": {"accuracy": 0.5, "unique_x": 2.0},
            "raw, 4x the unique tokens": {"accuracy": 0.7, "unique_x": 4.0},
            "raw-fresh": {"accuracy": 0.72, "unique_x": 15.0}, "M0 (warm start)": {"accuracy": 0.6},
            "EM iteration 1": {"accuracy": 0.9}, "gold thoughts (oracle)": {"accuracy": 0.3},
            "EM iteration 2": {"accuracy": 0.5}}
    w = thought_worth(rows)
    assert [p["unique_x"] for p in w["curve"]] == [1.0, 2.0, 4.0, 15.0]
    # 0.6 is half way from 2x (0.5) to 4x (0.7): 2 ** 1.5 in log tokens
    assert w["placed"] == {"M0 (warm start)": "2.8", "EM iteration 1": "> 15", "gold thoughts (oracle)": "< 1",
                           "EM iteration 2": "2.0"}
    assert thought_worth({k: v for k, v in rows.items() if not k.startswith("raw, ")}) is None
