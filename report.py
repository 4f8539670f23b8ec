"""
A run's results, written from the files its stages left: results.md and results.json (the table), results.png
(accuracy per EM iteration), and the whole run as one page a class can look at: open run_dir/report.html in any
browser, offline. em.py calls write_results at the end of every run; this module owns every table and plot.

    python -m report runs/default                        # writes runs/default/report.html
    python -m report runs/k1 runs/k4 runs/k8 --out=sweep.html   # several runs side by side (a K or seed sweep),
                                                                # their mean and spread in sweep.md and sweep.png

The page holds:
  - the results table (results.json; for a run still going, the stages finished so far)
  - accuracy per EM iteration with its 95% interval, beside the raw baselines and the oracle
  - per iteration: the E-step's agreement with the gold thoughts, the held-out ELBO at K = 1, 2, 4, the E-step's
    ELBO and effective sample size
  - train and validation loss of every training run (<stage>/log.jsonl)
  - for a few bootstrap chunks, the prefix P, the chunk X, the K thoughts of every iteration with log q, log p,
    log w and their normalised weights, the resampled one marked, and the gold thought where the corpus has one

Everything is inside the one file (CSS inline, plots as inline SVG written here, hover a point for its value): it
can be mailed or put on a course page, and needs nothing beyond requirements.txt. The PNG files (results.png,
sweep.png) are the same figures drawn by matplotlib, an optional extra: without it they are left out.
"""
import argparse
import glob
import html
import json
import math
import os
import re

import torch

from data.files import atomic_open, chunk_prefix, read_chunks, read_jsonl, read_thoughts, write_json
from data.mathworld import thought_result
from sample_thoughts import chunk_stats, eligible_log_w

N_CHUNKS = 4  # bootstrap chunks shown with their thoughts: enough to compare, few enough to read in class
TRAININGS = [("base", "base"), ("M0 (warm start)", "m0"), ("raw-token-match", "raw_token_match"),
             ("raw-FLOP-match", "raw_flop_match"), ("raw-fresh", "raw_fresh"), ("rephrased (WRAP)", "wrap"),
             ("inline thoughts (WRAP-CoT)", "wrap_cot"), ("gold thoughts (oracle)", "oracle")]
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.5em; white-space: pre-wrap; margin: 0.3em 0; }
.note { color: #a60; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.iters { display: grid; grid-template-columns: repeat(auto-fit, minmax(330px, 1fr)); gap: 1em; }
.sample { border: 1px solid #ddd; padding: 0.3em 0.5em; margin: 0.3em 0; font-size: 0.85em; }
.sample.chosen { border: 2px solid #2a7; background: #f2fbf6; }
.thought { font-family: monospace; white-space: pre-wrap; }
.bar { background: #eee; height: 0.7em; }
.bar div { background: #37a; height: 100%; }
.gold { font-family: monospace; background: #fff7d6; padding: 0.2em 0.4em; }
svg.plot { max-width: 100%; height: auto; margin: 0.5em 0; }
svg.plot text { font-size: 11px; fill: #222; }
"""


# ----------------------------------------------------------------------------- reading a run

def read_results(run_dir):
    """(config, rows, note): results.json, or for a run still going the stages finished so far (collect)."""
    path = os.path.join(run_dir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            r = json.load(f)
        return r["config"], r["rows"], ""
    inv = os.path.join(run_dir, "invocations.jsonl")
    if not os.path.exists(inv):
        raise FileNotFoundError(f"{run_dir}: neither results.json nor invocations.jsonl; is it an em.py run_dir?")
    cfg = [row for _, row in read_jsonl(inv)][-1]["config"]
    return cfg, collect({**cfg, "run_dir": run_dir}), "no results.json yet: the rows are the stages finished so far"


def collect(cfg):
    """The result table's rows, read from the stages' files: the one place they are built (another process sharing
    run_dir, em=False, may have made some of them)."""
    rd, rows = cfg["run_dir"], {}
    # every thought-worth row in run_dir, whichever command trained it (a later command without --worth keeps them)
    worth = sorted(int(m.group(1)) for m in (re.fullmatch(r"worth_x(\d+)", os.path.basename(p))
                                              for p in glob.glob(os.path.join(rd, "worth_x*"))) if m)

    def load(name):
        p = os.path.join(rd, name, "stage.json")
        return json.load(open(p)) if os.path.exists(p) else None
    for title, name in (("raw-token-match", "raw_token_match"), ("raw-FLOP-match", "raw_flop_match"),
                        ("raw-fresh", "raw_fresh"), ("rephrased (WRAP)", "wrap"), ("inline thoughts (WRAP-CoT)", "wrap_cot"),
                        ("gold thoughts (oracle)", "oracle"), ("M0 (warm start)", "m0")):
        if load(name):
            rows[title] = load(name)
        if name == "wrap_cot":  # the thought-worth curve's points sit beside raw-fresh
            for m in worth:
                if load(f"worth_x{m}"):
                    rows[worth_row(m)] = load(f"worth_x{m}")
    for t in range(1, cfg["iters"] + 1):
        e, m = load(f"iter{t}/estep"), load(f"iter{t}/mstep")
        if e and m:
            rows[f"EM iteration {t}"] = {**m, "estep": e, "wall_s": m["wall_s"] + e["wall_s"]}
    for title, name in [("gold thoughts (oracle)", "oracle"), ("M0 (warm start)", "m0")] + \
            [(f"EM iteration {t}", f"iter{t}/mstep") for t in range(1, cfg["iters"] + 1)]:
        held = load(f"{name}/heldout")  # em.py: Run.heldout
        if title in rows and held:
            rows[title]["heldout_elbo"] = held["elbo_by_k"]
    dirs = {**{title: name for title, name in TRAININGS}, **{worth_row(m): f"worth_x{m}" for m in worth},
            **{f"EM iteration {t}": f"iter{t}/mstep" for t in range(1, cfg["iters"] + 1)}}
    for title in rows:
        tuned = load(f"{dirs[title]}/finetune") if title in dirs else None  # em.py: Run.finetune_all
        if tuned:
            rows[title]["finetune"] = {k: tuned[k] for k in ("mean", "min", "max", "seeds")}
    return rows


def read_log(path):
    """log.jsonl -> (train [(tokens, loss)], eval [(tokens, {split: loss})]); a resumed run logs some steps twice,
    the last record of a step wins."""
    train, evals = {}, {}
    if os.path.exists(path):
        for _, e in read_jsonl(path):
            if e.get("event") == "train":
                train[e["step"]] = (e["tokens"], e["loss"])
            elif e.get("event") == "eval" and e.get("val"):
                evals[e["step"]] = (e["tokens"], e["val"])
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def trainings(run_dir, cfg):
    """[(title, log.jsonl path)] of every training run that has a log."""
    runs = TRAININGS + [(f"EM iteration {t}", f"iter{t}/mstep") for t in range(1, cfg.get("iters", 0) + 1)]
    return [(title, os.path.join(run_dir, d, "log.jsonl")) for title, d in runs
            if os.path.exists(os.path.join(run_dir, d, "log.jsonl"))]


def by_iteration(rows):
    """[(t, row)]: M_0 is iteration 0, then every finished EM iteration."""
    pts = [(0, rows["M0 (warm start)"])] if "M0 (warm start)" in rows else []
    return pts + sorted((int(k.split()[-1]), v) for k, v in rows.items() if k.startswith("EM iteration"))


def shard_rows(run_dir, t):
    """The E-step rows of iteration t in chunk-file order, read lazily shard by shard (a big run has many)."""
    for path in sorted(glob.glob(os.path.join(run_dir, f"iter{t}", "estep", "shards", "shard_*.jsonl"))):
        for _, row in read_jsonl(path):
            yield row


def pick_chunks(run_dir, iters, where, n):
    """Ids of n chunks worth a look, that every iteration's E-step has reached: not a document's first chunk (no
    prefix, nothing to derive: its thoughts are all "Exercises."), not K alike thoughts, one per document.
    where: {chunk id: (document, index)}. Returns (ids, {t: {id: shard row}})."""
    ts = [t for t in range(1, iters + 1) if os.path.isdir(os.path.join(run_dir, f"iter{t}", "estep", "shards"))]
    if not ts:
        return [], {}
    ids, docs = [], set()
    for row in shard_rows(run_dir, ts[0]):
        doc, i = where.get(row["id"], (None, 0))
        if i > 0 and id(doc) not in docs and len({s["text"] for s in row["samples"]}) > 1:
            ids.append(row["id"])
            docs.add(id(doc))
            if len(ids) == n:
                break
    found = {}
    for t in ts:
        want = set(ids)
        for row in shard_rows(run_dir, t):
            if row["id"] in want:
                found[(t, row["id"])] = row
                want.discard(row["id"])
                if not want:
                    break
    ids = [i for i in ids if all((t, i) in found for t in ts)]
    return ids, {t: {i: found[(t, i)] for i in ids} for t in ts}


# ----------------------------------------------------------------------------- figures: inline SVG, matplotlib PNG
#
# Every plot is described once, as a figure (a plain dict), and drawn twice: as inline SVG on the page (plain
# strings, no dependency: a plain install's page has its pictures) and by matplotlib into the PNG files beside it
# (results.png, sweep.png: an optional extra, for a README or a docs page).
#   figure: {"title", "xlabel", "ylabel", "xticks": [(x, label)] or None for round numbers, "ymin" (optional: a
#            value the y axis must reach, 0 for a count), "xnames" (optional: [(x, name)] for the tooltips of points
#            between ticks), "series": [series]}
#   series: {"label", "color", "dash" ("" solid, else an SVG dash array "6,4"), "width", "opacity", "marker" (the
#            points' radius, 0 for none)} and either "y": a horizontal line across the plot, or "pts": [(x, y)] with
#            optional "err": [(low, high) or None] (error bars) and "band": [(low, high)] (a shaded range)

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]  # matplotlib's C0..C9: the PNG files and the page draw a line in the same colour
# what EM must beat (the raw rows and the paper's Section 3 rows) and what a perfect E-step would give (the oracle),
# each with its own dash: one run gives each a colour too, several runs give each run its colour
BASELINES = [("raw-token-match", "2,3"), ("raw-FLOP-match", "6,4"), ("raw-fresh", "1,2"),
             ("rephrased (WRAP)", "8,3,2,3,2,3"), ("inline thoughts (WRAP-CoT)", "12,4"),
             ("gold thoughts (oracle)", "6,3,2,3")]
ACCURACY = "accuracy per EM iteration"


def color(n):
    return COLORS[n % len(COLORS)]


def iteration(name):
    """The EM iteration of a row: 0 for M_0, t for "EM iteration t", None for every other row."""
    if name == "M0 (warm start)":
        return 0
    return int(name.split()[-1]) if name.startswith("EM iteration") else None


def whole(ts):
    """Ticks at whole iterations: a half iteration means nothing."""
    return [(t, str(t)) for t in sorted(set(ts))]


def accuracy_figure(runs):
    """runs: [(label, rows)]: accuracy per EM iteration with its 95% interval, the baselines and the oracle as
    horizontal lines."""
    series, ts = [], []
    for n, (label, rows) in enumerate(runs):
        pts = by_iteration(rows)
        ts += [t for t, _ in pts]
        if pts:
            series.append({"label": f"EM {label}".strip(), "color": color(n),
                           "pts": [(t, r["accuracy"]) for t, r in pts], "err": [(r["ci_low"], r["ci_high"]) for _, r in pts]})
        for b, (name, dash) in enumerate(BASELINES):
            if name in rows:
                series.append({"label": f"{name} {label}".strip(), "y": rows[name]["accuracy"], "dash": dash,
                                "color": color(n if len(runs) > 1 else b + 1)})
    return {"title": ACCURACY, "xlabel": "EM iteration (0 = warm start M_0)",
            "ylabel": "accuracy on held-out problems", "xticks": whole(ts), "series": series}


def estep_figures(rows):
    """Per iteration: the thoughts with the gold result (the chosen one against one of K at random: what the
    selection adds), the held-out ELBO at K = 1, 2, 4 (the oracle's as lines), the E-step's own ELBO estimate and
    effective sample size. Only the figures a run has."""
    pts = by_iteration(rows)
    ticks = whole(t for t, _ in pts)
    fig = lambda title, ylabel, series, **kw: {"title": title, "xlabel": "EM iteration", "ylabel": ylabel,
                                               "xticks": ticks, "series": series, **kw}
    e = [(t, r["estep"]) for t, r in pts if "estep" in r]
    out = []
    gold = [(t, x) for t, x in e if x.get("agree_chosen") is not None]
    if gold:
        out.append(fig("thoughts with the gold result", "share of chunks", [
            {"label": "chosen thought", "color": color(0), "pts": [(t, x["agree_chosen"]) for t, x in gold]},
            {"label": "one of K at random", "color": color(1), "pts": [(t, x["agree_random"]) for t, x in gold]}]))
    held = [(t, r["heldout_elbo"]) for t, r in pts if r.get("heldout_elbo")]
    oracle = (rows.get("gold thoughts (oracle)") or {}).get("heldout_elbo") or {}
    ks = sorted({k for _, h in held for k in h} | set(oracle), key=int)
    if held:
        series = []
        for n, k in enumerate(ks):
            series.append({"label": f"K = {k}", "color": color(n), "pts": [(t, h[k]) for t, h in held if k in h]})
            if k in oracle:
                series.append({"label": f"oracle, K = {k}", "color": color(n), "y": oracle[k], "dash": "6,3,2,3"})
        out.append(fig("held-out ELBO per raw token", "nats per raw token (higher is better)", series))
    if e:
        out.append(fig("E-step ELBO estimate", "nats per chunk",
                       [{"label": "", "color": color(0), "pts": [(t, x["elbo"]) for t, x in e]}]))
        out.append(fig("effective sample size", "ESS", [
            {"label": "", "color": color(0), "pts": [(t, x["ess"]) for t, x in e]},
            {"label": "K (all weights equal)", "color": "#7f7f7f", "y": e[0][1]["K"], "dash": "2,3"}], ymin=0))
    return out


def training_figures(logs):
    """One figure per training run: train and validation loss against tokens trained."""
    out = []
    for title, path in logs:
        train, evals = read_log(path)
        series = [{"label": "train", "color": color(0), "width": 1, "marker": 0,
                   "pts": [(x / 1e6, y) for x, y in train]}] if train else []
        for n, split in enumerate(sorted({k for _, v in evals for k in v})):
            series.append({"label": f"val {split}", "color": color(n + 1), "marker": 2,
                           "pts": [(x / 1e6, v[split]) for x, v in evals if split in v]})
        out.append({"title": title, "xlabel": "tokens trained (M)", "ylabel": "loss (nats / token)", "xticks": None,
                    "series": series})
    return out


def spread_figure(runs, labels):
    """Accuracy per EM iteration over several runs [(cfg, rows)]: every run thin, their mean bold over the band from
    the lowest to the highest run; the baselines' and the oracle's means as horizontal lines."""
    split = "eval" if all(c.get("eval_split", "eval") == "eval" for c, _ in runs) else "valid"
    series, ts = [], []
    for n, ((c, rows), label) in enumerate(zip(runs, labels)):
        pts = sorted((iteration(k), f[split]) for k, f in run_figures(c, rows).items()
                     if iteration(k) is not None and f[split] is not None)
        series.append({"label": label, "color": color(n), "width": 0.8, "opacity": 0.5, "marker": 2, "pts": pts})
        ts += [t for t, _ in pts]
    s = dict(spread(runs))
    its = sorted((iteration(k), v[split]) for k, v in s.items() if iteration(k) is not None and split in v)
    if its:
        series.append({"label": f"EM, mean (min-max) of {len(runs)}", "color": "#000000", "width": 2.5,
                       "pts": [(t, m[0]) for t, m in its], "band": [(m[1], m[2]) for _, m in its]})
    for name, dash in BASELINES:
        if name in s and split in s[name]:
            series.append({"label": f"{name}, mean", "color": "#7f7f7f", "y": s[name][split][0], "dash": dash})
    return {"title": f"{ACCURACY}: mean and range of {len(runs)} runs", "xlabel": "EM iteration (0 = warm start M_0)",
            "ylabel": f"accuracy on {split}", "xticks": whole(ts), "series": series}


def by_setting_figure(runs, key):
    """A sweep of one numeric setting (K = 1, 2, 4, 8): iteration 1's accuracy against it (on a log2 axis when every
    value is positive), on every split that all runs report, with the 95% interval on the run's own split; M_0
    (shared by --reuse_from) as a line."""
    pts = sorted(((c[key], c, rows) for c, rows in runs if "EM iteration 1" in rows), key=lambda p: p[0])
    log = all(v > 0 for v, _, _ in pts)
    at = (lambda v: math.log2(v)) if log else (lambda v: v)
    figs = [run_figures(c, rows) for _, c, rows in pts]
    series = []
    for n, split in enumerate(("eval", "valid")):
        if not figs or any(f["EM iteration 1"][split] is None for f in figs):
            continue
        own = [(rows["EM iteration 1"]["ci_low"], rows["EM iteration 1"]["ci_high"])
               if c.get("eval_split", "eval") == split else None for _, c, rows in pts]
        series.append({"label": f"EM iteration 1, {split}", "color": color(n), "err": own,
                       "pts": [(at(v), f["EM iteration 1"][split]) for (v, _, _), f in zip(pts, figs)]})
        m0 = [f.get("M0 (warm start)", {}).get(split) for f in figs]
        if all(v is not None for v in m0) and len(set(m0)) == 1:  # one shared M_0: its figure once
            series.append({"label": f"M0, {split}", "color": color(n), "y": m0[0], "dash": "6,4", "opacity": 0.6})
    return {"title": f"iteration 1 against {key}", "xlabel": key + (" (log scale)" if log else ""),
            "ylabel": "accuracy on held-out problems", "xticks": [(at(v), str(v)) for v, _, _ in pts],
            "series": series}


def worth_figure(runs):
    """runs: [(label, rows)], those with a thought-worth curve (em.py --worth) drawn: raw accuracy against unique
    raw tokens at one budget (log2 axis, in multiples of raw-FLOP-match's), one curve per run; M_0, the last EM
    iteration and the oracle as horizontal lines (their mean over several runs). Where a line meets a curve is what
    that row's thoughts are worth in raw data (thought_worth)."""
    runs = [(label, rows, thought_worth(rows)) for label, rows in runs]
    runs = [r for r in runs if r[2]]
    series, xs = [], {1.0}
    for n, (label, rows, w) in enumerate(runs):
        xs |= {p["unique_x"] for p in w["curve"]}
        series.append({"label": f"raw {label}".strip(), "color": color(n), "width": 1.5 if len(runs) == 1 else 1,
                       "pts": [(math.log2(p["unique_x"]), p["accuracy"]) for p in w["curve"]]})
    last = min((max((iteration(k) for k in rows if k.startswith("EM iteration")), default=0) for _, rows, _ in runs),
               default=0)
    latent = ["M0 (warm start)"] + ([f"EM iteration {last}"] if last else []) + ["gold thoughts (oracle)"]
    for i, (name, dash) in enumerate(zip(latent, ("2,3", "6,4", "6,3,2,3"))):
        vals = [rows[name]["accuracy"] for _, rows, _ in runs if name in rows]
        if runs and len(vals) == len(runs):  # a row some run lacks is left out, never averaged over fewer
            series.append({"label": name + (f", mean of {len(runs)}" if len(runs) > 1 else ""), "dash": dash,
                           "color": color(len(runs) + i), "y": sum(vals) / len(vals)})
    ticks = [2 ** i for i in range(math.ceil(math.log2(max(xs))) + 1)]
    return {"title": "what a thought is worth in raw data", "ylabel": "accuracy on held-out problems",
            "xlabel": "unique raw tokens, x raw-FLOP-match's (log scale; one training budget)",
            "xticks": [(math.log2(x), f"{x:g}") for x in ticks], "xnames": [(math.log2(x), f"{x:.1f}x") for x in xs],
            "series": series}


def worth_markdown(runs, labels):
    """Per run: the raw curve's accuracies and where each latent row sits on it (thought_worth), one column a run."""
    worths = [thought_worth(rows) for _, rows in runs]
    curve = lambda w: " / ".join(f"{p['accuracy']:.3f} ({p['unique_x']:.1f}x)" for p in w["curve"])
    names = [n for n in worths[0]["placed"] if all(n in w["placed"] for w in worths)]
    cells = [["raw accuracy (unique raw tokens, x raw-FLOP-match's)"] + [curve(w) for w in worths]]
    cells += [[f"{n}: equals a raw model on this many times the unique tokens"] + [w["placed"][n] for w in worths]
              for n in names]
    return "\n".join(["What a thought is worth in raw data (em.py --worth), per run", ""] +
                     markdown_table(["row"] + labels, cells))


# drawing a figure as inline SVG

PLOT = (560, 240)   # the width and height (px) of a plot's axes: the accuracy plots
PANEL = (300, 170)  # the small panels side by side (the E-step, the training runs)


def y_values(s):
    """Every y a series draws: the axis must hold them all, error bars and bands included."""
    if "y" in s:
        return [s["y"]]
    spans = [e for e in s.get("err") or () if e] + list(s.get("band") or ())
    return [y for _, y in s["pts"]] + [v for e in spans for v in e]


def padded(lo, hi, frac):
    """lo..hi widened by frac of its span on each side (a tenth of the value, or half a unit, when it has no span):
    no point sits on the frame."""
    pad = (hi - lo) * frac or abs(lo) / 10 or 0.5
    return lo - pad, hi + pad


def round_ticks(lo, hi, n=6):
    """The multiples of a round step (1, 2 or 5 times a power of ten) between lo and hi, about n of them."""
    mag = 10 ** math.floor(math.log10((hi - lo) / n))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= (hi - lo) / n)
    return [round(i * step, 12) for i in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def svg(fig, size=PLOT):
    """fig as an inline <svg>: a frame with ticks and axis labels, the series, a legend below. Every point carries
    its value as a tooltip (hover it); every text goes through esc()."""
    series, (width, height) = fig["series"], size
    ys = [y for s in series for y in y_values(s)]
    if not ys:
        return f"<p class='note'>{esc(fig['title'])}: nothing to plot yet.</p>"
    ys += [fig["ymin"]] if "ymin" in fig else []
    xs = [x for s in series for x, _ in s.get("pts", ())] + [x for x, _ in fig["xticks"] or ()]
    (x0, x1), (y0, y1) = padded(min(xs, default=0), max(xs, default=1), 0.04), padded(min(ys), max(ys), 0.06)
    xticks = fig["xticks"] or [(t, f"{t:g}") for t in round_ticks(x0, x1)]
    left, top = 58, 24  # room for the y tick labels and the y label; for the title
    X = lambda x: left + (x - x0) / (x1 - x0) * width
    Y = lambda y: top + (y1 - y) / (y1 - y0) * height
    named = [s for s in series if s.get("label")]
    col = 36 + 6 * max((len(s["label"]) for s in named), default=0)  # about 6 px a character at 11 px
    per_row = max(1, (left + width) // col)
    full_w, full_h = left + width + 12, top + height + 44 + 16 * math.ceil(len(named) / per_row)
    out = [f"<svg class='plot' width='{full_w}' height='{full_h}' viewBox='0 0 {full_w} {full_h}' role='img' "
           f"aria-label='{esc(fig['title'])}'><title>{esc(fig['title'])}</title>",
           f"<text x='{left + width / 2}' y='15' text-anchor='middle' font-weight='bold'>{esc(fig['title'])}</text>"]
    for t in round_ticks(y0, y1):
        out.append(f"<line x1='{left}' x2='{left + width}' y1='{Y(t):.1f}' y2='{Y(t):.1f}' stroke='#e5e5e5'/>"
                   f"<text x='{left - 4}' y='{Y(t) + 4:.1f}' text-anchor='end'>{t:g}</text>")
    for x, label in xticks:
        out.append(f"<line x1='{X(x):.1f}' x2='{X(x):.1f}' y1='{top + height}' y2='{top + height + 4}' stroke='#444'/>"
                   f"<text x='{X(x):.1f}' y='{top + height + 16}' text-anchor='middle'>{esc(label)}</text>")
    out += [f"<rect x='{left}' y='{top}' width='{width}' height='{height}' fill='none' stroke='#888'/>",
            f"<text x='{left + width / 2}' y='{top + height + 32}' text-anchor='middle'>{esc(fig['xlabel'])}</text>",
            f"<text transform='translate(13 {top + height / 2}) rotate(-90)' text-anchor='middle'>"
            f"{esc(fig['ylabel'])}</text>"]
    # a point's tooltip names its x as its tick does (K = 4 on a log axis, not 2), or as the figure names it
    names = {**dict(xticks), **dict(fig.get("xnames", ()))}
    out += [svg_band(s, X, Y) for s in series if s.get("band")]
    out += [svg_series(s, X, Y, (X(x0), X(x1)), names) for s in series]
    for i, s in enumerate(named):
        out.append(svg_key(s, 6 + col * (i % per_row), top + height + 50 + 16 * (i // per_row)))
    return "\n".join(out + ["</svg>"])


def stroke(s):
    dash = f" stroke-dasharray='{s['dash']}'" if s.get("dash") else ""
    return f"stroke='{s['color']}' stroke-width='{s.get('width', 1.5)}' opacity='{s.get('opacity', 1)}'{dash}"


def svg_band(s, X, Y):
    """The shaded range from each point's low to its high."""
    edge = [(x, hi) for (x, _), (_, hi) in zip(s["pts"], s["band"])] + \
           [(x, lo) for (x, _), (lo, _) in reversed(list(zip(s["pts"], s["band"])))]
    return (f"<polygon fill='{s['color']}' fill-opacity='0.15' stroke='none' "
            f"points='{' '.join(f'{X(x):.1f},{Y(y):.1f}' for x, y in edge)}'/>")


def svg_series(s, X, Y, span, names):
    """A series' line, its error bars and its points (each a <circle> with its value as a <title>)."""
    label = esc(s.get("label") or "")
    if "y" in s:
        return (f"<line class='hline' x1='{span[0]:.1f}' x2='{span[1]:.1f}' y1='{Y(s['y']):.1f}' y2='{Y(s['y']):.1f}' "
                f"{stroke(s)}><title>{label}: {s['y']:.4g}</title></line>")
    out = [f"<polyline fill='none' {stroke(s)} points='{' '.join(f'{X(x):.1f},{Y(y):.1f}' for x, y in s['pts'])}'/>"]
    err = s.get("err") or [None] * len(s["pts"])
    for (x, y), e in zip(s["pts"], err):
        if e:
            lo, hi = Y(e[0]), Y(e[1])
            out.append(f"<path class='err' d='M{X(x):.1f},{lo:.1f}V{hi:.1f}M{X(x) - 3:.1f},{lo:.1f}h6M{X(x) - 3:.1f},"
                       f"{hi:.1f}h6' stroke='{s['color']}' fill='none'/>")
        if s.get("marker", 3):
            value = f"{y:.4g}" + (f" ({e[0]:.4g}-{e[1]:.4g})" if e else "")
            out.append(f"<circle cx='{X(x):.1f}' cy='{Y(y):.1f}' r='{s.get('marker', 3)}' fill='{s['color']}' "
                       f"opacity='{s.get('opacity', 1)}'><title>{label} at {esc(names.get(x, f'{x:g}'))}: {value}"
                       f"</title></circle>")
    return "\n".join(out)


def svg_key(s, x, y):
    """One legend entry: a stretch of the series' line (and its point) and its label."""
    dot = "y" not in s and s.get("marker", 3)
    mark = f"<circle cx='{x + 12}' cy='{y - 4}' r='3' fill='{s['color']}'/>" if dot else ""
    return (f"<line x1='{x}' x2='{x + 24}' y1='{y - 4}' y2='{y - 4}' {stroke(s)}/>{mark}"
            f"<text x='{x + 30}' y='{y}'>{esc(s['label'])}</text>")


def panels(figs, none):
    """Small figures side by side; the sentence none when there are none."""
    return "<div class='row'>" + "\n".join(svg(f, PANEL) for f in figs) + "</div>" if figs else f"<p>{esc(none)}</p>"


# drawing a figure by matplotlib (an optional extra) into a PNG file

def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display: draw to memory
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def save_png(plt, fig, path):
    """fig drawn by matplotlib as a png file beside the page, for a README or a docs page."""
    f, ax = plt.subplots(figsize=(6, 4))
    for s in fig["series"]:
        kw = {"color": s["color"], "lw": s.get("width", 1.5), "alpha": s.get("opacity", 1),
              "label": s.get("label") or None, "ls": (0, tuple(float(d) for d in s["dash"].split(","))) if s.get("dash") else "-"}
        if "y" in s:
            ax.axhline(s["y"], **kw)
            continue
        xs, ys = [x for x, _ in s["pts"]], [y for _, y in s["pts"]]
        if s.get("band"):
            ax.fill_between(xs, [lo for lo, _ in s["band"]], [hi for _, hi in s["band"]], color=s["color"], alpha=0.15,
                            lw=0)
        r = s.get("marker", 3)
        marker = {"marker": "o", "markersize": 2 * r} if r else {}
        if s.get("err"):
            err = [e or (y, y) for y, e in zip(ys, s["err"])]  # a point without an interval: no bar
            ax.errorbar(xs, ys, yerr=[[max(0, y - lo) for y, (lo, _) in zip(ys, err)],
                                      [max(0, hi - y) for y, (_, hi) in zip(ys, err)]], capsize=3, **marker, **kw)
        else:
            ax.plot(xs, ys, **marker, **kw)
    if fig["xticks"]:
        ax.set_xticks([x for x, _ in fig["xticks"]], [label for _, label in fig["xticks"]])
    if "ymin" in fig:
        ax.set_ylim(bottom=fig["ymin"])
    ax.set_title(fig["title"], fontsize=10)
    ax.set_xlabel(fig["xlabel"])
    ax.set_ylabel(fig["ylabel"])
    if ax.get_legend_handles_labels()[0]:  # a run with no finished row yet has nothing to label
        ax.legend(fontsize=7)
    f.tight_layout()
    with atomic_open(path, "wb") as out:
        f.savefig(out, format="png", dpi=120)
    plt.close(f)


# ----------------------------------------------------------------------------- html

def esc(text):
    """Any text on the page: html-escaped, and control characters (a young model's thoughts have some; a NUL breaks
    the page) written as \\xNN so they stay visible."""
    return html.escape(re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", str(text)))


def num(x, f):
    return "" if x is None else format(x, f)


def minutes(seconds):
    return "" if seconds is None else f"{seconds / 60:.1f} min"


def table(rows, split="eval"):
    """The results table as (header, [cells of each row]): results.md and the page print the same cells.
    "sound" thoughts have every step true arithmetic on the problem's numbers and the gold result; "complete" ones
    do every operation of the gold derivation in its order (a sound thought can skip some); "transfer" is
    how much of the previous E-step's choice the M-step kept: M_{t-1}'s random-of-K gold agreement at iteration t
    minus iteration t-1's chosen agreement (0 or more: the M-step learnt what the E-step chose)."""
    with_valid = any(r.get("valid") for r in rows.values())  # also_valid: the "on valid" column
    head = ["run", f"accuracy (95% CI) on {split}"] + (["on valid"] if with_valid else []) + ["val loss raw / aug",
            "held-out ELBO K=1 / 2 / 4 (raw rows: minus val raw loss)", "fine-tuned, zero-shot: mean (min-max)",
            "E-step ELBO", "ESS",
            "gold result: chosen / random", "sound: chosen / random", "complete: chosen / random", "transfer",
            "tokens trained", "training time", "E-step time"]
    out, chosen_before = [], None
    for name, r in rows.items():
        e, v = r.get("estep", {}), r.get("val") or {}
        pair = lambda a, b: f"{e[a]:.3f} / {e[b]:.3f}" if e.get(a) is not None else ""
        transfer = (f"{e['agree_random'] - chosen_before:+.3f}" if e.get("agree_random") is not None
                    and chosen_before is not None else "")
        chosen_before = e.get("agree_chosen") if name.startswith("EM iteration") else chosen_before
        out.append([name, f"{r['accuracy']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})"] +
                   ([num((r.get("valid") or {}).get("accuracy"), ".3f")] if with_valid else []) +
                   [f"{num(v.get('raw'), '.3f')} / {num(v.get('aug'), '.3f')}", heldout_cell(name, r),
                    (lambda f: f"{f['mean']:.3f} ({f['min']:.3f}-{f['max']:.3f})" if f else "")(r.get("finetune")),
                    num(e.get("elbo"), ".2f"),
                    num(e.get("ess"), ".2f"), pair("agree_chosen", "agree_random"),
                    pair("sound_chosen", "sound_random"), pair("complete_chosen", "complete_random"), transfer, f"{r['tokens'] / 1e6:.2f}M",
                    minutes(r.get("train_s", 0)), minutes(e.get("wall_s"))])
    return head, out


def worth_row(m):
    return f"raw, {m}x the unique tokens"


def thought_worth(rows):
    """What a thought is worth in raw data (em.py --worth): the raw curve, accuracy against unique raw tokens at
    one compute budget (raw-FLOP-match at 1x, the worth_x rows, raw-fresh), and for every latent row the multiple
    of raw-FLOP-match's unique tokens at which that curve first reaches its accuracy (linear in log tokens between
    points; "< 1" below raw-FLOP-match, "> N" above the curve's end). None without a worth row."""
    if "raw-FLOP-match" not in rows or not any(n.startswith("raw, ") for n in rows):
        return None
    pts = sorted([(1.0, rows["raw-FLOP-match"]["accuracy"])] +
                 [(r["unique_x"], r["accuracy"]) for r in rows.values() if "unique_x" in r])

    def place(acc):
        if acc < pts[0][1]:
            return f"< {pts[0][0]:.0f}"
        for (x0, a0), (x1, a1) in zip(pts, pts[1:]):
            if a0 <= acc <= a1 and a1 > a0:  # the first segment of the curve that reaches acc
                return f"{2 ** (math.log2(x0) + (acc - a0) / (a1 - a0) * math.log2(x1 / x0)):.1f}"
        reached = [x for x, a in pts if a >= acc]  # a flat stretch of the curve at exactly acc
        return f"{reached[0]:.1f}" if reached else f"> {pts[-1][0]:.0f}"
    latent = [n for n in rows if n in ("gold thoughts (oracle)", "M0 (warm start)") or n.startswith("EM iteration")]
    return {"curve": [{"unique_x": x, "accuracy": a} for x, a in pts],
            "placed": {n: place(rows[n]["accuracy"]) for n in latent}}


def heldout_cell(name, r):
    """The held-out ELBO per raw token at K = 1 / 2 / 4 (em.py: Run.heldout). A raw model has no thoughts to
    infer: its row shows minus its validation raw loss, an exact log-likelihood per raw token, but on other windows
    of the validation text and with a longer context than the ELBO's chunks and one-chunk prefix: a neighbour of
    the latent rows' figure, not the same measurement."""
    if r.get("heldout_elbo"):
        return " / ".join(f"{v:.3f}" for _, v in sorted(r["heldout_elbo"].items(), key=lambda kv: int(kv[0])))
    raw = (r.get("val") or {}).get("raw")
    raw_row = not r.get("latent", not name.startswith("raw"))  # runs made before "latent" was recorded: by name
    return f"{-raw:.3f} (-val raw loss)" if raw is not None and raw_row else ""


def steps_table(rows):
    """Accuracy by the problem's number of steps (the embedded world's ladder: level + 1), and for each E-step the
    gold-result agreement chosen / random of K and the transfer on each rung: where the climb and its losses sit.
    None when the evaluation set has no levels."""
    levels = sorted({int(k) for r in rows.values() for k in (r.get("breakdown") or {}).get("level", {})})
    if not levels:
        return None
    head = ["run"] + [f"{n + 1} steps" for n in levels]
    out, chosen_before = [], {}
    for name, r in rows.items():
        acc = (r.get("breakdown") or {}).get("level", {})
        cells = [num((acc.get(str(n)) or {}).get("accuracy"), ".2f") for n in levels]
        e = (r.get("estep") or {}).get("by_steps") or {}
        for i, n in enumerate(levels):
            rung = e.get(str(n + 1))
            if rung:
                before = chosen_before.get(str(n + 1))
                cells[i] += (f"; E-step {rung['agree_chosen']:.2f} / {rung['agree_random']:.2f}"
                             + (f" ({rung['agree_random'] - before:+.2f})" if before is not None else ""))
        chosen_before = {k: v["agree_chosen"] for k, v in e.items()} if e else chosen_before
        out.append([name] + cells)
    return head, out


def markdown_table(head, cells):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, c)) + " |"
                                                                          for c in cells]


def results_markdown(cfg, rows):
    T = cfg.get("estep_temperature", 1.0)
    lines = [f"K = {cfg['K']}, " + (f"temperature {T}, " if T != 1 else "") + f"selection = {cfg['selection']}, "
             f"{'continue from previous' if cfg['continue_from_previous'] else 'restart from base'}", ""]
    lines += markdown_table(*table(rows, cfg.get("eval_split", "eval")))
    worth = thought_worth(rows)
    if worth:
        lines += ["", "What a thought is worth in raw data: raw models at one budget on more unique raw tokens (x "
                  "raw-FLOP-match's), and the multiple at which they match each latent row", "",
                  *markdown_table(["unique raw tokens (x)"] + [f"{p['unique_x']:.1f}" for p in worth["curve"]],
                                  [["raw accuracy"] + [f"{p['accuracy']:.3f}" for p in worth["curve"]]]), "",
                  *markdown_table(["latent row", "equals a raw model on this many times the unique tokens"],
                                  list(worth["placed"].items()))]
    by_steps = steps_table(rows)
    if by_steps:
        lines += ["", "By the problem's number of steps: accuracy; for EM iterations also the E-step's gold-result "
                  "agreement, chosen / random of K, and in brackets the transfer on that rung (random of K minus the "
                  "previous E-step's chosen)", ""] + markdown_table(*by_steps)
    return "\n".join(lines)


def results_table(rows, split="eval"):
    return html_table(*table(rows, split))


def html_table(head, cells):
    out = ["<table class='results'><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in cells]
    return "\n".join(out + ["</table>"])


def settings_line(cfg):
    keys = ("iters", "K", "selection", "n_prefix", "max_thought_tokens", "seed", "n_docs", "mstep_epochs",
            "continue_from_previous", "data_dir", "train_config")
    return "<p>" + esc(", ".join(f"{k} = {cfg[k]}" for k in keys if cfg.get(k) not in (None, ""))) + "</p>"


def weights(samples):
    """The normalised weights the E-step resampled with: softmax of log w, truncated thoughts at 0."""
    lw = eligible_log_w([s["logw"] for s in samples], [s["truncated"] for s in samples])
    return [float(w) for w in torch.softmax(lw, 0)], chunk_stats(samples)


def samples_html(row, gold_result, result_fn):
    w, (elbo, ess) = weights(row["samples"])
    out = [f"<div>chunk ELBO {elbo:.2f}, ESS {ess:.2f} of {len(w)}</div>"]
    for k, (s, wk) in enumerate(zip(row["samples"], w)):
        chosen = k == row["chosen"]
        tags = (["<b>chosen</b>"] if chosen else []) + (["truncated"] if s["truncated"] else [])
        if gold_result is not None and result_fn(s["text"]) == gold_result:
            tags.append("&#10003; gold result")
        out.append(
            f"<div class='sample{' chosen' if chosen else ''}'>"
            f"<div class='thought'>[{k}] {esc(s['text'])}</div>"
            f"<div>log q(Z|X,P) {s['logq']:.2f} &nbsp; log p(Z,X|P) {s['logp']:.2f} &nbsp; log w {s['logw']:.2f}"
            f" &nbsp; w = {wk:.3f} {' '.join(tags)}</div>"
            f"<div class='bar' title='normalised weight {wk:.3f}'><div style='width:{100 * wk:.1f}%'></div></div></div>")
    return "\n".join(out)


def thoughts_section(run_dir, cfg, n):
    data = cfg.get("data_dir") or os.path.join(run_dir, "data")
    chunks = os.path.join(data, "boot.chunks.jsonl")
    if not os.path.exists(chunks):
        return "<p>No bootstrap chunks in this run yet.</p>"
    where = {c["id"]: (doc, i) for doc in read_chunks(chunks) for i, c in enumerate(doc)}
    ids, found = pick_chunks(run_dir, cfg.get("iters", 0), where, n)
    if not ids:
        return "<p>No E-step shards in this run yet.</p>"
    gold_path = os.path.join(data, "boot.gold.jsonl")
    golds = read_thoughts(gold_path) if os.path.exists(gold_path) else {}  # real corpora have no gold thoughts
    result_fn = thought_result  # what "the same result" means for the gold thoughts
    out = [f"<p>{len(ids)} bootstrap chunks, the same in every iteration. Each thought Z was sampled from the "
           "posterior q(Z | X, P) of the previous model; log w = log p(Z, X | P) - log q(Z | X, P); the bars are the "
           "normalised weights softmax(log w) the E-step resampled ONE thought with (green: the one kept).</p>"]
    for cid in ids:
        doc, i = where[cid]
        out.append(f"<h3>chunk {esc(cid)}</h3><div class='row'><div><b>prefix P</b> (previous "
                   f"{cfg.get('n_prefix', 1)} chunks)<pre>{esc(chunk_prefix(doc, i, cfg.get('n_prefix', 1)))}"
                   f"</pre></div><div><b>chunk X</b><pre>{esc(doc[i]['text'])}</pre></div></div>")
        gold_result = None
        if cid in golds:
            gold_result = result_fn(golds[cid])
            out.append(f"<p><b>gold thought</b> (the generator's own; never trained on): "
                       f"<span class='gold'>{esc(golds[cid])}</span></p>")
        out.append("<div class='iters'>")
        for t, rows in found.items():
            out.append(f"<div class='iter' data-iter='{t}' data-chunk='{esc(cid)}'><b>iteration {t}</b>: thoughts "
                       f"from M_{t - 1}\n{samples_html(rows[cid], gold_result, result_fn)}</div>")
        out.append("</div>")
    return "\n".join(out)


def page(title, body):
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


def write_report(run_dir, out=None, n_chunks=N_CHUNKS):
    """run_dir/report.html (or out): the whole run on one self-contained page. Returns its path."""
    cfg, rows, note = read_results(run_dir)
    body = [settings_line(cfg)] + ([f"<p class='note'>{esc(note)}</p>"] if note else [])
    body += ["<h2>Results</h2>", results_table(rows, cfg.get("eval_split", "eval"))]
    by_steps = steps_table(rows)
    if by_steps:
        body += ["<h2>By the problem's number of steps</h2>", "<p class='note'>Accuracy; for EM iterations also the "
                 "E-step's gold-result agreement, chosen / random of K, and in brackets the transfer on that rung.</p>",
                 html_table(*by_steps)]
    body += ["<h2>Accuracy per EM iteration</h2>", svg(accuracy_figure([("", rows)]))]
    if thought_worth(rows):
        body += ["<h2>What a thought is worth in raw data</h2>", svg(worth_figure([("", rows)]))]
    body += ["<h2>The E-step per iteration</h2>", panels(estep_figures(rows), "No E-step or held-out ELBO yet."),
             "<h2>Training curves</h2>", panels(training_figures(trainings(run_dir, cfg)), "No training log yet."),
             "<h2>Thoughts the E-step sampled</h2>", thoughts_section(run_dir, cfg, n_chunks)]
    out = out or os.path.join(run_dir, "report.html")
    with atomic_open(out) as f:  # a reader never opens a half-written page
        f.write(page(f"Latent-thought EM: {os.path.basename(os.path.abspath(run_dir))}", "\n".join(body)))
    return out


def write_results(cfg, log=print):
    """The end of an em.py run: results.md and results.json, results.png when matplotlib is installed (an optional
    extra), and report.html. Returns the rows."""
    rd, rows = cfg["run_dir"], collect(cfg)
    markdown = results_markdown(cfg, rows)
    with atomic_open(os.path.join(rd, "results.md")) as f:  # a reader never sees a half-written table
        f.write(markdown + "\n")
    write_json(os.path.join(rd, "results.json"), {"config": cfg, "rows": rows, "worth": thought_worth(rows)})
    print(markdown, flush=True)
    plt = pyplot()
    if plt is not None and "M0 (warm start)" in rows:
        save_png(plt, accuracy_figure([("", rows)]), os.path.join(rd, "results.png"))
    try:  # the html page is for people; a failure to draw it must never fail the run
        log(f"wrote {write_report(rd)}")
    except Exception as e:
        log(f"report.html not written: {e!r}")
    return rows


# ----------------------------------------------------------------------------- several runs: mean and spread

FIGURES = ("eval", "valid", "step", "chosen", "random", "sound", "transfer")


def run_figures(cfg, rows):
    """{row name: {figure: value}} of one run: accuracy on eval and on valid (a run with eval_split=valid has no
    eval figure), the step from the previous EM row (M_0 for iteration 1), and the E-step's agreement figures."""
    split, out, prev, chosen_before = cfg.get("eval_split", "eval"), {}, None, None
    for name, r in rows.items():
        e = r.get("estep", {})
        f = {"eval": r["accuracy"] if split == "eval" else None,
             "valid": r["accuracy"] if split == "valid" else (r.get("valid") or {}).get("accuracy"),
             "chosen": e.get("agree_chosen"), "random": e.get("agree_random"), "sound": e.get("sound_chosen")}
        if name.startswith("EM iteration") or name == "M0 (warm start)":
            acc = f[split]
            f["step"] = acc - prev if prev is not None and name.startswith("EM iteration") else None
            prev = acc
            if f["random"] is not None and chosen_before is not None:
                f["transfer"] = f["random"] - chosen_before
            chosen_before = f["chosen"] if name.startswith("EM iteration") else chosen_before
        out[name] = f
    return out


def spread(runs):
    """[(row name, {figure: (mean, min, max, [value per run])})] over runs [(cfg, rows)]: the figures of each row
    that every run has (a row or figure some run lacks is left out, never averaged over fewer runs silently)."""
    figs = [run_figures(c, rows) for c, rows in runs]
    names = [n for n in figs[0] if all(n in f for f in figs)]
    out = []
    for n in names:
        stats = {}
        for k in FIGURES:
            vals = [f[n].get(k) for f in figs]
            if all(v is not None for v in vals):
                stats[k] = (sum(vals) / len(vals), min(vals), max(vals), vals)
        out.append((n, stats))
    return out


def spread_markdown(runs, labels):
    """The mean (min-max) of every row over the runs, and each run's own figure: where one run breaks a finding
    shows in its min, and in the per-run column."""
    head = ["run", "accuracy on eval: mean (min-max)", "on valid", "step from the previous row", "gold result: chosen",
            "random of K", "sound: chosen", "transfer", "accuracy per run (" + ", ".join(labels) + ")"]
    cell = lambda s, k: f"{s[k][0]:.3f} ({s[k][1]:.3f}-{s[k][2]:.3f})" if k in s else ""
    cells = []
    for name, s in spread(runs):
        per = s.get("eval") or s.get("valid")
        step = f"{s['step'][0]:+.3f} ({s['step'][1]:+.3f} to {s['step'][2]:+.3f})" if "step" in s else ""
        tr = f"{s['transfer'][0]:+.3f} ({s['transfer'][1]:+.3f} to {s['transfer'][2]:+.3f})" if "transfer" in s else ""
        cells.append([name, cell(s, "eval"), cell(s, "valid"), step, cell(s, "chosen"), cell(s, "random"),
                      cell(s, "sound"), tr, " / ".join(f"{v:.3f}" for v in per[3]) if per else ""])
    return "\n".join([f"{len(runs)} runs: " + ", ".join(labels), ""] + markdown_table(head, cells))


def write_sweep(run_dirs, out):
    """Several runs (a K or seed sweep) on one page: one accuracy plot, their tables side by side."""
    runs = [(d, *read_results(d)) for d in run_dirs]
    # label each run by the settings that differ between them (K=4, seed=1), else by its directory
    keys = [k for k in ("K", "selection", "seed", "n_prefix", "max_thought_tokens", "continue_from_previous")
            if len({json.dumps(c.get(k)) for _, c, _, _ in runs}) > 1]
    label = lambda d, c: ", ".join(f"{k}={c.get(k)}" for k in keys) or os.path.basename(os.path.abspath(d))
    plt = pyplot()  # the png files beside the page, when matplotlib is installed
    body = ["<h2>Accuracy per EM iteration</h2>", svg(accuracy_figure([(label(d, c), rows) for d, c, rows, _ in runs]))]
    stem = os.path.splitext(out)[0]
    swept = keys[0] if len(keys) == 1 and all(isinstance(c.get(keys[0]), (int, float)) for _, c, _, _ in runs) else None
    if swept:  # a sweep of one setting (K): its own plot, on the page and as <out>_by_K.png
        by = by_setting_figure([(c, rows) for _, c, rows, _ in runs], swept)
        body += [f"<h2>Iteration 1 against {swept}</h2>", svg(by)]
        if plt:
            save_png(plt, by, f"{stem}_by_{swept}.png")
    body.append("<h2>Results</h2><div class='row'>")
    for d, c, rows, note in runs:
        body.append(f"<div><h3>{esc(label(d, c))}</h3><p>{esc(d)}</p>{settings_line(c)}"
                    + (f"<p class='note'>{esc(note)}</p>" if note else "") + results_table(rows, c.get("eval_split", "eval"))
                    + "</div>")
    body.append("</div>")
    labels = [label(d, c) for d, c, _, _ in runs]
    pairs = [(c, rows) for _, c, rows, _ in runs]
    markdown = spread_markdown(pairs, labels)
    body += ["<h2>Mean and spread over the runs</h2>", markdown_table_html(markdown)]
    spread_fig = spread_figure(pairs, labels)
    body.append(svg(spread_fig))
    if plt:
        save_png(plt, spread_fig, stem + ".png")
    if all(thought_worth(rows) for _, rows in pairs):  # every run drew the curve (--worth): where each row sits
        worth, worth_md = worth_figure([(lab, rows) for lab, (_, rows) in zip(labels, pairs)]), worth_markdown(pairs, labels)
        markdown += "\n\n" + worth_md
        body += ["<h2>What a thought is worth in raw data</h2>", svg(worth), markdown_table_html(worth_md)]
        if plt:
            save_png(plt, worth, f"{stem}_worth.png")
    with atomic_open(stem + ".md") as f:  # the same table, for a README or a docs page
        f.write(markdown + "\n")
    with atomic_open(out) as f:
        f.write(page(f"Latent-thought EM: {len(runs)} runs", "\n".join(body)))
    return out


def markdown_table_html(markdown):
    """The html of a markdown table (its first line a caption): one table, two formats, the same cells."""
    lines = markdown.split("\n")
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:] if not l.startswith("|---")]
    out = [f"<p>{esc(lines[0])}</p><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in rows[0]) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
    return "\n".join(out + ["</table>"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="One self-contained html page of a run (or of several, side by side).")
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--out", default=None, help="default: RUN_DIR/report.html for one run, sweep.html for several")
    ap.add_argument("--chunks", type=int, default=N_CHUNKS, help="bootstrap chunks shown with their thoughts")
    args = ap.parse_args()
    for d in args.run_dirs:  # a directory that is no run: one line, not a traceback
        if not any(os.path.exists(os.path.join(d, f)) for f in ("results.json", "invocations.jsonl")):
            ap.error(f"{d}: neither results.json nor invocations.jsonl; is it an em.py run_dir?")
    if len(args.run_dirs) == 1:
        path = write_report(args.run_dirs[0], args.out, args.chunks)
    else:
        path = write_sweep(args.run_dirs, args.out or "sweep.html")
    print(f"wrote {path}: open it in a browser")
