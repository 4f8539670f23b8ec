"""
The tokenizer of the paper's base model family (TinyLlama, Llama 1/2, Mistral): a SentencePiece-style BPE read
from a Hugging Face tokenizer.json, in plain Python, with the four latent tokens added after its vocabulary.

    tok = get_tokenizer("/models/TinyLlama-1.1B/tokenizer.json")    # data/tokenizer.py dispatches here

What such a tokenizer does, and this class does the same (tests/test_tokenizer.py checks it against the
`tokenizers` package): every space becomes "▁" and a "▁" is put before the text (the Metaspace spelling: unless
it starts with one); the text is split into
characters, a character outside the vocabulary becomes its UTF-8 bytes as <0xXX> tokens (byte fallback); then
merges apply, lowest rank first (leftmost first among equals), until none applies. Decoding reverses it and
drops the one leading space. The whole text is one BPE word, so the merges run with a heap (n log n).

Document text never becomes a control token: "<s>" typed in a document is encoded as the characters it is
made of. The document separator (`eot`) is the model's end-of-sequence token, "</s>".
"""
import heapq
import json

from data.latent import SPECIALS

SPACE = "\u2581"  # ▁


def _normalization(path, tj):
    """Check that the file describes the legacy Llama scheme (or its Metaspace spelling); refuse anything else.
    Returns whether the "▁" is put before every text (legacy), or only before one that does not start with one."""
    norm, pre = tj.get("normalizer"), tj.get("pre_tokenizer")
    steps = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    prepend = {"type": "Prepend", "prepend": SPACE}
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    if steps == [prepend, replace] and pre is None:
        return True
    if not steps and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == SPACE and \
            pre.get("prepend_scheme", "always") in ("first", "always") and pre.get("split") is False:
        return False  # the same scheme, spelt as a pre-tokenizer that does not split the text into words
    raise ValueError(f"{path}: only the SentencePiece-style normalization of Llama 1/2 tokenizers is implemented "
                     f"(Prepend '{SPACE}' + Replace ' ', or Metaspace without split); this file has normalizer "
                     f"{json.dumps(norm)[:200]} and pre_tokenizer {json.dumps(pre)[:200]}")


class LlamaTokenizer:
    """The same interface as data.tokenizer.Tokenizer: encode, encode_batch, decode, n_vocab and the special ids."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        model = tj.get("model") or {}
        if model.get("type") != "BPE" or not model.get("byte_fallback"):
            raise ValueError(f"{path}: expected a BPE model with byte_fallback (a Llama 1/2-style tokenizer), got "
                             f"type {model.get('type')!r}, byte_fallback {model.get('byte_fallback')!r}")
        self.always_prepend = _normalization(path, tj)
        self.name = path
        self.vocab = dict(model["vocab"])
        for a in tj.get("added_tokens", []):  # <unk>, <s>, </s> usually sit in the vocabulary too
            self.vocab.setdefault(a["content"], a["id"])
        self.pieces = {i: p for p, i in self.vocab.items()}
        self.merges = {}  # (left id, right id) -> (rank, merged id)
        for rank, m in enumerate(model.get("merges", [])):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            if a + b in self.vocab:
                self.merges.setdefault((self.vocab[a], self.vocab[b]), (rank, self.vocab[a + b]))
        self.bytes = [self.vocab.get(f"<0x{i:02X}>") for i in range(256)]
        if None in self.bytes:
            raise ValueError(f"{path}: byte_fallback needs the 256 tokens <0x00>..<0xFF> in the vocabulary")
        if "</s>" not in self.vocab:
            raise ValueError(f"{path}: no '</s>' token, the document separator")
        base = max(self.pieces) + 1
        self.eot = self.vocab["</s>"]
        self.bos = self.vocab.get("<s>", self.eot)  # what Hugging Face puts before a text; our documents never use it
        self.sol, self.eol, self.prior, self.posterior = range(base, base + 4)
        self.latent_ids = [self.sol, self.eol, self.prior, self.posterior]
        self.specials = {s: i for s, i in zip(SPECIALS[1:], self.latent_ids)}
        self.n_vocab = base + 4

    def encode(self, text):
        if not text:
            return []
        ids = []
        text = text.replace(" ", SPACE)
        for ch in text if text.startswith(SPACE) and not self.always_prepend else SPACE + text:
            i = self.vocab.get(ch)
            ids += [i] if i is not None else [self.bytes[b] for b in ch.encode("utf-8")]
        return self._merge(ids)

    def _merge(self, ids):
        # a linked list of symbols and a heap of (rank, position) of the pairs that merge
        n = len(ids)
        nxt, prv, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap = [(self.merges[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in self.merges]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j >= n or self.merges.get((ids[i], ids[j]), (None,))[0] != rank:
                continue  # stale: one of the two symbols has merged with another neighbour since
            ids[i], alive[j] = self.merges[ids[i], ids[j]][1], False
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            for a in (prv[i], i):
                if a >= 0 and nxt[a] < n and (ids[a], ids[nxt[a]]) in self.merges:
                    heapq.heappush(heap, (self.merges[ids[a], ids[nxt[a]]][0], a))
        return [t for t, ok in zip(ids, alive) if ok]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        # as Hugging Face's decoder: a run of byte tokens is its UTF-8 text, or one U+FFFD per byte if invalid
        parts, run = [], bytearray()
        for i in list(ids) + [None]:
            piece = self.pieces.get(i) if i is not None else None
            if piece is not None and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                run.append(int(piece[3:5], 16))
                continue
            if run:
                try:
                    parts.append(run.decode("utf-8"))
                except UnicodeDecodeError:
                    parts.append("\ufffd" * len(run))
                run = bytearray()
            if i is None:
                break
            if piece is None:  # a latent token: by its name
                parts.append(next((name for name, j in self.specials.items() if j == i), "\ufffd"))
            else:
                parts.append(piece.replace(SPACE, " "))
        text = "".join(parts)
        return text[1:] if text.startswith(" ") else text
