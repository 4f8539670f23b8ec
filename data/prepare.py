"""
Real corpora into the files every stage reads (data/files.py): chunk files and raw bins, plus augmented bins from
thoughts a user brings. (The embedded corpus has its own generator: data/mathworld.py.)

    python -m data.prepare corpus my_texts/*.jsonl.gz --out_dir=data_dir [--tokenizer=gpt2] [--text_field=text]
    python -m data.prepare corpus ../shared/data/gsm8k/train.jsonl --out_dir=gsm8k_dir     # GSM8K rows work too
    python -m data.prepare warm --chunks=data_dir/train.chunks.jsonl --thoughts=teacher.jsonl --out=data_dir/warm_aug.bin

Inputs: .txt (one document per file), .jsonl or .jsonl.gz with a text field (or GSM8K's question/answer).
Streaming: documents are read and tokenized in batches by a pool of worker processes, in order, so memory stays
bounded and the output does not depend on the number of workers.
Policies: invalid UTF-8 is replaced by U+FFFD and the documents where that happened are counted; empty documents
are skipped and counted; a document longer than the context is chunked like any other (never cut); text that
spells a special token stays text. Outputs are written under temporary names and renamed when complete.
"""
import argparse
import gzip
import hashlib
import json
import os
import re
import sys
import time
import zlib
from multiprocessing import get_context

import numpy as np
from tqdm import tqdm

from data.files import (AtomicFile, BinWriter, build_augmented_bin, check_tokenizer, numbered_lines, read_chunks,
                        read_jsonl, update_meta)
from data.latent import raw_document
from data.tokenizer import get_tokenizer

INPUTS = (".txt", ".jsonl", ".jsonl.gz")
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "Dr.", "Mr.", "Mrs.", "Ms.", "vs.", "Fig.", "Eq.", "No.", "St.")
# a sentence ends after . ! or ? followed by whitespace, or at a line break; the whitespace stays with it
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text):
    """Sentences whose concatenation is exactly text (whitespace included). Decimals (3.14) never split, since
    the period is not followed by whitespace; common abbreviations (e.g., Dr.) do not end a sentence."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(text):
        piece = text[start:m.end()]
        if "\n" in m.group() or not piece.rstrip().endswith(ABBREVIATIONS):
            if piece.strip():
                out.append(piece)
                start = m.end()
    if start < len(text):
        if out and not text[start:].strip():
            out[-1] += text[start:]
        else:
            out.append(text[start:])
    return out


def chunk_document(text, mean_sentences=8, max_sentences=20, max_chunk_chars=4000):
    """method.md's chunking: a chunk is Poisson(mean - 1) + 1 sentences (at most max_sentences), drawn with a seed
    derived from the text, so the same document is always chunked the same way. A chunk longer than
    max_chunk_chars is split further at whitespace. The chunks joined give back the text exactly."""
    sents = split_sentences(text)
    rng = np.random.default_rng(zlib.crc32(text.encode("utf-8", "replace")))
    chunks, i = [], 0
    while i < len(sents):
        n = min(max_sentences, int(rng.poisson(mean_sentences - 1)) + 1)
        chunks.append("".join(sents[i:i + n]))
        i += n
    out = []
    for c in chunks:
        while len(c) > max_chunk_chars:
            cut = c.rfind(" ", max_chunk_chars // 2, max_chunk_chars) + 1 or max_chunk_chars
            out.append(c[:cut])
            c = c[cut:]
        out.append(c)
    return out


def gsm8k_text(row):
    """A GSM8K row as a document: question, worked answer without the <<calculator>> notes, the final answer."""
    answer = re.sub(r"<<[^>]*>>", "", row["answer"])
    answer = re.sub(r"####\s*(.+)\s*$", r"The answer is \1.", answer)
    return f"Question: {row['question']}\nAnswer: {answer}\n"


def iter_documents(paths, text_field="text"):
    """Yield (document text, had invalid UTF-8) from every input, streaming."""
    for path in paths:
        if path.endswith(".txt"):
            with open(path, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8", errors="replace")
            yield text, "\ufffd" in text and "\ufffd".encode() not in raw
            continue
        if not path.endswith(INPUTS):
            raise ValueError(f"{path}: expected .txt, .jsonl or .jsonl.gz")
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            for n, line in numbered_lines(path, f):
                if not line.strip():
                    continue
                s = line.decode("utf-8", errors="replace")
                try:
                    row = json.loads(s)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object")
                if text_field not in row and {"question", "answer"} <= set(row):
                    yield gsm8k_text(row), "\ufffd" in s and "\ufffd".encode() not in line
                    continue
                if not isinstance(row.get(text_field), str):
                    raise ValueError(f"{path}:{n}: no string field {text_field!r}")
                yield row[text_field], "\ufffd" in s and "\ufffd".encode() not in line


def _batches(docs, size=256):
    batch = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _work(args):
    # in a worker process: chunk and tokenize one batch of documents
    tok_name, batch = args
    tok = get_tokenizer(tok_name)
    return [(text, bad, chunk_document(text), raw_document(tok, text)) for text, bad in batch]


def is_val(text, val_fraction):
    return zlib.crc32(text.encode("utf-8", "replace")) % 1_000_000 < val_fraction * 1_000_000


def prepare_corpus(paths, out_dir, tokenizer="gpt2", text_field="text", val_fraction=0.01, workers=2, max_docs=None):
    tok = get_tokenizer(tokenizer)
    # everything that can be checked before writing: a late failure must not leave a directory half replaced
    for p in paths:
        if not p.endswith(INPUTS):
            raise ValueError(f"{p}: expected .txt, .jsonl or .jsonl.gz")
    total = sum(os.path.getsize(p) for p in paths)  # a missing input fails here
    check_tokenizer(out_dir, tok)
    os.makedirs(out_dir, exist_ok=True)
    counts = {"documents": 0, "empty_skipped": 0, "invalid_utf8": 0, "chunks": 0}
    bins = {s: BinWriter(os.path.join(out_dir, f"{s}_raw.bin"), tok) for s in ("train", "val")}
    files = {s: AtomicFile(os.path.join(out_dir, f"{s}.chunks.jsonl")) for s in ("train", "val")}
    handles = {s: f.f for s, f in files.items()}
    pool = get_context("spawn").Pool(workers) if workers > 1 else None
    t0, bar = time.time(), tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=not sys.stderr.isatty())
    try:
        docs = iter_documents(paths, text_field)
        jobs = ((tokenizer, b) for b in _batches(docs))
        results = pool.imap(_work, jobs) if pool else map(_work, jobs)
        for batch in results:
            for text, bad, chunks, ids in batch:
                bar.update(len(text.encode("utf-8", "replace")))
                if not text.strip():
                    counts["empty_skipped"] += 1
                    continue
                if max_docs is not None and counts["documents"] >= max_docs:
                    break
                split = "val" if is_val(text, val_fraction) else "train"
                d = counts["documents"]
                for i, c in enumerate(chunks):
                    handles[split].write(json.dumps({"id": f"{d}:{i}", "doc": d, "idx": i, "text": c}) + "\n")
                bins[split].write(ids)
                counts["documents"] += 1
                counts["invalid_utf8"] += bad
                counts["chunks"] += len(chunks)
        for s in ("train", "val"):
            files[s].commit()
        info = {s: w.close(kind="raw") for s, w in bins.items()}
    except BaseException:
        for s in ("train", "val"):
            files[s].abort()  # removes the temporary files, even when closing them fails too
            bins[s].abort()
        raise
    finally:
        bar.close()
        if pool:
            pool.terminate()
    sources = [{"path": os.path.abspath(p), "bytes": os.path.getsize(p), "sha256": sha256(p)} for p in paths]
    secs = time.time() - t0
    meta = update_meta(out_dir, tok, sources=sources, counts=counts, seconds=secs, mb_per_s=total / 1e6 / secs)
    print(f"prepared {counts['documents']} documents ({counts['chunks']} chunks, {info['train']['tokens']:,} train and "
          f"{info['val']['tokens']:,} val tokens) from {total / 1e6:.1f} MB in {secs:.1f}s: {total / 1e6 / secs:.2f} MB/s; "
          f"skipped {counts['empty_skipped']} empty, {counts['invalid_utf8']} with invalid UTF-8 (replaced)")
    return meta


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_warm_start(chunks_path, thoughts_path, out_path, tokenizer="gpt2", seed=0):
    """Thoughts from any teacher ({"id": chunk id, "thought"} jsonl) joined to a chunk file, into an augmented bin."""
    ids = {c["id"] for doc in read_chunks(chunks_path) for c in doc}
    for n, t in read_jsonl(thoughts_path, required=("id", "thought")):
        if t["id"] not in ids:
            raise ValueError(f"{thoughts_path}:{n}: chunk id {t['id']!r} is not in {chunks_path}")
    return build_augmented_bin(get_tokenizer(tokenizer), chunks_path, thoughts_path, out_path, seed)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("paths", nargs="+")
    c.add_argument("--out_dir", required=True)
    c.add_argument("--tokenizer", default="gpt2")
    c.add_argument("--text_field", default="text")
    c.add_argument("--val_fraction", type=float, default=0.01)
    c.add_argument("--workers", type=int, default=2)
    w = sub.add_parser("warm")
    w.add_argument("--chunks", required=True)
    w.add_argument("--thoughts", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--tokenizer", default="gpt2")
    w.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "corpus":
        prepare_corpus(a.paths, a.out_dir, a.tokenizer, a.text_field, a.val_fraction, a.workers)
    else:
        print(prepare_warm_start(a.chunks, a.thoughts, a.out, a.tokenizer, a.seed))


if __name__ == "__main__":
    main(sys.argv[1:])
