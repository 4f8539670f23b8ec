import errno
import filecmp
import gzip
import json
import os
import re

import pytest

from conftest import SHARED_DATA
from data.files import check_contract, open_bin, read_chunks, read_jsonl, read_meta, write_jsonl
from data.latent import show
from data.prepare import chunk_document, prepare_corpus, prepare_gsm8k, prepare_warm_start, split_of, split_sentences
from data.tokenizer import get_tokenizer

TEXT = ("The cat sat. It was 3.14 m tall, e.g. quite tall! Why? Because.\nA new line starts here. "
        "Dr. Who agrees.  Two spaces. ") * 20


def test_sentences_and_chunks_give_back_the_text():
    sents = split_sentences(TEXT)
    assert "".join(sents) == TEXT and len(sents) > 100
    assert not any(s.rstrip().endswith(("3.", "e.g.", "Dr.")) for s in sents)
    chunks = chunk_document(TEXT)
    assert "".join(chunks) == TEXT and len(chunks) > 3
    assert all(len(split_sentences(c)) <= 20 for c in chunks)
    assert chunk_document(TEXT) == chunks  # seeded by the text
    other = TEXT.replace("cat", "dog")
    assert [len(c) for c in chunk_document(other)] != [len(c) for c in chunks]
    long = "word " * 5000  # one endless sentence: chunked at whitespace, never cut
    parts = chunk_document(long, max_chunk_chars=1000)
    assert "".join(parts) == long and len(parts) >= 25 and max(map(len, parts)) <= 1000


def corpus(tmp_path, rows, name="c.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_same_inputs_give_identical_files_with_any_number_of_workers(tmp_path):
    rows = [{"text": TEXT[: 200 + 37 * i]} for i in range(40)]
    src = corpus(tmp_path, rows)
    for w, d in ((1, "a"), (2, "b")):
        prepare_corpus([src], str(tmp_path / d), tokenizer="byte", workers=w, val_fraction=0.2)
    for f in ("warm_raw.bin", "boot_raw.bin", "val_raw.bin", "warm.chunks.jsonl", "boot.chunks.jsonl",
              "val.chunks.jsonl"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    meta = read_meta(str(tmp_path / "a"))
    assert meta["counts"]["documents"] == 40 and meta["sources"][0]["sha256"]
    for name, info in meta["bins"].items():
        assert info["tokens"] == len(open_bin(str(tmp_path / "a" / name)))


def test_special_token_strings_stay_text(tmp_path):
    src = corpus(tmp_path, [{"text": "a <|END_OF_LATENT|> b <|endoftext|> c <|PRIOR_PREFIX|>"}] * 3)
    prepare_corpus([src], str(tmp_path / "o"), tokenizer="gpt2", workers=1, val_fraction=0.0)
    tok = get_tokenizer("gpt2")
    ids = [i for s in ("warm", "boot") for i in open_bin(str(tmp_path / "o" / f"{s}_raw.bin"))]
    assert ids.count(tok.eot) == 3 and not set(ids) & set(tok.latent_ids)
    assert tok.decode(ids).count("<|END_OF_LATENT|>") == 3


def test_bad_inputs(tmp_path):
    p = tmp_path / "file.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n')
    with pytest.raises(ValueError, match="file.jsonl:3: malformed JSON"):
        prepare_corpus([str(p)], str(tmp_path / "o1"), tokenizer="byte", workers=1)
    assert not os.path.exists(tmp_path / "o1" / "boot_raw.bin")  # nothing half-written looks finished
    assert not os.path.exists(tmp_path / "o1" / "boot.chunks.jsonl")
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match="file.jsonl:2: no string field 'text'"):
        prepare_corpus([str(p)], str(tmp_path / "o2"), tokenizer="byte", workers=1)
    g = tmp_path / "mixed.jsonl.gz"
    with gzip.open(g, "wb") as f:
        f.write(b'{"text": "caf\xe9 ok"}\n{"text": ""}\n{"text": "fine"}\n')
    meta = prepare_corpus([str(g)], str(tmp_path / "o3"), tokenizer="byte", workers=1, warm_fraction=0.0,
                          val_fraction=0.0)
    assert meta["counts"] == {"documents": 2, "empty_skipped": 1, "invalid_utf8": 1, "chunks": 2}
    text = get_tokenizer("byte").decode(open_bin(str(tmp_path / "o3" / "boot_raw.bin")))
    assert text == "caf\ufffd ok<|endoftext|>fine<|endoftext|>"


def test_documents_split_by_a_hash_of_their_text():
    texts = [f"document {i}" for i in range(4000)]
    splits = [split_of(t, 0.2, 0.1) for t in texts]
    assert splits == [split_of(t, 0.2, 0.1) for t in texts]  # deterministic
    n = {s: splits.count(s) / len(texts) for s in ("warm", "boot", "val")}
    assert abs(n["val"] - 0.1) < 0.02 and abs(n["warm"] - 0.2 * 0.9) < 0.02  # warm: a fraction of the non-val ones
    assert {split_of(t, 1.0, 0.0) for t in texts} == {"warm"} and {split_of(t, 0.0, 0.0) for t in texts} == {"boot"}


def test_warm_start_thoughts_join_the_chunk_file(tmp_path):
    src = corpus(tmp_path, [{"text": TEXT[:400 + 50 * i]} for i in range(12)])
    out = str(tmp_path / "o")
    prepare_corpus([src], out, tokenizer="byte", workers=1, warm_fraction=0.5, val_fraction=0.2)
    with pytest.raises(FileNotFoundError, match="missing warm.thoughts.jsonl .made by: python -m data.teacher"):
        check_contract(out)
    chunk_ids = {s: [c["id"] for doc in read_chunks(os.path.join(out, f"{s}.chunks.jsonl")) for c in doc]
                 for s in ("warm", "val")}
    assert chunk_ids["warm"] and chunk_ids["val"] and all(i.startswith("warm") for i in chunk_ids["warm"])
    th, vth = str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl")
    # the teacher's order and extra fields do not matter: warm.thoughts.jsonl is in chunk order
    write_jsonl(th, [{"id": i, "thought": f"Z{i}", "usage": 3} for i in reversed(chunk_ids["warm"])])
    write_jsonl(vth, [{"id": i, "thought": f"V{i}"} for i in chunk_ids["val"]])
    prepare_warm_start(out, th)
    assert check_contract(out) == {"val_aug": False, "val_thoughts": False, "boot_gold": False, "eval": False,
                                   "exemplars": False, "valid": False}
    assert [r["id"] for _, r in read_jsonl(os.path.join(out, "warm.thoughts.jsonl"))] == chunk_ids["warm"]
    text = get_tokenizer("byte").decode(open_bin(os.path.join(out, "warm_aug.bin")))
    prior = "<|START_OF_LATENT|><|PRIOR_PREFIX|>Zwarm"
    post = "<|START_OF_LATENT|><|POSTERIOR_PREFIX|>Zwarm"
    assert (prior in text or post in text) and text.count("<|endoftext|>") == read_meta(out)["bins"]["warm_raw.bin"]["docs"]
    prepare_warm_start(out, th, vth)
    assert check_contract(out)["val_aug"]
    assert "<|PRIOR_PREFIX|>Vval" in get_tokenizer("byte").decode(open_bin(os.path.join(out, "val_aug.bin")))
    # a thought for a chunk that is not there, or a chunk without a thought: errors naming the chunk
    write_jsonl(th, [{"id": "99:0", "thought": "x"}])
    with pytest.raises(ValueError, match="t.jsonl:1: chunk id '99:0' is not in"):
        prepare_warm_start(out, th)
    write_jsonl(th, [{"id": i, "thought": "x"} for i in chunk_ids["warm"][1:]])
    with pytest.raises(ValueError, match=f"no thought for chunk '{chunk_ids['warm'][0]}'"):
        prepare_warm_start(out, th)
    # preparing the corpus again removes the thoughts of the chunks it replaced
    prepare_corpus([src], out, tokenizer="byte", workers=1, warm_fraction=0.3, val_fraction=0.2)
    assert not {"warm_aug.bin", "val_aug.bin", "warm.thoughts.jsonl"} & set(os.listdir(out))
    assert "warm_aug.bin" not in read_meta(out)["bins"]


def test_gsm8k_directory_meets_the_contract(tmp_path):
    train, test = (os.path.join(SHARED_DATA, "gsm8k", f) for f in ("train.jsonl", "test.jsonl"))
    if not os.path.exists(train):
        pytest.skip(f"{train} not found")
    out = str(tmp_path / "g")
    prepare_gsm8k(train, out, test=test, tokenizer="gpt2", val_fraction=0.1, limit=40)
    have = check_contract(out)
    assert have == {"val_aug": True, "val_thoughts": True, "boot_gold": True, "eval": True, "exemplars": True,
                    "valid": False}
    assert filecmp.cmp(test, os.path.join(out, "eval.jsonl"), shallow=False)
    rows = [r for _, r in zip(range(40), read_jsonl(train))]
    by_question = {r["question"]: r for _, r in rows}
    tok = get_tokenizer("gpt2")
    warm = read_chunks(os.path.join(out, "warm.chunks.jsonl"))
    ids = list(open_bin(os.path.join(out, "warm_aug.bin"), tokenizer="gpt2"))
    assert ids.count(tok.eot) == len(warm) > 0
    # each document: problem and answer in different chunks; the answer chunk's thought is the worked solution
    for doc, doc_ids in zip(warm, show(tok, ids).split("<|endoftext|>")):
        q = doc[0]["text"][len("Problem:\n"):-1]
        r = by_question[q]
        work, gold = r["answer"].split("####")
        gold = gold.strip().replace(",", "")
        assert [c["text"] for c in doc] == [f"Problem:\n{q}\n", f"Final Answer: {gold}\n"]
        solution = re.sub(r"<<[^>]*>>", "", work).strip()
        assert "<<" not in solution and solution.split()[0] == work.split()[0]
        answer = (f"<|START_OF_LATENT|><|PRIOR_PREFIX|>{solution}<|END_OF_LATENT|>Final Answer: {gold}\n",
                  f"<|START_OF_LATENT|><|END_OF_LATENT|>Final Answer: {gold}\n"
                  f"<|START_OF_LATENT|><|POSTERIOR_PREFIX|>{solution}<|END_OF_LATENT|>")
        assert q in doc_ids and doc_ids.endswith(answer)
    # the boot split's solutions are kept as gold, never in a training bin
    gold = {r["id"]: r["thought"] for _, r in read_jsonl(os.path.join(out, "boot.gold.jsonl"))}
    boot = read_chunks(os.path.join(out, "boot.chunks.jsonl"))
    assert len(gold) == 2 * len(boot) and len(warm) + len(boot) + read_meta(out)["counts"]["val"] == 40
    # the exemplars read as eval_math.py reads them: problem, thought and gold for the latent prompt
    ex = [r for _, r in read_jsonl(os.path.join(out, "exemplars.jsonl"))]
    assert len(ex) == 8 and ex[0]["problem"] == rows[0][1]["question"] and ex[0]["answer"] == "72"
    assert ex[0]["thought"].startswith("Natalia sold 48/2 = 24 clips") and ex[0]["raw_solution"] == "Final Answer: 72"
    from eval_math import load_rows
    shot = load_rows(os.path.join(out, "exemplars.jsonl"))[0]
    assert (shot["problem"], shot["thought"], shot["gold"]) == (ex[0]["problem"], ex[0]["thought"], "72")
    assert shot["raw_solution"] == "Final Answer: 72" and load_rows(os.path.join(out, "eval.jsonl"))[0]["gold"]


def test_gsm8k_train_as_a_real_corpus(tmp_path):
    path = os.path.join(SHARED_DATA, "gsm8k", "train.jsonl")
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    n = sum(1 for _ in open(path))
    meta = prepare_corpus([path], str(tmp_path / "g"), tokenizer="gpt2", workers=2, val_fraction=0.01)
    assert meta["counts"]["documents"] == n
    assert sum(b["docs"] for b in meta["bins"].values()) == n
    for name, info in meta["bins"].items():
        assert info["tokens"] == len(open_bin(str(tmp_path / "g" / name), tokenizer="gpt2"))
    first = read_chunks(str(tmp_path / "g" / "boot.chunks.jsonl"))[0]
    tok = get_tokenizer("gpt2")
    ids = list(open_bin(str(tmp_path / "g" / "boot_raw.bin")))
    assert tok.decode(ids[:ids.index(tok.eot)]) == "".join(c["text"] for c in first)


def snapshot(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def test_another_tokenizer_replaces_nothing_and_bins_must_match_meta(tmp_path):
    src = corpus(tmp_path, [{"text": TEXT[:300]}, {"text": TEXT[300:700]}])
    out = str(tmp_path / "o")
    prepare_corpus([src], out, tokenizer="gpt2", workers=1, warm_fraction=0.0, val_fraction=0.0)
    before = snapshot(out)
    with pytest.raises(ValueError, match="meta.json: tokenizer 'gpt2', but writing 'byte' bins"):
        prepare_corpus([src], out, tokenizer="byte", workers=1, val_fraction=0.0)
    assert snapshot(out) == before  # checked before anything was written; no .tmp left either
    # a bin that is not the one meta.json describes is an error naming it
    with open(os.path.join(out, "boot_raw.bin"), "ab") as f:
        f.write(b"\0\0" * 5)
    with pytest.raises(ValueError, match=r"boot_raw.bin: \d+ tokens, but meta.json beside it records \d+"):
        open_bin(os.path.join(out, "boot_raw.bin"))


class FullDisk:
    """A file on a full disk: write, flush and close all fail (close still closes, as io's files do)."""

    def __init__(self, path, mode):
        self.f = open(path, mode)

    def _fail(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    write = flush = _fail

    def close(self):
        self.f.close()
        self._fail()


def test_full_disk_leaves_no_tmp_files(tmp_path, monkeypatch):
    import data.files
    real_open = open
    monkeypatch.setattr(data.files, "open", lambda p, mode="r", *a, **k:
                        FullDisk(p, mode) if "w" in mode else real_open(p, mode, *a, **k), raising=False)
    with pytest.raises(OSError, match="No space left"):
        write_jsonl(str(tmp_path / "a" / "x.jsonl"), [{"a": 1}])
    assert os.listdir(tmp_path / "a") == []
    src = corpus(tmp_path, [{"text": TEXT[:300]}])
    with pytest.raises(OSError, match="No space left"):
        prepare_corpus([src], str(tmp_path / "o"), tokenizer="byte", workers=1, val_fraction=0.0)
    assert os.listdir(tmp_path / "o") == []  # the chunk files and both bins were removed


def test_truncated_or_corrupt_gzip_input_names_the_file(tmp_path):
    raw = "".join(json.dumps({"text": f"{i} {TEXT[i:i + 200]}"}) + "\n" for i in range(300)).encode()
    data = gzip.compress(raw)
    cases = {"cut.jsonl.gz": data[:len(data) // 2], "flipped.jsonl.gz": data[:500] + bytes(50) + data[550:],
             "plain.jsonl.gz": raw}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=rf"{name}:\d+: truncated or corrupt gzip data"):
            prepare_corpus([str(tmp_path / name)], str(tmp_path / "o"), tokenizer="byte", workers=1)
        assert not os.path.exists(tmp_path / "o" / "boot_raw.bin")


def test_bad_chunk_files_are_errors_naming_file_and_line(tmp_path):
    p = str(tmp_path / "c.chunks.jsonl")
    row = lambda i, text: {"id": f"0:{i}", "doc": 0, "idx": i, "text": text}
    write_jsonl(p, [row(0, "a"), row(1, ["not", "text"])])
    with pytest.raises(ValueError, match="c.chunks.jsonl:2: field 'text' is list, not a string"):
        read_chunks(p)
    write_jsonl(p, [row(0, "a"), row(1, "b"), {**row(0, "c"), "doc": 1}])
    with pytest.raises(ValueError, match="c.chunks.jsonl:3: chunk id '0:0' already used on line 1"):
        read_chunks(p)
    write_jsonl(p, [row(0, "a"), row(1, "b")])
    with open(p, "ab") as f:
        f.write(b'{"id": "0:2", "doc": 0, "idx": 2, "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="c.chunks.jsonl:3: not valid UTF-8"):
        read_chunks(p)


def test_the_embedded_corpus_meets_the_contract(tmp_path):
    from data.mathworld import prepare
    prepare(str(tmp_path / "m"), n_docs=20, n_val_docs=4, n_eval=4, n_valid=4, n_background_docs=4)
    assert check_contract(str(tmp_path / "m")) == {"val_aug": True, "val_thoughts": True, "boot_gold": True,
                                                   "eval": True, "exemplars": True, "valid": True}
    os.remove(tmp_path / "m" / "warm_aug.bin")
    with pytest.raises(FileNotFoundError, match="missing warm_aug.bin .made by: python -m data.prepare warm"):
        check_contract(str(tmp_path / "m"))


def test_a_fitted_tokenizer_is_named_by_its_merges_and_a_second_one_is_refused_before_writing(tmp_path):
    src = corpus(tmp_path, [{"text": TEXT[:400]}, {"text": TEXT[400:900]}])
    out = str(tmp_path / "o")
    meta = prepare_corpus([src], out, tokenizer="fit:20", workers=1, val_fraction=0.0)
    assert meta["tokenizer"] == os.path.join(out, "tokenizer-20.tiktoken") and meta["vocab_size"] <= 256 + 20 + 5
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"meta.json: tokenizer .*tokenizer-20.tiktoken.*tokenizer-30.tiktoken"):
        prepare_corpus([src], out, tokenizer="fit:30", workers=1, val_fraction=0.0)
    assert snapshot(out) == before  # no second tokenizer file, nothing else touched
    with pytest.raises(ValueError, match="fit:N with N a number of merges"):
        prepare_corpus([src], str(tmp_path / "p"), tokenizer="fit:many", workers=1)
