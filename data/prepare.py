"""
Real corpora into a prepared directory (the files data/files.py lists; the embedded corpus has its own generator,
data/mathworld.py):

    python -m data.prepare corpus my_texts/*.jsonl.gz --out_dir=DIR [--tokenizer=gpt2] [--text_field=text]
    python -m data.teacher --chunks=DIR/warm.chunks.jsonl --out=teacher.jsonl --base_url=... --model=...
    python -m data.prepare warm --dir=DIR --thoughts=teacher.jsonl [--val_thoughts=teacher_val.jsonl]
    python -m data.prepare gsm8k --train=../shared/data/gsm8k/train.jsonl --test=../shared/data/gsm8k/test.jsonl \
        --out_dir=DIR                           # all in one: GSM8K's own solutions play the teacher
    python -m data.prepare passes DIR/warm.chunks.jsonl:DIR/warm.thoughts.jsonl --out=RUN/m0/passes.bin \
        --min_tokens=1600000                    # what one training reads (em.py writes it for every training)

corpus: documents are split into warm (the teacher writes their thoughts), boot (the E-steps infer them) and val
by a hash of their text (--warm_fraction of the non-validation documents, --val_fraction of all), so a document
always lands in the same split and a duplicated one never sits in both training and validation.
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

from data.files import (COINS, AtomicFile, BinWriter, atomic_open, build_augmented_bin, build_passes_bin, build_raw_bin,
                        check_contract,
                        check_tokenizer, chunk_rows, numbered_lines, read_chunks, read_jsonl, read_meta, update_meta,
                        write_chunks, write_json, write_jsonl)
from data.latent import raw_document
from data.tokenizer import DIGITS_PAT, canonical, fit_bpe, get_tokenizer, save_bpe

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
    """Chunking (docs/method.md, The latent format): a chunk is Poisson(mean - 1) + 1 sentences (at most
    max_sentences), drawn with a seed derived from the text, so the same document is always chunked the same way. A chunk longer than
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


def gsm8k_solution(row):
    """A GSM8K answer "work #### N" -> (the worked solution without its <<calculator>> notes, N without commas)."""
    if "####" not in row["answer"]:
        raise ValueError("a GSM8K answer ends in '#### N'")
    work, gold = row["answer"].rsplit("####", 1)
    return re.sub(r"<<[^>]*>>", "", work).strip(), gold.strip().replace(",", "")


def gsm8k_text(row):
    """A GSM8K row as one plain document (corpus): question, worked answer, the final answer."""
    work, gold = gsm8k_solution(row)
    return f"Question: {row['question']}\nAnswer: {work}\nThe answer is {gold}.\n"


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
                    try:
                        text = gsm8k_text(row)
                    except ValueError as e:
                        raise ValueError(f"{path}:{n}: {e}") from None
                    yield text, "\ufffd" in s and "\ufffd".encode() not in line
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


SPLITS = ("warm", "boot", "val")
FIT_CHARS = 5_000_000     # --tokenizer=fit:N learns its merges on at most this many characters of the corpus


def tokenizer_for(spec, out_dir, texts):
    """
    The directory's tokenizer name. "fit:N" fits N byte-pair merges (digits kept apart) on the first FIT_CHARS
    characters of texts and stores them as out_dir/tokenizer-N.tiktoken: a vocabulary of 256 + N + 5 tokens, so a
    small model on a real corpus is not mostly a 50k-row embedding (gpt2's). A directory that already has one
    keeps it (its bins were made with it). Any other spec is a tokenizer name, returned as it is.
    """
    if not spec.startswith("fit:"):
        return canonical(spec)
    try:
        n_merges = int(spec[4:])
    except ValueError:
        raise ValueError(f"--tokenizer={spec!r}: expected fit:N with N a number of merges, e.g. fit:1000") from None
    path = os.path.abspath(os.path.join(out_dir, f"tokenizer-{n_merges}.tiktoken"))  # another N: another name
    meta = read_meta(out_dir)
    if meta is not None and meta["tokenizer"] != path:  # before the file is written: nothing left behind
        raise ValueError(f"{out_dir}/meta.json: tokenizer {meta['tokenizer']!r}, but writing {path!r} bins")
    if not os.path.exists(path):
        sample, n = [], 0
        for t in texts:
            if n >= FIT_CHARS:
                break
            sample.append(t)
            n += len(t)
        save_bpe(path, fit_bpe(sample, n_merges, DIGITS_PAT))
    return path


def split_of(text, warm_fraction, val_fraction):
    """warm, boot or val, from a hash of the text: the same document always goes to the same split."""
    u = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big") / 2 ** 64
    if u < val_fraction:
        return "val"
    return "warm" if (u - val_fraction) / (1 - val_fraction) < warm_fraction else "boot"


def prepare_corpus(paths, out_dir, tokenizer="gpt2", text_field="text", warm_fraction=0.2, val_fraction=0.01,
                   workers=2, max_docs=None):
    """Chunk files and raw bins of the three splits; the warm split's thoughts come later (prepare_warm_start)."""
    # everything that can be checked before writing: a late failure must not leave a directory half replaced
    for p in paths:
        if not p.endswith(INPUTS):
            raise ValueError(f"{p}: expected .txt, .jsonl or .jsonl.gz")
    if not (0 <= warm_fraction <= 1 and 0 <= val_fraction < 1):
        raise ValueError(f"--warm_fraction must be in [0, 1] and --val_fraction in [0, 1), got "
                         f"{warm_fraction} and {val_fraction}")
    total = sum(os.path.getsize(p) for p in paths)  # a missing input fails here
    tokenizer = tokenizer_for(tokenizer, out_dir, (t for t, _ in iter_documents(paths, text_field)))
    tok = get_tokenizer(tokenizer)
    check_tokenizer(out_dir, tok)
    os.makedirs(out_dir, exist_ok=True)
    counts = {"documents": 0, "empty_skipped": 0, "invalid_utf8": 0, "chunks": 0}
    bins = {s: BinWriter(os.path.join(out_dir, f"{s}_raw.bin"), tok) for s in SPLITS}
    files = {s: AtomicFile(os.path.join(out_dir, f"{s}.chunks.jsonl")) for s in SPLITS}
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
                split = split_of(text, warm_fraction, val_fraction)
                d = f"{split}{bins[split].docs}"  # numbered within the split, as mathworld does
                for row in chunk_rows(d, chunks):
                    files[split].f.write(json.dumps(row) + "\n")
                bins[split].write(ids)
                counts["documents"] += 1
                counts["invalid_utf8"] += bad
                counts["chunks"] += len(chunks)
        for s in SPLITS:
            files[s].commit()
        info = {s: w.close(kind="raw") for s, w in bins.items()}
    except BaseException:
        for s in SPLITS:
            files[s].abort()  # removes the temporary files, even when closing them fails too
            bins[s].abort()
        raise
    finally:
        bar.close()
        if pool:
            pool.terminate()
    # thoughts of an earlier corpus in this directory are keyed by chunk ids that now name other chunks
    stale = [f for f in ("warm.thoughts.jsonl", "warm_aug.bin", "val.thoughts.jsonl", "val_aug.bin", "boot.gold.jsonl")
             if os.path.exists(os.path.join(out_dir, f))]
    for f in stale:
        os.remove(os.path.join(out_dir, f))
        print(f"removed {out_dir}/{f}: it belonged to the chunks this run replaced")
    meta = read_meta(out_dir)
    meta["bins"] = {k: v for k, v in meta["bins"].items() if k not in stale}
    write_json(os.path.join(out_dir, "meta.json"), meta)
    sources = [{"path": os.path.abspath(p), "bytes": os.path.getsize(p), "sha256": sha256(p)} for p in paths]
    secs = time.time() - t0
    meta = update_meta(out_dir, tok, sources=sources, counts=counts, seconds=secs, mb_per_s=total / 1e6 / secs,
                       split=dict(warm_fraction=warm_fraction, val_fraction=val_fraction))
    print(f"prepared {counts['documents']} documents ({counts['chunks']} chunks; tokens: "
          + ", ".join(f"{s} {info[s]['tokens']:,} in {info[s]['docs']} docs" for s in SPLITS)
          + f") from {total / 1e6:.1f} MB in {secs:.1f}s: {total / 1e6 / secs:.2f} MB/s; "
          f"skipped {counts['empty_skipped']} empty, {counts['invalid_utf8']} with invalid UTF-8 (replaced)")
    return meta


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def join_thoughts(chunks_path, thoughts_path, out_path):
    """The thoughts of a teacher ({"id": chunk id, "thought"} jsonl, extra fields kept) for exactly the chunks of
    chunks_path, written to out_path in chunk order. A chunk without a thought, or a thought for a chunk that is
    not there, is an error naming it: either would silently change the corpus."""
    order = [c["id"] for doc in read_chunks(chunks_path) for c in doc]
    known, rows = set(order), {}
    for n, t in read_jsonl(thoughts_path, required=("id", "thought")):
        if t["id"] not in known:
            raise ValueError(f"{thoughts_path}:{n}: chunk id {t['id']!r} is not in {chunks_path}")
        if t["id"] in rows:
            raise ValueError(f"{thoughts_path}:{n}: a second thought for chunk {t['id']}")
        if not isinstance(t["thought"], str):
            raise ValueError(f"{thoughts_path}:{n}: field 'thought' is {type(t['thought']).__name__}, not a string")
        rows[t["id"]] = t
    missing = [i for i in order if i not in rows]
    if missing:
        raise ValueError(f"{thoughts_path}: no thought for chunk {missing[0]!r} of {chunks_path} "
                         f"({len(missing)} of {len(order)} chunks have none)")
    write_jsonl(out_path, (rows[i] for i in order))


def prepare_warm_start(directory, thoughts_path, val_thoughts_path=None, seed=0):
    """
    Warm start (docs/method.md, Warm start): a teacher's thoughts for the warm split -> warm.thoughts.jsonl and warm_aug.bin;
    thoughts for the val split, if given -> val.thoughts.jsonl and val_aug.bin. The tokenizer is the directory's.
    """
    meta = read_meta(directory)
    if meta is None:
        raise FileNotFoundError(f"{directory}/meta.json not found: run python -m data.prepare corpus first")
    tok = get_tokenizer(meta["tokenizer"])
    out = {}
    for split, path in (("warm", thoughts_path), ("val", val_thoughts_path)):
        if path:
            chunks, joined = os.path.join(directory, f"{split}.chunks.jsonl"), os.path.join(directory, f"{split}.thoughts.jsonl")
            join_thoughts(chunks, path, joined)
            out[split] = build_augmented_bin(tok, chunks, joined, os.path.join(directory, f"{split}_aug.bin"), seed)
    return out


# ----------------------------------------------------------------------------- GSM8K as a complete directory

GSM8K_QUESTION_THOUGHT = "A grade-school math word problem."  # the question chunk has nothing to derive


def prepare_gsm8k(train, out_dir, test=None, tokenizer="gpt2", warm_fraction=0.2, val_fraction=0.01, n_exemplars=8,
                  limit=None, seed=0):
    """
    GSM8K's train split as a prepared directory, its own worked solutions playing the teacher. Each problem is a
    document of two chunks, "Problem:\n{question}\n" | "Final Answer: {N}\n", so that the problem and its result
    fall in different chunks (docs/method.md, Evaluation): the thought of the answer chunk, the worked solution, then
    sits where the latent evaluation prompt opens one. The solutions of the boot split become boot.gold.jsonl.
    eval.jsonl is a copy of test; exemplars.jsonl the first n_exemplars training rows in the shape eval_math.py
    reads for both prompt styles.
    """
    rows = []
    for n, r in read_jsonl(train, required=("question", "answer")):
        try:
            rows.append((r["question"], *gsm8k_solution(r)))
        except ValueError as e:
            raise ValueError(f"{train}:{n}: {e}") from None
        if limit and len(rows) == limit:
            break
    tok = get_tokenizer(tokenizer_for(tokenizer, out_dir, (t for q, w, g in rows for t in (q, w, g))))
    check_tokenizer(out_dir, tok)
    if test:
        with open(test, "rb") as f:  # read before anything is written: a missing file fails early
            test_bytes = f.read()
    splits = {s: [] for s in SPLITS}
    for question, work, gold in rows:
        splits[split_of(question, warm_fraction, val_fraction)].append((question, work, gold))
    for split, docs in splits.items():
        ids = [f"{split}{d}" for d in range(len(docs))]
        texts = [(f"Problem:\n{q}\n", f"Final Answer: {g}\n") for q, _, g in docs]
        thoughts = [(GSM8K_QUESTION_THOUGHT, w) for _, w, _ in docs]
        chunks = os.path.join(out_dir, f"{split}.chunks.jsonl")
        write_chunks(chunks, zip(ids, texts))
        build_raw_bin(tok, chunks, os.path.join(out_dir, f"{split}_raw.bin"))
        # boot's solutions are gold to measure the E-step with, never trained on; warm's and val's are the thoughts
        name = "boot.gold.jsonl" if split == "boot" else f"{split}.thoughts.jsonl"
        write_jsonl(os.path.join(out_dir, name),
                    ({"id": f"{d}:{i}", "thought": z[i]} for d, z in zip(ids, thoughts) for i in (0, 1)))
        if split != "boot":
            build_augmented_bin(tok, chunks, os.path.join(out_dir, name), os.path.join(out_dir, f"{split}_aug.bin"), seed)
    write_jsonl(os.path.join(out_dir, "exemplars.jsonl"),
                ({"problem": q, "answer": g, "thought": w, "raw_solution": f"Final Answer: {g}",
                  "solution": f"{w}\nThe answer is $\\boxed{{{g}}}$."} for q, w, g in rows[:n_exemplars]))
    if test:
        with atomic_open(os.path.join(out_dir, "eval.jsonl"), "wb") as f:
            f.write(test_bytes)
    sources = [{"path": os.path.abspath(p), "sha256": sha256(p)} for p in (train, test) if p]
    return update_meta(out_dir, tok, sources=sources, counts={s: len(d) for s, d in splits.items()},
                       gsm8k=dict(warm_fraction=warm_fraction, val_fraction=val_fraction, limit=limit, seed=seed))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="local text/jsonl(.gz) files -> chunk files and raw bins of warm/boot/val")
    c.add_argument("paths", nargs="+")
    c.add_argument("--out_dir", required=True)
    c.add_argument("--tokenizer", default="gpt2", help="gpt2 | byte | fit:N (N merges fitted to this corpus)")
    c.add_argument("--text_field", default="text")
    c.add_argument("--warm_fraction", type=float, default=0.2)
    c.add_argument("--val_fraction", type=float, default=0.01)
    c.add_argument("--workers", type=int, default=2)
    w = sub.add_parser("warm", help="a teacher's thoughts -> warm.thoughts.jsonl, warm_aug.bin (and val's)")
    w.add_argument("--dir", required=True)
    w.add_argument("--thoughts", required=True)
    w.add_argument("--val_thoughts", default="")
    w.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("gsm8k", help="GSM8K train (and test) -> a complete prepared directory")
    g.add_argument("--train", required=True)
    g.add_argument("--test", default="")
    g.add_argument("--out_dir", required=True)
    g.add_argument("--tokenizer", default="gpt2", help="gpt2 | byte | fit:N (N merges fitted to this corpus)")
    g.add_argument("--warm_fraction", type=float, default=0.2)
    g.add_argument("--val_fraction", type=float, default=0.01)
    g.add_argument("--n_exemplars", type=int, default=8)
    g.add_argument("--limit", type=int, default=0, help="only the first N training rows (0 = all)")
    g.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("passes", help="what one training reads: whole passes of chunk files (with thoughts or raw), "
                       "each document once per pass in a shuffled order, a coin per pass (data/files.py)")
    p.add_argument("parts", nargs="+", help="CHUNKS.jsonl:THOUGHTS.jsonl (augmented) or CHUNKS.jsonl (raw)")
    p.add_argument("--out", required=True, help="the bin; its directory's meta.json records it")
    p.add_argument("--min_tokens", type=int, required=True, help="whole passes until at least this many tokens")
    p.add_argument("--coin", default="frozen", choices=COINS, help="per_pass: the official loader's (em.py: --coin)")
    p.add_argument("--raw_mix", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "passes":  # the tokenizer is the one of the first chunk file's directory
        parts = [tuple(x.split(":", 1)) if ":" in x else (x, None) for x in a.parts]
        tok = get_tokenizer(read_meta(os.path.dirname(os.path.abspath(parts[0][0])))["tokenizer"])
        info = build_passes_bin(tok, parts, a.out, a.seed, a.min_tokens, a.coin, a.raw_mix)
        print(f"{a.out}: {info['tokens']:,} tokens, {info['passes']} passes of {len(parts)} part(s)")
        return
    if a.cmd == "corpus":
        prepare_corpus(a.paths, a.out_dir, a.tokenizer, a.text_field, a.warm_fraction, a.val_fraction, a.workers)
    elif a.cmd == "warm":
        for split, info in prepare_warm_start(a.dir, a.thoughts, a.val_thoughts or None, a.seed).items():
            print(f"{split}_aug.bin: {info['tokens']:,} tokens in {info['docs']} documents")
    else:
        meta = prepare_gsm8k(a.train, a.out_dir, a.test or None, a.tokenizer, a.warm_fraction, a.val_fraction,
                             a.n_exemplars, a.limit or None, a.seed)
        print(f"{a.out_dir}: {meta['counts']} problems; " + ", ".join(f"{k} {v['tokens']:,} tokens"
                                                                      for k, v in meta["bins"].items()))
    print(f"{a.dir if a.cmd == 'warm' else a.out_dir}: {describe_contract(a.dir if a.cmd == 'warm' else a.out_dir)}")


def describe_contract(directory):
    """One line for the user: complete, or what is still missing."""
    try:
        have = check_contract(directory)
    except (FileNotFoundError, ValueError) as e:
        return f"not complete yet: {e}"
    return "complete; optional parts: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in have.items())


if __name__ == "__main__":
    main(sys.argv[1:])
