"""The repository documents itself: every `docs/method.md, <section>` a comment or page cites is a heading of that
page, the README's file list names every top-level file, the pages it links exist, and imports run one way."""
import ast
import glob
import os
import re

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
