"""
The files every stage reads and writes, defined once:

    *.bin        flat token ids (nanoGPT style), uint16 when the vocabulary fits, else uint32
    meta.json    one per directory: tokenizer, vocab_size, dtype, and per bin its token and document counts
    chunks.jsonl one line per chunk, in document order: {"id": "<doc>:<idx>", "doc", "idx", "text"}
                 (a chunk's prefix is the text of the chunks before it in its document, see chunk_prefix)
    thoughts     jsonl with {"id": chunk id, "thought": text} (extra fields are kept, ignored here)

A prepared directory (the contract between whatever makes a corpus and em.py, which reads it) holds:

    warm.chunks.jsonl  warm.thoughts.jsonl  warm_raw.bin  warm_aug.bin
                       the warm-start split and the teacher's thought for every one of its chunks
    boot.chunks.jsonl  boot_raw.bin
                       the bootstrap split: the E-steps infer its thoughts
    val.chunks.jsonl   val_raw.bin
                       validation documents
    meta.json          tokenizer, vocab_size, dtype, per-bin counts
  optional:
    val.thoughts.jsonl  val_aug.bin   only when validation thoughts exist (then the augmented val loss is reported)
    boot.gold.jsonl    gold thoughts of the bootstrap split: only corpora that have them (mathworld, GSM8K);
                       without it every gold-based figure is left out
    eval.jsonl  exemplars.jsonl  valid.jsonl
                       MATH- or GSM8K-shaped problems (eval_math.py: load_rows): the test set, its few-shot
                       exemplars, a held-out set for choosing models; em.py can be given any eval jsonl instead
    tokenizer-N.tiktoken
                       a tokenizer fitted to this corpus (data/prepare.py --tokenizer=fit:N); meta.json names it by
                       its absolute path, as it names a Llama model's tokenizer.json

Three commands write it: data/mathworld.py (the embedded corpus), data/prepare.py corpus + warm (your own text
and teacher, data/teacher.py) and data/prepare.py gsm8k. check_contract says what a directory holds.

Everything is written to a temporary name and renamed when complete: an interrupted job never leaves a file
that looks finished.
"""
import gzip
import json
import os
import zlib
from contextlib import contextmanager

import numpy as np

from data.latent import augmented_document, augmented_ids, coin_flips, latent_exemplar, raw_document, raw_exemplar


def bin_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32


class AtomicFile:
    """A file written as path.PID.tmp: commit() renames it to path, abort() removes it. The one way every output of
    the project is written, so an interrupted or failed job never leaves a file that looks finished."""

    def __init__(self, path, mode="w"):
        self.path, self.tmp = path, f"{path}.{os.getpid()}.tmp"  # per process: two writers never share one
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.f = gzip.open(self.tmp, mode) if path.endswith(".gz") else open(self.tmp, mode)

    def commit(self):
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        try:
            self.f.close()
        except Exception:
            pass  # after a failed write (a full disk) closing flushes again and fails again; the data is discarded
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


@contextmanager
def atomic_open(path, mode="w"):
    """Write to a temporary file beside path, renamed to path only if the block finishes."""
    a = AtomicFile(path, mode)
    try:
        yield a.f
        a.commit()
    except BaseException:
        a.abort()
        raise


def write_json(path, obj):
    with atomic_open(path) as f:
        json.dump(obj, f, indent=1)


def write_jsonl(path, rows):
    with atomic_open(path) as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def numbered_lines(path, f):
    """Yield (line number, line) of the open file f of path; truncated or corrupt gzip data is an error naming
    path:line (gzip's own errors name neither)."""
    n = 0
    try:
        for n, line in enumerate(f, 1):
            yield n, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}:{n + 1}: truncated or corrupt gzip data ({e})") from None


def read_jsonl(path, required=()):
    """Yield (line number, dict). Malformed JSON, a non-object line or a missing field is an error naming
    path:line. Blank lines are skipped. .gz files are read transparently."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:  # decoded line by line: an invalid byte is reported on its own line
        for n, line in numbered_lines(path, f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte {e.start + 1})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            for k in required:
                if k not in obj:
                    raise ValueError(f"{path}:{n}: missing field {k!r}")
            yield n, obj


# ----------------------------------------------------------------------------- bins and meta.json

def check_settings(source, old, new, ignore=(), hint="use another directory, or delete it"):
    """
    The one check of every stage that continues or reuses earlier output (em's stages, the E-step's shards, a
    training's checkpoint, a prepared corpus): output made with other settings is an error naming each key that
    differs, never silently mixed with new work or served as this run's. Compared as JSON reads them back.
    """
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{source}: made with " + ", ".join(f"{k}={old.get(k)!r}" for k in diff) + "; now asked for "
                         + ", ".join(f"{k}={new.get(k)!r}" for k in diff) + f". {hint}")


def read_meta(directory):
    path = os.path.join(directory, "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_tokenizer(directory, tok):
    """One tokenizer per directory (meta.json records it): bins of a second one would be unreadable."""
    meta = read_meta(directory)
    if meta is not None and meta["tokenizer"] != tok.name:
        raise ValueError(f"{directory}/meta.json: tokenizer {meta['tokenizer']!r}, but writing {tok.name!r} bins")
    return meta


def update_meta(directory, tok, bins=None, **fields):
    """Record tokenizer/dtype once per directory and per-bin counts."""
    meta = check_tokenizer(directory, tok) or {"tokenizer": tok.name, "vocab_size": tok.n_vocab,
                                               "dtype": np.dtype(bin_dtype(tok.n_vocab)).name, "bins": {}}
    meta["bins"].update(bins or {})
    meta.update(fields)
    write_json(os.path.join(directory, "meta.json"), meta)
    return meta


class BinWriter:
    """Streams documents (lists of ids) into a temporary file; close() renames it to path and records it in
    meta.json."""

    def __init__(self, path, tok):
        self.path, self.tok = path, tok
        self.dir = os.path.dirname(os.path.abspath(path))
        self.dtype = bin_dtype(tok.n_vocab)
        check_tokenizer(self.dir, tok)  # before anything is written
        self.out = AtomicFile(path, "wb")
        self.tokens = self.docs = 0

    def write(self, ids):
        self.out.f.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self.tokens += len(ids)
        self.docs += 1

    def close(self, **info):
        try:
            check_tokenizer(self.dir, self.tok)  # again before the rename: meta.json may have changed meanwhile
            self.out.commit()
        except BaseException:
            self.out.abort()
            raise
        info = {"tokens": self.tokens, "docs": self.docs, **info}
        update_meta(self.dir, self.tok, {os.path.basename(self.path): info})
        return info

    def abort(self):
        self.out.abort()


def open_bin(path, tokenizer=None):
    """A read-only memmap of a bin, with the dtype its directory's meta.json records. If tokenizer (a name) is
    given, a bin made with another tokenizer is an error."""
    meta = read_meta(os.path.dirname(os.path.abspath(path)))
    if meta is None:
        raise FileNotFoundError(f"{path}: no meta.json beside it (dtype and tokenizer unknown)")
    if tokenizer is not None and meta["tokenizer"] != tokenizer:
        raise ValueError(f"{path}: tokenized with {meta['tokenizer']!r}, but the model uses {tokenizer!r}")
    dtype = np.dtype(meta["dtype"])
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dtype.name} tokens")
    # a bin replaced without its meta.json (or the reverse) would be read with the wrong dtype or tokenizer
    recorded = meta["bins"].get(os.path.basename(path), {}).get("tokens")
    if recorded is not None and recorded != size // dtype.itemsize:
        raise ValueError(f"{path}: {size // dtype.itemsize} tokens, but meta.json beside it records {recorded}: "
                         "the bin and meta.json do not belong together (re-create them)")
    if size == 0:  # an empty split (--val_fraction=0) is legal, but mmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


# ----------------------------------------------------------------------------- chunks and thoughts

def chunk_rows(doc, texts):
    """A document's rows of a chunk file: {"id": "doc:i", "doc", "idx", "text"}, the one spelling of the schema."""
    return [{"id": f"{doc}:{i}", "doc": doc, "idx": i, "text": t} for i, t in enumerate(texts)]


def write_chunks(path, docs):
    """A chunk file from (doc id, [chunk texts]) pairs, atomically."""
    write_jsonl(path, (row for doc, texts in docs for row in chunk_rows(doc, texts)))


def read_chunks(path):
    """Chunk file -> list of documents, each a list of chunk dicts in order."""
    docs, index, lines = [], {}, {}
    for n, c in read_jsonl(path, required=("id", "doc", "idx", "text")):
        for k, types in (("id", str), ("text", str), ("doc", (str, int))):
            if not isinstance(c[k], types):
                raise ValueError(f"{path}:{n}: field {k!r} is {type(c[k]).__name__}, not a string"
                                 f"{' or integer' if k == 'doc' else ''}")
        if c["id"] in lines:  # thoughts are keyed by chunk id: two chunks cannot share one
            raise ValueError(f"{path}:{n}: chunk id {c['id']!r} already used on line {lines[c['id']]}")
        lines[c["id"]] = n
        d = index.get(c["doc"])
        if d is None:
            d = index[c["doc"]] = len(docs)
            docs.append([])
        if c["idx"] != len(docs[d]):
            raise ValueError(f"{path}:{n}: chunk {c['id']} out of order (expected idx {len(docs[d])})")
        docs[d].append(c)
    return docs


def chunk_prefix(doc, i, n_prefix):
    """The prefix of chunk i is the text of the previous n_prefix chunks (docs/method.md, The latent format:
    1 in the warm start, 3 when bootstrapping)."""
    return "".join(c["text"] for c in doc[max(0, i - n_prefix):i])


def read_thoughts(path):
    """Thoughts jsonl -> {chunk id: thought text}."""
    out = {}
    for n, t in read_jsonl(path, required=("id", "thought")):
        if t["id"] in out:
            raise ValueError(f"{path}:{n}: a second thought for chunk {t['id']}")
        out[t["id"]] = t["thought"]
    return out


def doc_seed(seed, doc):
    # a stable per-document seed for the coin flips (Python's hash() of a str changes between runs)
    return (int(seed), zlib.crc32(str(doc).encode()))


def build_augmented_bin(tok, chunks_path, thoughts_path, out_path, seed):
    """
    THE one function that writes thought-augmented bins (docs/method.md, M-step): for every document of the chunk
    file, each chunk with its thought in prior or posterior order by a seeded fair coin, documents separated by
    <|endoftext|>. The warm start (teacher thoughts) and every E-step (inferred thoughts) go through here.
    A chunk without a thought is an error: dropping it would silently change the corpus.
    """
    thoughts = read_thoughts(thoughts_path)
    docs = read_chunks(chunks_path)
    w = BinWriter(out_path, tok)
    try:
        for doc in docs:
            missing = [c["id"] for c in doc if c["id"] not in thoughts]
            if missing:
                raise ValueError(f"{thoughts_path}: no thought for chunk {missing[0]} of {chunks_path}")
            w.write(augmented_document(tok, [c["text"] for c in doc], [thoughts[c["id"]] for c in doc],
                                       doc_seed(seed, doc[0]["doc"])))
    except BaseException:
        w.abort()
        raise
    return w.close(kind="augmented", chunks=os.path.abspath(chunks_path), thoughts=os.path.abspath(thoughts_path),
                   seed=seed)


COINS = ("per_pass", "frozen")


def build_passes_bin(tok, parts, out_path, seed, min_tokens, coin="per_pass", raw_mix=0.0):
    """
    What one training reads, front to back (train.py, sampler="passes"): whole readings (passes) of a corpus
    until at least min_tokens are written, each document once per pass, in an order shuffled anew for every pass
    (the official loader's epochs; a budget of 7.4 passes reads the eighth pass's first 40%). parts
    are (chunks_path, thoughts_path) pairs, thoughts_path None for raw documents. An augmented document is written
    with coins tossed for that reading (coin="per_pass", the official lingua/data.py: over the passes a chunk
    teaches both q(Z | X, P) and p(Z, X | P)), or with the same coins every reading (coin="frozen": those of
    build_augmented_bin, the ablation). raw_mix: the probability that a reading of an augmented document is its
    raw text instead (the official mix_in_raw_ratio). Every pass's randomness is a pure function of (seed, pass).
    """
    if coin not in COINS:
        raise ValueError(f"coin must be one of {COINS}, got {coin!r}")
    if not 0 <= raw_mix <= 1:
        raise ValueError(f"raw_mix must be in [0, 1], got {raw_mix!r}")
    docs = []  # (doc id, [chunk ids], [thought ids] or None, raw ids): encoded once, every reading reuses them
    for chunks_path, thoughts_path in parts:
        thoughts = read_thoughts(thoughts_path) if thoughts_path is not None else None
        for doc in read_chunks(chunks_path):
            if thoughts is not None:
                missing = [c["id"] for c in doc if c["id"] not in thoughts]
                if missing:
                    raise ValueError(f"{thoughts_path}: no thought for chunk {missing[0]} of {chunks_path}")
            raw = raw_document(tok, "".join(c["text"] for c in doc)) if thoughts is None or raw_mix > 0 else None
            docs.append((doc[0]["doc"], [tok.encode(c["text"]) for c in doc],
                         None if thoughts is None else [tok.encode(thoughts[c["id"]]) for c in doc], raw))
    if not docs:
        raise ValueError(f"{parts}: no documents")
    w, p = BinWriter(out_path, tok), 0
    try:
        while w.tokens < min_tokens:
            rng = np.random.default_rng([int(seed), p])
            order, raw = rng.permutation(len(docs)), rng.random(len(docs)) < raw_mix
            for i in order:
                name, xs, zs, raw_ids = docs[i]
                if zs is None or raw[i]:  # a raw document: its chunks joined back, as build_raw_bin writes it
                    w.write(raw_ids)
                    continue
                s = doc_seed(seed, name) + ((p,) if coin == "per_pass" else ())
                w.write(augmented_ids(tok, xs, zs, coin_flips(len(xs), s)))
            p += 1
    except BaseException:
        w.abort()
        raise
    return w.close(kind="passes", parts=[[os.path.abspath(c), t and os.path.abspath(t)] for c, t in parts],
                   seed=seed, passes=p, coin=coin, raw_mix=raw_mix)


def build_solved_bin(tok, rows, out_path, latent):
    """Solved problems, one document each, as a fine-tuning reads them: in the spelling of the evaluation's exemplars
    for this model, the thought in the prior order (latent) or the raw solution as plain text (raw). rows: dicts
    with problem, thought, gold and raw_solution (eval_math.load_rows)."""
    w = BinWriter(out_path, tok)
    try:
        for r in rows:
            w.write((latent_exemplar(tok, r["problem"], r["thought"], r["gold"]) if latent
                     else raw_exemplar(tok, r["problem"], r["raw_solution"])) + [tok.eot])
    except BaseException:
        w.abort()
        raise
    return w.close(kind="solved", latent=latent, problems=len(rows))


def build_raw_bin(tok, chunks_path, out_path):
    """The raw documents of a chunk file (its chunks joined back), for the baselines and validation."""
    w = BinWriter(out_path, tok)
    try:
        for doc in read_chunks(chunks_path):
            w.write(raw_document(tok, "".join(c["text"] for c in doc)))
    except BaseException:
        w.abort()
        raise
    return w.close(kind="raw", chunks=os.path.abspath(chunks_path))


# ----------------------------------------------------------------------------- the prepared directory

# (file, what makes it): the hint names the command a user forgot, in the order the commands run
REQUIRED = [
    ("meta.json", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("warm.chunks.jsonl", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("warm_raw.bin", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("boot.chunks.jsonl", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("boot_raw.bin", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("val.chunks.jsonl", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("val_raw.bin", "python -m data.prepare corpus ... --out_dir=DIR"),
    ("warm.thoughts.jsonl", "python -m data.teacher --chunks=DIR/warm.chunks.jsonl --out=T.jsonl ..., "
                            "then python -m data.prepare warm --dir=DIR --thoughts=T.jsonl"),
    ("warm_aug.bin", "python -m data.prepare warm --dir=DIR --thoughts=T.jsonl"),
]
OPTIONAL = {"val_aug": "val_aug.bin", "val_thoughts": "val.thoughts.jsonl", "boot_gold": "boot.gold.jsonl",
            "eval": "eval.jsonl", "exemplars": "exemplars.jsonl", "valid": "valid.jsonl"}


def check_contract(directory):
    """
    Check that directory is a prepared directory (the module docstring lists its files) and return which optional
    parts it has, e.g. {"val_aug": False, "boot_gold": True, ...}. The first missing required file is an error
    naming it and the command that makes it; a bin that meta.json does not record is an error too (it was not
    made for this directory's tokenizer).
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a directory")
    for name, how in REQUIRED:
        if not os.path.exists(os.path.join(directory, name)):
            raise FileNotFoundError(f"{directory}: missing {name} (made by: {how})")
    have = {k: os.path.exists(os.path.join(directory, f)) for k, f in OPTIONAL.items()}
    if have["val_aug"] != have["val_thoughts"]:  # one without the other: the bin cannot be checked or rebuilt
        raise FileNotFoundError(f"{directory}: val_aug.bin and val.thoughts.jsonl come together; only "
                                f"{'val_aug.bin' if have['val_aug'] else 'val.thoughts.jsonl'} is there")
    bins = read_meta(directory)["bins"]
    for name in sorted(os.listdir(directory)):
        if name.endswith(".bin") and name not in bins:
            raise ValueError(f"{directory}/{name}: not recorded in meta.json (written for another directory?)")
    return have
