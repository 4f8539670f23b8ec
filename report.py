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
  - the E-step's ELBO, effective sample size and agreement with the gold thoughts per iteration
  - train and validation loss of every training run (<stage>/log.jsonl)
  - for a few bootstrap chunks, the prefix P, the chunk X, the K thoughts of every iteration with log q, log p,
    log w and their normalised weights, the resampled one marked, and the gold thought where the corpus has one

Everything is inside the one file (CSS inline, plots as base64 PNG data URIs): it can be mailed or put on a
course page. Plots need matplotlib (an optional extra); without it the page says so and keeps the rest.
"""
import argparse
import base64
import glob
import html
import io
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

    def load(name):
        p = os.path.join(rd, name, "stage.json")
        return json.load(open(p)) if os.path.exists(p) else None
    for title, name in (("raw-token-match", "raw_token_match"), ("raw-FLOP-match", "raw_flop_match"),
                        ("raw-fresh", "raw_fresh"), ("rephrased (WRAP)", "wrap"), ("inline thoughts (WRAP-CoT)", "wrap_cot"),
                        ("gold thoughts (oracle)", "oracle"), ("M0 (warm start)", "m0")):
        if load(name):
            rows[title] = load(name)
        if name == "wrap_cot":  # the thought-worth curve's points sit beside raw-fresh
            for m in cfg.get("worth", ()):
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


# ----------------------------------------------------------------------------- plots (matplotlib optional)

def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display: draw to memory
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def img(plt, fig, alt):
    """A figure as an <img> with a base64 PNG data URI: the page needs no other file."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plot_accuracy(plt, runs):
    """The figure of runs: [(label, rows)]: accuracy per EM iteration with its 95% interval; the baselines and the
    oracle as horizontal lines (what EM must beat, and what a perfect E-step would give)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, (label, rows) in enumerate(runs):
        color = f"C{n}"
        pts = by_iteration(rows)
        if pts:
            ax.errorbar([t for t, _ in pts], [r["accuracy"] for _, r in pts], marker="o", capsize=3, color=color,
                        label=f"EM {label}".strip(),
                        yerr=[[r["accuracy"] - r["ci_low"] for _, r in pts], [r["ci_high"] - r["accuracy"] for _, r in pts]])
        for name, ls in (("raw-token-match", ":"), ("raw-FLOP-match", "--"), ("gold thoughts (oracle)", "-.")):
            if name in rows:
                ax.axhline(rows[name]["accuracy"], ls=ls, color=color if len(runs) > 1 else "gray", alpha=0.8,
                           label=f"{name} {label}".strip())
    ax.set_xlabel("EM iteration (0 = warm start M_0)")
    ax.set_ylabel("accuracy on held-out problems")
    if ax.get_legend_handles_labels()[0]:  # a run with no finished row yet has nothing to label
        ax.legend(fontsize=7)
    return fig


ACCURACY = "accuracy per EM iteration"


def plot_estep(plt, rows):
    """ELBO, effective sample size and gold agreement of every E-step."""
    pts = [(t, r["estep"]) for t, r in by_iteration(rows) if "estep" in r]
    if not pts:
        return ""
    ts = [t for t, _ in pts]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(ts, [e["elbo"] for _, e in pts], marker="o")
    axes[0].set_title("ELBO estimate (nats per chunk)", fontsize=9)
    axes[1].plot(ts, [e["ess"] for _, e in pts], marker="o")
    axes[1].axhline(pts[0][1]["K"], ls=":", color="gray", label="K (all weights equal)")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title("effective sample size", fontsize=9)
    axes[1].legend(fontsize=7)
    if any(e.get("agree_chosen") is not None for _, e in pts):
        g = [(t, e) for t, e in pts if e.get("agree_chosen") is not None]
        axes[2].plot([t for t, _ in g], [e["agree_chosen"] for _, e in g], marker="o", label="chosen thought")
        axes[2].plot([t for t, _ in g], [e["agree_random"] for _, e in g], marker="o", label="one of K at random")
        axes[2].legend(fontsize=7)
    axes[2].set_title("thoughts with the gold result", fontsize=9)
    for ax in axes:
        ax.set_xlabel("EM iteration")
        ax.set_xticks(ts)
    return img(plt, fig, "E-step ELBO, effective sample size and gold agreement per iteration")


def plot_training(plt, logs):
    """One panel per training run: train loss and validation loss against tokens trained."""
    if not logs:
        return ""
    cols = min(3, len(logs))
    nrows = (len(logs) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 2.8 * nrows), squeeze=False)
    for ax, (title, path) in zip(axes.flat, logs):
        train, evals = read_log(path)
        if train:
            ax.plot([x / 1e6 for x, _ in train], [y for _, y in train], lw=1, label="train")
        for split in sorted({k for _, v in evals for k in v}):
            pts = [(x, v[split]) for x, v in evals if split in v]
            ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], marker=".", label=f"val {split}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("tokens trained (M)", fontsize=8)
        ax.set_ylabel("loss (nats / token)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(logs):]:
        ax.axis("off")
    return img(plt, fig, "train and validation loss of every training run")


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
    head = ["run", f"accuracy (95% CI) on {split}", "on valid", "val loss raw / aug",
            "held-out ELBO K=1 / 2 / 4 (raw rows: log-likelihood)", "E-step ELBO", "ESS",
            "gold result: chosen / random", "sound: chosen / random", "complete: chosen / random", "transfer",
            "tokens trained", "training time", "E-step time"]
    out, chosen_before = [], None
    for name, r in rows.items():
        e, v = r.get("estep", {}), r.get("val") or {}
        pair = lambda a, b: f"{e[a]:.3f} / {e[b]:.3f}" if e.get(a) is not None else ""
        transfer = (f"{e['agree_random'] - chosen_before:+.3f}" if e.get("agree_random") is not None
                    and chosen_before is not None else "")
        chosen_before = e.get("agree_chosen") if name.startswith("EM iteration") else chosen_before
        out.append([name, f"{r['accuracy']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})",
                    num((r.get("valid") or {}).get("accuracy"), ".3f"),
                    f"{num(v.get('raw'), '.3f')} / {num(v.get('aug'), '.3f')}", heldout_cell(name, r),
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
    infer: its exact log-likelihood per raw token is minus its validation raw loss, the figure the ELBO bounds."""
    if r.get("heldout_elbo"):
        return " / ".join(f"{v:.3f}" for _, v in sorted(r["heldout_elbo"].items(), key=lambda kv: int(kv[0])))
    raw = (r.get("val") or {}).get("raw")
    raw_row = not r.get("latent", not name.startswith("raw"))  # runs made before "latent" was recorded: by name
    return f"{-raw:.3f} (log-lik.)" if raw is not None and raw_row else ""


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


NO_PLOTS = "<p class='note'>Plots are left out: matplotlib is not installed (<code>pip install matplotlib</code> draws them).</p>"


def write_report(run_dir, out=None, n_chunks=N_CHUNKS):
    """run_dir/report.html (or out): the whole run on one self-contained page. Returns its path."""
    cfg, rows, note = read_results(run_dir)
    plt = pyplot()
    body = [settings_line(cfg)] + ([f"<p class='note'>{esc(note)}</p>"] if note else [])
    body += ["<h2>Results</h2>", results_table(rows, cfg.get("eval_split", "eval"))]
    by_steps = steps_table(rows)
    if by_steps:
        body += ["<h2>By the problem's number of steps</h2>", "<p class='note'>Accuracy; for EM iterations also the "
                 "E-step's gold-result agreement, chosen / random of K, and in brackets the transfer on that rung.</p>",
                 html_table(*by_steps)]
    if plt is None:
        body.append(NO_PLOTS)
    else:
        body += ["<h2>Accuracy per EM iteration</h2>", img(plt, plot_accuracy(plt, [("", rows)]), ACCURACY),
                 "<h2>The E-step per iteration</h2>", plot_estep(plt, rows),
                 "<h2>Training curves</h2>", plot_training(plt, trainings(run_dir, cfg))]
    body += ["<h2>Thoughts the E-step sampled</h2>", thoughts_section(run_dir, cfg, n_chunks)]
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
        fig = plot_accuracy(plt, [("", rows)])
        fig.tight_layout()
        with atomic_open(os.path.join(rd, "results.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
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


def plot_spread(plt, runs, labels):
    """Accuracy per EM iteration: every run thin, their mean bold with the min-max range; the baselines' and the
    oracle's means as horizontal lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    split = "eval" if all(c.get("eval_split", "eval") == "eval" for c, _ in runs) else "valid"
    figs = [run_figures(c, rows) for c, rows in runs]
    for n, (f, label) in enumerate(zip(figs, labels)):
        pts = [(0 if k.startswith("M0") else int(k.split()[-1]), v[split]) for k, v in f.items()
               if (k.startswith("M0") or k.startswith("EM iteration")) and v[split] is not None]
        ax.plot([t for t, _ in pts], [a for _, a in pts], marker=".", lw=0.8, alpha=0.5, color=f"C{n}", label=label)
    s = dict(spread(runs))
    its = sorted((0 if k.startswith("M0") else int(k.split()[-1]), k) for k in s
                 if (k.startswith("M0") or k.startswith("EM iteration")) and split in s[k])
    if its:
        m = [s[k][split] for _, k in its]
        ax.errorbar([t for t, _ in its], [x[0] for x in m], yerr=[[x[0] - x[1] for x in m], [x[2] - x[0] for x in m]],
                    marker="o", lw=2, capsize=4, color="k", label=f"EM, mean (min-max) of {len(runs)}")
        ax.set_xticks([t for t, _ in its])  # iterations are whole numbers
    for name, ls in (("raw-token-match", ":"), ("raw-FLOP-match", "--"), ("gold thoughts (oracle)", "-.")):
        if name in s and split in s[name]:
            ax.axhline(s[name][split][0], ls=ls, color="gray", label=f"{name}, mean")
    ax.set_xlabel("EM iteration (0 = warm start M_0)")
    ax.set_ylabel(f"accuracy on {split}")
    ax.legend(fontsize=7)
    return fig


def plot_by_setting(plt, runs, key):
    """A sweep of one numeric setting (K = 1, 2, 4, 8): iteration 1's accuracy against it, on every split that
    all runs report, with the 95% interval on the run's own split; M_0 (shared by --reuse_from) as a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted((c[key], c, rows) for c, rows in runs if "EM iteration 1" in rows)
    xs, figs = [x for x, _, _ in pts], [run_figures(c, rows) for _, c, rows in pts]
    for n, split in enumerate(("eval", "valid")):
        if not figs or any(f["EM iteration 1"][split] is None for f in figs):
            continue
        ys = [f["EM iteration 1"][split] for f in figs]
        own = [rows["EM iteration 1"] if c.get("eval_split", "eval") == split else None for _, c, rows in pts]
        yerr = [[y - r["ci_low"] if r else 0 for y, r in zip(ys, own)], [r["ci_high"] - y if r else 0 for y, r in zip(ys, own)]]
        ax.errorbar(xs, ys, yerr=yerr if any(own) else None, marker="o", capsize=3, color=f"C{n}", label=f"EM iteration 1, {split}")
        m0 = [f.get("M0 (warm start)", {}).get(split) for f in figs]
        if m0 and all(v is not None for v in m0) and len(set(m0)) == 1:  # one shared M_0: its figure once
            ax.axhline(m0[0], ls="--", color=f"C{n}", alpha=0.6, label=f"M0, {split}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(key)
    ax.set_ylabel("accuracy on held-out problems")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def save_png(plt, fig, path):
    """A figure as a png file beside the page, for a README or a docs page."""
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_sweep(run_dirs, out):
    """Several runs (a K or seed sweep) on one page: one accuracy plot, their tables side by side."""
    runs = [(d, *read_results(d)) for d in run_dirs]
    # label each run by the settings that differ between them (K=4, seed=1), else by its directory
    keys = [k for k in ("K", "selection", "seed", "n_prefix", "max_thought_tokens", "continue_from_previous")
            if len({json.dumps(c.get(k)) for _, c, _, _ in runs}) > 1]
    label = lambda d, c: ", ".join(f"{k}={c.get(k)}" for k in keys) or os.path.basename(os.path.abspath(d))
    plt = pyplot()
    body = ["<h2>Accuracy per EM iteration</h2>",
            img(plt, plot_accuracy(plt, [(label(d, c), rows) for d, c, rows, _ in runs]), ACCURACY) if plt else NO_PLOTS]
    stem = os.path.splitext(out)[0]
    swept = keys[0] if len(keys) == 1 and all(isinstance(c.get(keys[0]), (int, float)) for _, c, _, _ in runs) else None
    if plt and swept:  # a sweep of one setting (K): its own plot, on the page and as <out>_by_K.png
        by = lambda: plot_by_setting(plt, [(c, rows) for _, c, rows, _ in runs], swept)
        body += [f"<h2>Iteration 1 against {swept}</h2>", img(plt, by(), f"accuracy against {swept}")]
        save_png(plt, by(), f"{stem}_by_{swept}.png")
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
    if plt:
        body.append(img(plt, plot_spread(plt, pairs, labels), "accuracy per EM iteration, mean and range of the runs"))
        save_png(plt, plot_spread(plt, pairs, labels), stem + ".png")
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
