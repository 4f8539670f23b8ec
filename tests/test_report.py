"""report.html of a real smoke run: the table, the plots, the thoughts with their weights, escaping, the optional
parts (matplotlib, gold thoughts), a sweep page, and the page as a headless browser renders it."""
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
    """The PNG files are an optional extra: without matplotlib they are left out, the page keeps its svg plots."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

def plots(page):
    """{title: svg} of every inline plot on a page, in page order."""
    return dict(re.findall(r"<svg class='plot'[^>]*aria-label='([^']*)'>(.*?)</svg>", page, re.S))


def points(svg, label):
    """[(x px, y px, tooltip)] of one series' points in a plot: each <circle> carries "label at x: value"."""
    return [(float(x), float(y), t) for x, y, t in re.findall(r"<circle cx='([-\d.]+)' cy='([-\d.]+)'[^>]*><title>"
                                                              r"([^<]*)</title>", svg) if t.startswith(f"{label} at ")]


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
    # the plots: inline svg, with or without matplotlib (its points are checked on synthetic runs below)
    titles = list(plots(page))
    assert titles[:5] == ["accuracy per EM iteration", "thoughts with the gold result", "held-out ELBO per raw token",
                          "E-step ELBO estimate", "effective sample size"]
    assert "M0 (warm start)" in titles and "EM iteration 2" in titles  # their training curves
    assert len(points(plots(page)["accuracy per EM iteration"], "EM")) == 3  # M_0 and two iterations
    assert "<img" not in page
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
    assert "<img" not in text and "matplotlib" not in text and "accuracy per EM iteration" in plots(text)
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
    assert text.count("<table class='results'>") == 2 and "<img" not in text
    assert list(plots(text)) == ["accuracy per EM iteration", "iteration 1 against K",
                                 "accuracy per EM iteration: mean and range of 2 runs"]
    assert (tmp_path / "sweep_by_K.png").exists() == (tmp_path / "sweep.png").exists() == has_matplotlib()
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
    assert dom.count('<svg class="plot"') >= 5 and dom.count("<circle ") > 10
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


def test_the_on_valid_column_is_there_only_when_a_run_evaluated_on_valid_too():
    from report import table
    row = {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "tokens": 1e6}
    head, cells = table({"M0 (warm start)": row}, "valid")
    assert head[1:3] == ["accuracy (95% CI) on valid", "val loss raw / aug"] and len(cells[0]) == len(head)
    head, cells = table({"M0 (warm start)": {**row, "valid": {"accuracy": 0.25}}, "EM iteration 1": row})
    assert head[1:3] == ["accuracy (95% CI) on eval", "on valid"] and [c[2] for c in cells] == ["0.250", ""]


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


# ----------------------------------------------------------------------------- the svg plots, on synthetic runs

def acc(a, **extra):
    return {"accuracy": a, "ci_low": a - 0.05, "ci_high": a + 0.04, "tokens": 1e6, **extra}


def estep(chosen, rnd):
    return {"agree_chosen": chosen, "agree_random": rnd, "elbo": -20.0, "ess": 2.0, "K": 4, "wall_s": 60}


def held(x):
    return {"1": x - 0.2, "2": x - 0.1, "4": x}


# accuracy up then down (0.5, 0.7, 0.6): a plot that sorted or dropped a point would show it
ROWS = {"raw-token-match": acc(0.2), "raw-FLOP-match": acc(0.4), "rephrased (WRAP)": acc(0.45),
        "gold thoughts (oracle)": acc(0.9, heldout_elbo=held(-0.3)), "M0 (warm start)": acc(0.5, heldout_elbo=held(-0.8)),
        "EM iteration 1": acc(0.7, estep=estep(0.5, 0.3), heldout_elbo=held(-0.6)),
        "EM iteration 2": acc(0.6, estep=estep(0.6, 0.45), heldout_elbo=held(-0.5))}


def synthetic_run(path, rows, **cfg):
    """A run dir with only its results.json: all the page needs besides the optional parts (logs, shards)."""
    os.makedirs(path)
    json.dump({"config": {"iters": 2, "K": 4, **cfg}, "rows": rows}, open(os.path.join(path, "results.json"), "w"))
    return str(path)


def linear(pts, values):
    """The points' y pixels are one decreasing linear function of their values: (pixel per unit, pixel at 0)."""
    (y0, v0), (y1, v1) = (pts[0][1], values[0]), (pts[-1][1], values[-1])
    slope = (y1 - y0) / (v1 - v0)
    assert slope < 0 and all(y == pytest.approx(y0 + slope * (v - v0), abs=0.15) for (_, y, _), v in zip(pts, values))
    return slope, y0 - slope * v0


def test_the_page_draws_accuracy_estep_and_heldout_as_svg_without_matplotlib(tmp_path, monkeypatch):
    import report
    monkeypatch.setattr(report, "pyplot", lambda: None)  # as a plain install: no matplotlib
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = open(write_report(synthetic_run(tmp_path / "run", ROWS)), encoding="utf-8").read()
    assert "<img" not in text and "matplotlib" not in text
    figs = plots(text)
    svg = figs["accuracy per EM iteration"]
    em = points(svg, "EM")
    assert [t.split(": ")[1] for _, _, t in em] == ["0.5 (0.45-0.54)", "0.7 (0.65-0.74)", "0.6 (0.55-0.64)"]
    assert em[0][0] < em[1][0] < em[2][0]  # iterations 0, 1, 2 left to right
    slope, at0 = linear(em, [0.5, 0.7, 0.6])  # one scale: the highest accuracy drawn highest, the dip a dip
    assert svg.count("class='err'") == 3
    # the baselines and the oracle as horizontal lines on the same scale, each named in the legend
    hlines = re.findall(r"<line class='hline' [^>]*y1='([-\d.]+)'[^>]*><title>([^<]*)</title>", svg)
    assert [t for _, t in hlines] == ["raw-token-match: 0.2", "raw-FLOP-match: 0.4", "rephrased (WRAP): 0.45",
                                      "gold thoughts (oracle): 0.9"]
    for y, t in hlines:
        assert float(y) == pytest.approx(at0 + slope * float(t.split(": ")[1]), abs=0.15)
        assert f">{t.split(':')[0]}</text>" in svg
    assert [x for x in re.findall(r"text-anchor='middle'>(\d+)</text>", svg)] == ["0", "1", "2"]  # x ticks
    # the E-step's gold agreement per iteration, chosen above random of K
    gold = figs["thoughts with the gold result"]
    chosen, rnd = points(gold, "chosen thought"), points(gold, "one of K at random")
    assert [t.split(": ")[1] for _, _, t in chosen] == ["0.5", "0.6"] and len(rnd) == 2
    linear(chosen + rnd, [0.5, 0.6, 0.3, 0.45])
    # the held-out ELBO: a line per K over iterations 0..2, the oracle's per K as horizontal lines
    elbo = figs["held-out ELBO per raw token"]
    for k, shift in (("1", -0.2), ("2", -0.1), ("4", 0.0)):
        pts = points(elbo, f"K = {k}")
        assert [float(t.split(": ")[1]) for _, _, t in pts] == pytest.approx([-0.8 + shift, -0.6 + shift, -0.5 + shift])
        assert f"<title>oracle, K = {k}: {-0.3 + shift:.4g}</title>" in elbo
    assert elbo.count("<polyline") == 3


def test_a_run_with_no_finished_rows_still_writes_its_page(tmp_path, monkeypatch):
    import report
    monkeypatch.setattr(report, "pyplot", lambda: None)
    run = tmp_path / "run"
    os.makedirs(run)
    cfg = {"run_dir": str(run), "iters": 2, "K": 4}  # as em.py logs a run it has just started
    (run / "invocations.jsonl").write_text(json.dumps({"config": cfg}) + "\n")
    text = open(write_report(str(run)), encoding="utf-8").read()
    assert "no results.json yet" in text and "accuracy per EM iteration: nothing to plot yet" in text
    assert "<svg" not in text and "No E-step or held-out ELBO yet." in text
    # M_0 alone: one point, and a sweep of such runs writes its page too
    only = {"M0 (warm start)": acc(0.5)}
    runs = [synthetic_run(tmp_path / f"k{k}", only, K=k) for k in (1, 2)]
    text = open(write_report(runs[0]), encoding="utf-8").read()
    assert len(points(plots(text)["accuracy per EM iteration"], "EM")) == 1
    text = open(write_sweep(runs, str(tmp_path / "sweep.html")), encoding="utf-8").read()
    assert "iteration 1 against K: nothing to plot yet" in text and not (tmp_path / "sweep.png").exists()


def test_the_sweep_plot_is_the_mean_over_the_min_max_band(tmp_path, monkeypatch):
    import report
    monkeypatch.setattr(report, "pyplot", lambda: None)
    runs = [synthetic_run(tmp_path / f"s{s}", {"raw-FLOP-match": acc(0.4), "M0 (warm start)": acc(m0),
                                               "EM iteration 1": acc(it1)}, seed=s)
            for s, m0, it1 in ((0, 0.5, 0.8), (1, 0.3, 0.6), (2, 0.4, 0.4))]
    text = open(write_sweep(runs, str(tmp_path / "sweep.html")), encoding="utf-8").read()
    svg = plots(text)["accuracy per EM iteration: mean and range of 3 runs"]
    mean = points(svg, "EM, mean (min-max) of 3")
    assert [float(t.split(": ")[1]) for _, _, t in mean] == pytest.approx([0.4, 0.6])
    slope, at0 = linear(mean, [0.4, 0.6])
    for s, values in (("seed=0", [0.5, 0.8]), ("seed=1", [0.3, 0.6]), ("seed=2", [0.4, 0.4])):  # every run thin
        assert [float(t.split(": ")[1]) for _, _, t in points(svg, s)] == pytest.approx(values)
    # the band: the highest run from left to right, then the lowest back
    band = re.findall(r"<polygon [^>]*points='([^']*)'", svg)
    ys = [float(p.split(",")[1]) for p in band[0].split()]
    assert ys == pytest.approx([at0 + slope * v for v in (0.5, 0.8, 0.4, 0.3)], abs=0.15)
    assert "<title>raw-FLOP-match, mean: 0.4</title>" in svg


def test_the_sweep_draws_each_runs_worth_curve_and_places_the_latent_rows(tmp_path, monkeypatch):
    import report
    monkeypatch.setattr(report, "pyplot", lambda: None)
    def run(s, curve, m0, it1):  # raw-FLOP-match at 1x, the worth rows, raw-fresh at about 15x
        rows = {"raw-FLOP-match": acc(curve[0]), "raw, 2x the unique tokens": acc(curve[1], unique_x=2.0),
                "raw, 4x the unique tokens": acc(curve[2], unique_x=4.0), "raw-fresh": acc(curve[3], unique_x=15.0),
                "gold thoughts (oracle)": acc(0.98), "M0 (warm start)": acc(m0), "EM iteration 1": acc(it1)}
        return synthetic_run(tmp_path / f"s{s}", rows, iters=1, seed=s)
    runs = [run(0, (0.4, 0.5, 0.6, 0.7), 0.55, 0.9), run(1, (0.3, 0.4, 0.5, 0.6), 0.2, 0.5)]
    text = open(write_sweep(runs, str(tmp_path / "sweep.html")), encoding="utf-8").read()
    svg = plots(text)["what a thought is worth in raw data"]
    first = points(svg, "raw seed=0")
    assert [float(t.split(": ")[1]) for _, _, t in first] == pytest.approx([0.4, 0.5, 0.6, 0.7])
    assert [t.split(" at ")[1].split(":")[0] for _, _, t in first] == ["1.0x", "2.0x", "4.0x", "15.0x"]
    xs = [x for x, _, _ in first]  # a log axis: 1x, 2x, 4x equally spaced, 15x short of two more steps
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.2)
    assert xs[3] - xs[2] == pytest.approx((xs[1] - xs[0]) * math.log2(15 / 4), abs=0.2)
    slope, at0 = linear(first, [0.4, 0.5, 0.6, 0.7])
    hlines = dict((t.split(": ")[0], (float(y), float(t.split(": ")[1]))) for y, t in
                  re.findall(r"<line class='hline' [^>]*y1='([-\d.]+)'[^>]*><title>([^<]*)</title>", svg))
    # the latent rows: their mean over the runs, on the curves' scale
    assert {k: v for k, (_, v) in hlines.items()} == pytest.approx(
        {"M0 (warm start), mean of 2": 0.375, "EM iteration 1, mean of 2": 0.7, "gold thoughts (oracle), mean of 2": 0.98})
    for y, v in hlines.values():
        assert y == pytest.approx(at0 + slope * v, abs=0.15)
    # each run's placements, in sweep.md: seed 0's M0 halfway from 2x to 4x, seed 1's below its 1x
    md = (tmp_path / "sweep.md").read_text()
    assert "| M0 (warm start): equals a raw model on this many times the unique tokens | 2.8 | < 1 |" in md
    assert "| EM iteration 1: equals a raw model on this many times the unique tokens | > 15 | 4.0 |" in md
    # a sweep where one run has no curve draws none
    synthetic_run(tmp_path / "plain", ROWS, seed=1)
    text = open(write_sweep([runs[0], str(tmp_path / "plain")], str(tmp_path / "sweep2.html")), encoding="utf-8").read()
    assert "what a thought is worth" not in text


def test_a_later_command_without_worth_keeps_the_worth_rows(tmp_path):
    """results.md is what run_dir holds: a command without --worth (a fine-tuning evaluation after it) rewrites the
    table with the thought-worth rows an earlier command trained."""
    from report import collect
    for name, r in (("raw_flop_match", acc(0.4)), ("worth_x4", acc(0.6, unique_x=4.0)), ("worth_x2", acc(0.5, unique_x=2.0))):
        os.makedirs(tmp_path / name)
        json.dump(r, open(tmp_path / name / "stage.json", "w"))
    rows = collect({"run_dir": str(tmp_path), "iters": 0})  # no "worth" in this command's settings
    assert list(rows) == ["raw-FLOP-match", "raw, 2x the unique tokens", "raw, 4x the unique tokens"]


def test_plot_text_is_escaped(tmp_path, monkeypatch):
    import report
    monkeypatch.setattr(report, "pyplot", lambda: None)
    evil = "<b>&'x"
    runs = [synthetic_run(tmp_path / f"r{i}", ROWS, selection=f"{evil}{i}") for i in range(2)]
    text = open(write_sweep(runs, str(tmp_path / "sweep.html")), encoding="utf-8").read()
    assert "<b>" not in text and "&lt;b&gt;&amp;&#x27;x0" in plots(text)["accuracy per EM iteration"]
    svg = report.svg({"title": "<script>t</script>", "xlabel": "a<b", "ylabel": "c&d", "xticks": [(0, "<i>")],
                      "series": [{"label": "<s>", "color": "#000", "pts": [(0, 1.0)]}]})
    assert "<script>" not in svg and "<i>" not in svg and "<s>" not in svg and "a<b" not in svg
    assert "&lt;script&gt;t&lt;/script&gt;" in svg and ">a&lt;b<" in svg and ">c&amp;d<" in svg
