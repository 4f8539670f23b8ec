"""The repository documents itself: every `docs/method.md, <section>` a comment or page cites is a heading of that
page, the README's file list names every top-level file, the pages it links exist, and imports run one way; and
README.md and docs/*.md tell the truth: every relative link resolves (file and heading anchor), every default a page
states is the code's, every option a page's command spells exists, and method.md's pseudocode names em.py's own."""
import ast
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITATION = re.compile(r"method\.md,\s+(?:#\s+)?([A-Z][^\n]*)")


def headings():
    text = open(os.path.join(ROOT, "docs", "method.md"), encoding="utf-8").read()
    return [m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", text, re.M)]


def sources():
    files = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*.md"))
    for d in ("data", "config", "bench", "docs"):
        files += glob.glob(os.path.join(ROOT, d, "*.py")) + glob.glob(os.path.join(ROOT, d, "*.md"))
    return sorted(files)


def test_every_citation_of_method_md_names_one_of_its_sections():
    sections, bad, n = headings(), [], 0
    for path in sources():
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"method\.md", text):
            line = text[:m.start()].count("\n") + 1
            after = text[m.start():m.start() + 200]
            if re.match(r"method\.md(\)|#|\]|`?\))", after) or os.path.basename(path) == "method.md":
                continue  # a link to the whole page, or the page itself
            cite = CITATION.match(after)
            n += 1
            if not cite or not any(cite.group(1).startswith(s) for s in sections):
                bad.append(f"{os.path.relpath(path, ROOT)}:{line}: {after.splitlines()[0]!r}")
    assert n > 20 and not bad, "\n".join(bad) + f"\nsections: {sections}"


def test_the_readme_names_every_top_level_file_and_its_links_exist():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    listing = readme.split("```")[0]
    top = [f for f in os.listdir(ROOT) if f.endswith((".py", ".txt")) and not f.startswith(".")]
    missing = [f for f in top if not re.search(rf"^    {re.escape(f)}\s", listing, re.M)]
    assert not missing, f"README's file list lacks {missing}"
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), link


def module_of(path):
    return os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")


def test_imports_run_one_way():
    """The project's modules import each other at the top of the file only, and the graph has no cycle."""
    paths = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "data", "*.py"))
    mods = {module_of(p): p for p in paths}
    graph, inner = {}, []
    for name, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found = [t for t in targets if t in mods and t != name]
            if found and node.col_offset > 0:
                inner.append(f"{name}:{node.lineno} imports {found[0]} inside a function")
            deps.update(found)
        graph[name] = deps
    assert not inner, "\n".join(inner)

    def visit(node, stack):
        assert node not in stack, "import cycle: " + " -> ".join(stack + [node])
        for dep in graph[node]:
            visit(dep, stack + [node])
    for name in graph:
        visit(name, [])


# ----------------------------------------------------------------------------- every page tells the truth
# README.md and docs/*.md: their links resolve, the defaults they state are the code's, and the options their
# commands spell exist. Nothing here trains; the slowest test writes the smoke corpus (a few seconds).
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def read(rel):
    return open(os.path.join(ROOT, rel), encoding="utf-8").read()


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def fenced(text):
    """Per line: True inside a ``` fence (the fence lines included)."""
    inside, out = False, []
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            out.append(True)
            inside = not inside
        else:
            out.append(inside)
    return out


def slug(heading):
    """GitHub's anchor of a heading: its text as rendered (links by their text), lowercased, every character but
    letters, digits, spaces, - and _ dropped, each space a -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(rel):
    """The anchors of a page's headings (outside code fences); a repeated one gets -1, -2, ..."""
    text, seen, out = read(rel), {}, set()
    for line, code in zip(text.split("\n"), fenced(text)):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not code:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slugs_follow_githubs_rules():
    assert slug("Where the M-step loses the E-step's choice") == "where-the-m-step-loses-the-e-steps-choice"
    assert slug("M_0's budget: a lottery at 16 passes, too strong from 24") == \
        "m_0s-budget-a-lottery-at-16-passes-too-strong-from-24"
    assert slug("Thoughts that restate each step (`--thought_style=restate`)") == \
        "thoughts-that-restate-each-step---thought_stylerestate"
    assert slug("[The paper](x.md): 1.1B") == "the-paper-11b"


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def test_every_relative_link_of_the_pages_resolves():
    bad, n = [], 0
    for page in PAGES:
        text = read(page)
        code = fenced(text)
        for m in LINK.finditer(text):
            line = line_of(text, m.start())
            target = m.group(1)
            if code[line - 1] or re.match(r"^[a-z]+:", target):  # in a code block; http(s), mailto
                continue
            n += 1
            path, _, anchor = target.partition("#")
            rel = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(os.path.join(ROOT, rel)):
                bad.append(f"{page}:{line}: {target}: no file {rel}")
            elif anchor and rel.endswith(".md") and anchor not in anchors(rel):
                bad.append(f"{page}:{line}: {target}: {rel} has no heading with the anchor #{anchor}")
    assert n > 30 and not bad, "\n".join(bad)


def test_a_broken_link_is_caught(tmp_path, monkeypatch):
    """The link test can fail: a page with a missing file and a missing anchor is reported line by line."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\n## Two words\n\n[ok](#two-words) [bad](#two_words)\n[gone](b.md)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "PAGES", ["docs/a.md"])
    try:
        test_every_relative_link_of_the_pages_resolves()
    except AssertionError as e:
        assert "docs/a.md:5: #two_words" in str(e) and "docs/a.md:6: b.md: no file docs/b.md" in str(e)
    else:
        raise AssertionError("a broken link passed")


# ----------------------------------------------------------------------------- the code's settings, read from source
def _world():
    tree = ast.parse(read("data/mathworld.py"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "WORLD":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    raise AssertionError("data/mathworld.py: no WORLD")


def assignments(rel, config_only=False):
    """A script's top-level `name = literal` assignments (em.py's `mathworld.WORLD["k"]` resolved); config_only: the
    config block only, i.e. those before `DEFAULTS = defaults_of(globals())`, with None for what is not a literal."""
    out, world = {}, None
    for node in ast.parse(read(rel)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if name == "DEFAULTS" and config_only:
            break
        try:
            out[name] = ast.literal_eval(node.value)
        except ValueError:
            src = ast.unparse(node.value)
            m = re.fullmatch(r"mathworld\.WORLD\[['\"](\w+)['\"]\]", src)
            if m:
                world = world or _world()
                out[name] = world[m.group(1)]
            elif config_only:
                out[name] = None
    return {k: v for k, v in out.items() if not k.startswith("_")}


def settings(source):
    """em: em.py's defaults (and its constants); smoke: those with config/em_cpu_smoke.py applied; else a script's."""
    if source == "em":
        return assignments("em.py")
    if source == "smoke":
        return {**assignments("em.py"), **assignments("config/em_cpu_smoke.py")}
    return assignments(source)


WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def as_value(text):
    text = text.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", text) else text
    if text.lower() in WORDS:
        return WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# (page, a regex whose groups capture the values the page states, where the values live, the setting of each group:
# a name, or a function of the settings for a value em.py derives). Every regex must match the page at least once
# (a sentence reworded away fails here, so the row is updated with it) and every match must state the code's value.
ESTEP_SEED_OF_ITER_1 = lambda c: c["seed"] * 1000 + 1  # em.py: Run.em_iterations, seed=cfg["seed"] * 1000 + t
STATED = [
    ("README.md", r"our default gives the E-step (\d+) \(`n_prefix`", "em", ["n_prefix"]),
    ("docs/method.md", r"The E-step's prefix\*\* is one chunk \(`n_prefix = (\d+)`\) and thoughts are at most (\d+) tokens",
     "em", ["n_prefix", "max_thought_tokens"]),
    ("docs/method.md", r"`m0_epochs` \((\d+) passes over the warm-start", "em", ["m0_epochs"]),
    ("docs/method.md", r"we read\s+(\d+) \(M-steps\) to (\d+) \(M_0\)", "em", ["mstep_epochs", "m0_epochs"]),
    ("docs/method.md", r"by default \(`mstep_data = \"(\w+)\"`", "em", ["mstep_data"]),
    ("docs/method.md", r"order every pass \(`sampler = \"(\w+)\"`", "em", ["sampler"]),
    ("docs/method.md", r"one prior / posterior coin for all its passes \(`coin = \"(\w+)\"`\)", "em", ["coin"]),
    ("docs/method.md", r"\(`raw_mix`, the official `mix_in_raw_ratio`, per document and per pass\) is (\d+)", "em",
     ["raw_mix"]),
    ("docs/method.md", r"`heldout_docs` validation\s+documents \((\d+),", "em", ["heldout_docs"]),
    ("docs/method.md", r"that no training reads, K = (\d+) posterior samples per chunk", "em", ["HELDOUT_K"]),
    ("docs/method.md", r"the held-out ELBO \(heldout_docs, K = (\d+)\)", "em", ["HELDOUT_K"]),
    ("docs/stages.md", r"Two sets of ([\d,]+) held-out\s+problems", "em", ["n_eval"]),
    ("docs/stages.md", r"\(E-step: K = (\d+), `n_prefix = (\d+)`, `max_thought_tokens = (\d+)`; M_0: `m0_epochs = (\d+)`"
     r" passes", "em", ["K", "n_prefix", "max_thought_tokens", "m0_epochs"]),
    ("docs/stages.md", r"each M-step: `mstep_epochs = (\d+)` passes' worth of tokens; evaluation: (\d+)-shot, up to (\d+)"
     r" new\s+tokens", "em", ["mstep_epochs", "eval_shots", "eval_max_new_tokens"]),
    ("docs/stages.md", r"em\.py: base_epochs = (\d+)\)", "em", ["base_epochs"]),
    ("docs/stages.md", r"--min_tokens=\d+\s+# (\d+) passes, each document once per pass", "em", ["m0_epochs"]),
    ("docs/stages.md", r"--K=(\d+) --n_prefix=(\d+) --max_thought_tokens=(\d+) --show", "em",
     ["K", "n_prefix", "max_thought_tokens"]),
    ("docs/stages.md", r"--n_shot=(\d+) --max_new_tokens=(\d+)", "em", ["eval_shots", "eval_max_new_tokens"]),
    ("docs/stages.md", r"the\s+paper's prefix while bootstrapping; ours is (\d+)\)", "em", ["n_prefix"]),
    ("docs/walkthrough.md", r"It generates (\d+) documents", "smoke", ["n_docs"]),
    ("docs/walkthrough.md", r"then runs (\w+) EM iterations", "smoke", ["iters"]),
    ("docs/walkthrough.md", r"evaluating every\s+model on (\d+) held-out problems", "smoke", ["eval_limit"]),
    ("docs/walkthrough.md", r"with (\d+) problems \(0 to about", "smoke", ["eval_limit"]),
    ("docs/walkthrough.md", r"--K=(\d+) --n_prefix=(\d+) --max_thought_tokens=(\d+) --batch_size=(\d+) --seed=(\d+)",
     "smoke", ["K", "n_prefix", "max_thought_tokens", "estep_batch", ESTEP_SEED_OF_ITER_1]),
    ("docs/walkthrough.md", r"K = (\d+), a prefix of (\d+) chunk, thoughts of at most (\d+) tokens, (\d+) chunks per"
     r" batch, seed (\d+) for\s+iteration 1", "smoke",
     ["K", "n_prefix", "max_thought_tokens", "estep_batch", ESTEP_SEED_OF_ITER_1]),
    ("docs/walkthrough.md", r"sample_thoughts\.py's own defaults are other ones\s+\(`n_prefix = (\d+)`, the paper's "
     r"bootstrapping prefix, and `max_thought_tokens = (\d+)`\)", "sample_thoughts.py", ["n_prefix", "max_thought_tokens"]),
    ("docs/walkthrough.md", r"and K = (\d+) sampled thoughts", "smoke", ["K"]),
    ("docs/walkthrough.md", r"`mstep_epochs = (\d+)` pass over the warm-start split", "smoke", ["mstep_epochs"]),
    ("docs/walkthrough.md", r"(\d+)-shot, up to (\d+) new tokens, on the first (\d+) problems", "smoke",
     ["eval_shots", "eval_max_new_tokens", "eval_limit"]),
    ("docs/walkthrough.md", r"--n_shot=(\d+) --max_new_tokens=(\d+) --limit=(\d+) --batch_size=(\d+)", "smoke",
     ["eval_shots", "eval_max_new_tokens", "eval_limit", "eval_batch"]),
    ("docs/walkthrough.md", r"the smoke run's K is (\d+)", "smoke", ["K"]),
]


def stated_mismatches(rows):
    bad = []
    for page, pattern, source, keys in rows:
        text, cfg = read(page), settings(source)
        found = list(re.finditer(pattern, text))
        if not found:
            bad.append(f"{page}: no longer says /{pattern}/: update the row of tests/test_docs.py: STATED with it")
        for m in found:
            for group, key in enumerate(keys, 1):
                want = key(cfg) if callable(key) else cfg[key]
                got = as_value(m.group(group))
                if got != want or type(got) is bool != type(want) is bool:
                    name = key if isinstance(key, str) else "the value em.py derives"
                    bad.append(f"{page}:{line_of(text, m.start(group))}: says {m.group(group)!r} where {source}'s "
                               f"{name} is {want!r}")
    return bad


def test_every_default_a_page_states_is_the_codes():
    bad = stated_mismatches(STATED)
    assert not bad, "\n".join(bad)


def test_a_wrong_default_is_caught():
    row = ("docs/walkthrough.md", r"and K = (\d+) sampled thoughts", "smoke", ["max_thought_tokens"])
    bad = stated_mismatches([row, ("README.md", r"no such sentence (\d+)", "em", ["K"])])
    assert len(bad) == 2 and "docs/walkthrough.md:" in bad[0] and "max_thought_tokens is 32" in bad[0], bad
    assert "no longer says" in bad[1]


def test_em_ladder_pins_the_defaults():
    """README and docs/bootstrapping.md: `config/em_ladder.py` pins the settings its seed tables were measured with:
    today's defaults but the reading of the corpus, random windows (the default until 2026-12-06)."""
    defaults, ladder = settings("em"), assignments("config/em_ladder.py")
    differ = {k: (v, defaults.get(k)) for k, v in ladder.items() if defaults.get(k) != v}
    assert differ == {"sampler": ("windows", "passes")}, f"config/em_ladder.py (value, em.py's default): {differ}"
    for page in ("README.md", "docs/bootstrapping.md"):
        assert "`config/em_ladder.py` pins" in read(page), page


def test_walkthrough_counts_its_commands():
    text = read("docs/walkthrough.md")
    m = re.search(r"Students run (\w+) commands", text)
    commands = [line for b in re.findall(r"```sh\n(.*?)```", text, re.S) for line in b.splitlines() if line.strip()]
    assert m and as_value(m.group(1)) == len(commands), \
        f"docs/walkthrough.md:{line_of(text, m.start()) if m else '?'}: says {m and m.group(1)}, has {len(commands)}"


def test_walkthrough_mstep_budget_is_em_pys(tmp_path):
    """The M-step by hand trains for --max_tokens=B: the budget em.py computes for the smoke corpus (Run.corpus)."""
    import em
    text = read("docs/walkthrough.md")
    m = re.search(r"python train\.py config/train_cpu_smoke\.py .*--max_tokens=(\d+)", text)
    cfg, argv, preset = em.configure(["config/em_cpu_smoke.py", f"--run_dir={tmp_path}/run", "--gpu_preset=False"])
    run = em.Run(cfg, argv, preset)
    run.corpus()
    assert m and int(m.group(1)) == run.budget, \
        f"docs/walkthrough.md:{line_of(text, m.start(1)) if m else '?'}: --max_tokens should be {run.budget}"
    assert f"--max_tokens={run.budget}`" in text  # the sentence that explains it


# ----------------------------------------------------------------------------- options the pages' commands spell
SCRIPTS = ("em", "sample_thoughts", "train", "eval_math")
COMMAND = re.compile(r"(?:python3? |torchrun (?:--\S+ )*)(" + "|".join(SCRIPTS) + r")\.py\b")


def commands(text):
    """(line, script, the command's arguments) of every command in a page: in code blocks (fenced, or lines
    indented by 4), a line with its \\-continuations up to a comment, & ; or |; in inline code, the span."""
    code = fenced(text)
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i]
        i += 1
        if code[start] or line.startswith("    "):
            for m in COMMAND.finditer(line):
                out.append((start + 1, m.group(1), re.split(r"\s#|[&;|]", line[m.end():])[0]))
    for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text, re.S):
        if code[line_of(text, span.start()) - 1]:
            continue
        for m in COMMAND.finditer(span.group(1)):
            out.append((line_of(text, span.start()), m.group(1), span.group(1)[m.end():]))
    return out


def unknown_options(pages, read_page=read):
    keys = {s: set(assignments(f"{s}.py", config_only=True)) for s in SCRIPTS}
    bad, n = [], 0
    for page in pages:
        for line, script, args in commands(read_page(page)):
            for key in re.findall(r"(?<!\S)--(\w+)", args):
                n += 1
                if key not in keys[script] and key != "help":
                    bad.append(f"{page}:{line}: python {script}.py --{key}: {script}.py has no such setting")
    return n, bad


def test_every_option_a_pages_command_spells_is_a_setting():
    n, bad = unknown_options(PAGES)
    assert n > 100 and not bad, "\n".join(bad)
    em_flags = sum(script == "em" for page in PAGES for _, script, _ in commands(read(page)))
    assert em_flags > 20


def test_a_renamed_option_is_caught():
    page = ("```bash\npython em.py config/x.py --K=2 \\\n    --n_prefixes=3  # --not_read\n```\n"
            "Inline: `python em.py --iters 3\n--kk=1`, and `torchrun --nproc_per_node=8 em.py --Kay=1`\n")
    _, bad = unknown_options(["a.md"], lambda _: page)
    assert [b.split(": ", 1)[0] for b in bad] == ["a.md:2", "a.md:5", "a.md:6"], bad


# ----------------------------------------------------------------------------- method.md's pseudocode is em.py's
def test_the_loop_in_method_md_names_em_pys_functions_and_settings():
    """Every snake_case name in the pseudocode of docs/method.md, The loop in em.py, is em.py's: a setting, a
    function, a method of Run or an import; and every run.<name>() is a method of Run."""
    text = read("docs/method.md")
    m = re.search(r"^## The loop in em\.py\n.*?```python\n(.*?)```", text, re.S | re.M)
    assert m, "docs/method.md: no ```python block under '## The loop in em.py'"
    tree = ast.parse(read("em.py"))
    run = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Run")
    methods = {n.name for n in run.body if isinstance(n, ast.FunctionDef)}
    names = set(assignments("em.py")) | methods | {"Run"}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name for a in node.names)
    block, first = m.group(1), line_of(text, m.start(1))
    bad = [f"docs/method.md:{first + block.count(chr(10), 0, w.start())}: {w.group()} is not em.py's"
           for w in re.finditer(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", block) if w.group() not in names]
    bad += [f"docs/method.md: run.{r}() is not a method of em.py's Run"
            for r in re.findall(r"\brun\.(\w+)\(", block) if r not in methods]
    assert len(re.findall(r"\brun\.(\w+)\(", block)) >= 7 and not bad, "\n".join(bad)
