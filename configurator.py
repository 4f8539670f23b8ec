"""
nanoGPT-style configuration. A script keeps its defaults as plain globals at the top; then

    python train.py config/foo.py --batch_size=32

execs config/foo.py (plain assignments) and then applies each --key=value (literal_eval'd). Every key must
already exist in the defaults and keep its type: a typo or a wrong type is an error, never a silent no-op.
Scripts called as functions pass a dict of overrides through the same checks.
"""
import ast
import sys
import types


def _check(defaults, key, value, source):
    if key not in defaults:
        close = [k for k in defaults if k.split("_")[0] == key.split("_")[0]]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"{source}: unknown config key {key!r}{hint}")
    old = defaults[key]
    if old is None or value is None:
        return value
    if isinstance(old, bool) != isinstance(value, bool):
        raise TypeError(f"{source}: {key} must be {type(old).__name__}, got {value!r}")
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(old)):
        raise TypeError(f"{source}: {key} must be {type(old).__name__}, got {type(value).__name__} {value!r}")
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


def parse_args(argv, defaults):
    """argv: [config_file.py ...] [--key=value ...] -> overrides dict, checked against defaults."""
    cfg = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(f"usage: python {sys.argv[0]} [config/preset.py ...] [--key=value ...]; the keys and their defaults:")
            for k, v in defaults.items():
                print(f"  --{k}={v!r}")
            sys.exit(0)
        if not arg.startswith("--"):
            cfg = apply(cfg, read_config_file(arg, defaults), arg)
            continue
        if "=" not in arg:
            raise ValueError(f"command line: expected --key=value, got {arg!r}")
        key, val = arg[2:].split("=", 1)
        try:
            val = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            pass  # a bare string, e.g. --out_dir=runs/x
        cfg = apply(cfg, {key: val}, f"command line {arg!r}")
    return {k: v for k, v in cfg.items() if v is not defaults[k]}


def defaults_of(module_globals):
    """The config block of a script: its public globals of plain types."""
    plain = (int, float, bool, str, list, tuple, dict, type(None))
    return {k: v for k, v in module_globals.items() if not k.startswith("_") and isinstance(v, plain)}
