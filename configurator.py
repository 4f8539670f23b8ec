"""
nanoGPT-style configuration. A script keeps its defaults as plain globals at the top, each with a comment; then

    python train.py config/foo.py --batch_size=32 --out_dir runs/x --compile

execs config/foo.py (plain assignments) and then applies each override. An override is `--key=value` or
`--key value` (the value is literal_eval'd, else kept as a string), and a boolean key alone (`--compile`) means
True. Every key must already exist in the defaults and keep its type: a typo or a wrong type is an error that
names the nearest real key, never a silent no-op. `--help` prints the config block: each key, its default and
its comment. Scripts called as functions pass a dict of overrides through the same checks.
"""
import ast
import difflib
import os
import re
import sys
import types


def _check(defaults, key, value, source):
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.6)
        hint = f"; did you mean --{close[0]}?" if close else f"; --help lists them"
        raise ValueError(f"{source}: unknown config key --{key}{hint}")
    old = defaults[key]
    if old is None or value is None:
        return value
    if isinstance(old, bool) != isinstance(value, bool):
        raise TypeError(f"{source}: --{key} must be {type(old).__name__}, got {value!r}")
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(old)):
        raise TypeError(f"{source}: --{key} must be {type(old).__name__}, got {type(value).__name__} {value!r}")
    return value


def apply(defaults, overrides, source="overrides"):
    """A copy of defaults with overrides applied (each checked)."""
    cfg = dict(defaults)
    for k, v in overrides.items():
        cfg[k] = _check(defaults, k, v, source)
    return cfg


def read_config_file(path, defaults):
    """Exec a config file of plain assignments; returns the keys it set."""
    ns = dict(defaults)
    with open(path) as f:
        code = compile(f.read(), path, "exec")
    exec(code, ns)
    return {k: v for k, v in ns.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)
            and not callable(v) and (k not in defaults or v is not defaults[k])}


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string, e.g. --out_dir=runs/x


def _overrides(argv, defaults):
    """Yield (key, value, source) from --key=value, --key value and --flag; config files as (None, path, path)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            yield None, arg, arg
            continue
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            yield key, _literal(text), f"command line {arg!r}"
            continue
        key = arg[2:]
        _check(defaults, key, None, f"command line {arg!r}")  # unknown key: say so before eating a value
        if isinstance(defaults[key], bool):
            if i < len(argv) and argv[i] in ("True", "False", "true", "false"):
                yield key, argv[i].lower() == "true", f"command line '{arg} {argv[i]}'"
                i += 1
            else:
                yield key, True, f"command line {arg!r}"
        elif i < len(argv):
            yield key, _literal(argv[i]), f"command line '{arg} {argv[i]}'"
            i += 1
        else:
            raise ValueError(f"command line: {arg} needs a value (--{key}=VALUE or --{key} VALUE)")


def parse_args(argv, defaults, source_file=None):
    """argv: [config_file.py ...] [--key=value | --key value | --flag ...] -> overrides dict, checked."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(defaults, source_file))
        sys.exit(0)
    cfg = dict(defaults)
    for key, value, source in _overrides(argv, defaults):
        if key is None:
            cfg = apply(cfg, read_config_file(value, defaults), value)
        else:
            cfg = apply(cfg, {key: value}, source)
    return {k: v for k, v in cfg.items() if v is not defaults[k]}


def command_line(argv, defaults, check=None):
    """A script's settings from its command line: defaults <- argv, checked, then check(cfg) where the script has
    more to say (K >= 1). A bad setting prints one line on stderr and exits with status 2: no traceback, which
    would hide the message under the stack of the configurator."""
    try:
        cfg = apply(defaults, parse_args(argv, defaults), "command line")
        if check is not None:
            check(cfg)
        return cfg
    except (ValueError, TypeError, OSError, SyntaxError) as e:
        usage_error(e)


def config_files(argv, defaults):
    """The config files named on a command line (a --key's value that ends in .py is not one)."""
    return [value for key, value, _ in _overrides(argv, defaults) if key is None]


def usage_error(message):
    script = os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0])
    print(f"{script}: {message}", file=sys.stderr)
    sys.exit(2)


def help_text(defaults, source_file=None):
    """The script's config block as the user sees it: section comments, then `--key=default  # comment`."""
    source_file = source_file or getattr(sys.modules.get("__main__"), "__file__", None)
    script = os.path.relpath(source_file or sys.argv[0])
    out = [f"usage: python {script} [config/preset.py ...] [--key=value | --key value | --flag ...]", ""]
    comments, seen, in_block = {}, [], False
    if source_file:
        lines = open(source_file).read().splitlines()
        for n, line in enumerate(lines):
            if line.startswith("# ---"):  # the config block sits between two such rulers
                in_block = not in_block
                continue
            m = re.match(r"^(\w+)\s*=.*?(?:#\s*(.*))?$", line)
            if m and m.group(1) in defaults and m.group(1) not in comments:
                text = [m.group(2) or ""]
                for more in lines[n + 1:]:  # a comment continued on the next lines, indented under the first
                    c = re.match(r"^\s{8,}#\s*(.*)$", more)
                    if not c:
                        break
                    text.append(c.group(1))
                comments[m.group(1)] = " ".join(t for t in text if t)
                seen.append(m.group(1))
            elif in_block and line.startswith("# "):
                seen.append(line)  # a section heading inside the block
    keys = [s for s in seen if s in defaults or s.startswith("#")] + [k for k in defaults if k not in comments]
    for item in keys:
        if item.startswith("#"):
            out.append(item)
            continue
        row = f"  --{item}={defaults[item]!r}"
        out.append(row + (" " * max(1, 34 - len(row)) + "# " + comments[item] if comments.get(item) else ""))
    return "\n".join(out)


def defaults_of(module_globals):
    """The config block of a script: its public globals of plain types."""
    plain = (int, float, bool, str, list, tuple, dict, type(None))
    return {k: v for k, v in module_globals.items() if not k.startswith("_") and isinstance(v, plain)}
