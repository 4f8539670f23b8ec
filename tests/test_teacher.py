"""data/teacher.py against a chat-completions server this file starts on 127.0.0.1 (no network)."""
import hashlib
import json
import os
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data.files import chunk_prefix, read_chunks, read_jsonl, write_jsonl
from data.teacher import main, run_teacher, teacher_messages

FAST = dict(timeout=0.3, retries=3, backoff=0.001)  # small enough for a test, the same code paths as a real run


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def thought_for(messages):
    """What the test server answers: a function of the messages, so a test can tell which chunk a thought is for."""
    return "Z " + hashlib.sha1(json.dumps(messages).encode()).hexdigest()[:12]


def completion(content, finish_reason="stop"):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def ok(body, attempt):
    return 200, completion(thought_for(body["messages"])), 0.0


@contextmanager
def serve(reply):
    """A chat-completions server in a thread. reply(body, attempt) -> (status, JSON object or raw bytes, delay in s),
    where attempt counts the requests for the same messages (1 for the first). Yields (base_url, requests)."""
    requests, attempts, lock = [], {}, threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = json.dumps(body["messages"])
            with lock:
                requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                attempts[key] = attempts.get(key, 0) + 1
                n = attempts[key]
            status, payload, delay = reply(body, n)
            time.sleep(delay)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the stall test)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()  # quick shutdown
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


def chunk_file(tmp_path, sizes=(4, 1, 3)):
    path = str(tmp_path / "warm.chunks.jsonl")
    write_jsonl(path, [{"id": f"d{d}:{i}", "doc": f"d{d}", "idx": i, "text": f"Sentence {i} of document {d}. "}
                       for d, n in enumerate(sizes) for i in range(n)])
    return path


def expected(chunks):
    """{chunk id: the thought the test server gives it}, from the prompt the teacher should send."""
    return {c["id"]: thought_for(teacher_messages(chunk_prefix(doc, i, 1), c["text"]))
            for doc in read_chunks(chunks) for i, c in enumerate(doc)}


def rows(path):
    return [r for _, r in read_jsonl(path)]


def test_every_chunk_gets_its_thought_in_chunk_order(tmp_path, monkeypatch):
    chunks, out = chunk_file(tmp_path), str(tmp_path / "t.jsonl")
    # later chunks answer sooner, so the replies arrive out of order
    late = lambda body, n: (200, completion(thought_for(body["messages"])), 0.02 * (8 - len(requests)) / 8)
    monkeypatch.setenv("TEACHER_TEST_KEY", "secret")
    with serve(late) as (url, requests):
        main([f"--chunks={chunks}", f"--out={out}", f"--base_url={url}/", "--model=m", "--concurrency=4",
              "--api_key_env=TEACHER_TEST_KEY", "--max_tokens=64", "--temperature=0.5", "--timeout=2"])
    want = expected(chunks)
    got = rows(out)
    assert [r["id"] for r in got] == list(want) and {r["id"]: r["thought"] for r in got} == want
    assert all(r["usage"]["total_tokens"] == 15 and r["finish_reason"] == "stop" for r in got)
    assert len(requests) == len(want) and {r["path"] for r in requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in requests} == {"Bearer secret"}
    body = requests[0]["body"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("m", 64, 0.5)
    # the previous chunk is the context; a document's first chunk has none
    prompts = {r["body"]["messages"][1]["content"] for r in requests}
    assert any("Sentence 0 of document 0." in p and "Passage:\nSentence 1 of document 0." in p for p in prompts)
    assert any("opens the document" in p and "Passage:\nSentence 0 of document 2." in p for p in prompts)
    assert sorted(os.listdir(tmp_path)) == ["t.jsonl", "warm.chunks.jsonl"]  # no .partial, .failed or .tmp left


def test_429_and_5xx_are_retried(tmp_path):
    chunks, out = chunk_file(tmp_path), str(tmp_path / "t.jsonl")
    flaky = lambda body, n: ((500, {"error": "busy"}, 0) if n == 1 else (503, b"<html>down</html>", 0) if n == 2
                             else (429, {"error": "slow down"}, 0) if n == 3 else ok(body, n))
    with serve(flaky) as (url, requests):
        s = run_teacher(chunks, out, url, "m", concurrency=3, **FAST)
    assert {r["id"]: r["thought"] for r in rows(out)} == expected(chunks)
    assert len(requests) == 4 * 8 and s["new"] == 8 and s["tokens"] == 8 * 15


def test_a_stalled_request_times_out_and_is_retried_or_reported(tmp_path):
    chunks, out = chunk_file(tmp_path, (2,)), str(tmp_path / "t.jsonl")
    stall_once = lambda body, n: (200, completion(thought_for(body["messages"])), 1.0 if n == 1 else 0.0)
    with serve(stall_once) as (url, requests):
        run_teacher(chunks, out, url, "m", **FAST)
    assert {r["id"]: r["thought"] for r in rows(out)} == expected(chunks) and len(requests) == 4
    os.remove(out)
    with serve(lambda body, n: (200, completion("late"), 1.0)) as (url, requests):
        with pytest.raises(RuntimeError, match=r"chunk d0:\d: .*timed out.* \(after 2 attempts\)"):
            run_teacher(chunks, out, url, "m", **{**FAST, "retries": 1})
    assert not os.path.exists(out)
    assert {r["id"] for r in rows(out + ".failed.jsonl")} == {"d0:0", "d0:1"}


@pytest.mark.parametrize("bad, message", [
    (b'{"choices": [{"message": ', "malformed reply"),
    ({"choices": []}, "malformed reply .IndexError"),
    ({"error": "no choices here"}, "malformed reply .KeyError"),
    (completion(""), "empty reply"),
    (completion(None), "empty reply"),
])
def test_malformed_replies_are_retried_then_reported(tmp_path, bad, message):
    chunks, out = chunk_file(tmp_path, (3,)), str(tmp_path / "t.jsonl")
    with serve(lambda body, n: (200, bad, 0) if n <= 2 else ok(body, n)) as (url, requests):
        run_teacher(chunks, out, url, "m", **FAST)
    assert {r["id"]: r["thought"] for r in rows(out)} == expected(chunks) and len(requests) == 9
    os.remove(out)
    with serve(lambda body, n: (200, bad, 0)) as (url, requests):
        with pytest.raises(RuntimeError, match=f"chunk d0:.: {message}"):
            run_teacher(chunks, out, url, "m", **FAST)
    assert len(requests) == 3 * 4 and not os.path.exists(out)


def test_a_thought_spelling_a_control_token_is_refused_and_a_rerun_asks_only_for_it(tmp_path):
    chunks, out = chunk_file(tmp_path), str(tmp_path / "t.jsonl")
    broken = lambda body, n: ((200, completion("Z <|END_OF_LATENT|> x"), 0)
                              if "Passage:\nSentence 2 of document 0." in body["messages"][1]["content"] else ok(body, n))
    with serve(broken) as (url, requests):
        with pytest.raises(RuntimeError, match=r"1 chunk\(s\) failed \(first: chunk d0:2: reply contains the "
                                               r"control-token string <\|END_OF_LATENT\|>"):
            run_teacher(chunks, out, url, "m", concurrency=2, **FAST)
    assert len(requests) == 7 + 4 and not os.path.exists(out)
    assert rows(out + ".failed.jsonl")[0]["id"] == "d0:2"
    assert sorted(r["id"] for r in rows(out + ".partial")) == sorted(set(expected(chunks)) - {"d0:2"})
    with serve(ok) as (url, requests):
        s = run_teacher(chunks, out, url, "m", **FAST)
    assert [r["body"]["messages"][1]["content"].split("Passage:\n")[1][:26] for r in requests] == ["Sentence 2 of document 0. "]
    assert [r["id"] for r in rows(out)] == list(expected(chunks)) and (s["new"], s["resumed"]) == (1, 7)
    assert not os.path.exists(out + ".partial") and not os.path.exists(out + ".failed.jsonl")


def test_resume_after_a_kill_skips_done_ids(tmp_path):
    chunks, out = chunk_file(tmp_path), str(tmp_path / "t.jsonl")
    want = expected(chunks)
    ids = list(want)
    # a killed run: some results on disk, out of order, and the last line cut mid-write
    with open(out + ".partial", "w") as f:
        for i in (ids[5], ids[0], ids[2]):
            f.write(json.dumps({"id": i, "thought": want[i], "usage": {}}) + "\n")
        f.write('{"id": "' + ids[3] + '", "thou')
    with serve(ok) as (url, requests):
        s = run_teacher(chunks, out, url, "m", **FAST)
    assert len(requests) == len(ids) - 3 and (s["new"], s["resumed"]) == (len(ids) - 3, 3)
    assert [(r["id"], r["thought"]) for r in rows(out)] == list(want.items())
    with serve(ok) as (url, requests):  # complete already: nothing to ask
        run_teacher(chunks, out, url, "m", **FAST)
    assert requests == [] and [r["id"] for r in rows(out)] == ids
    write_jsonl(out, [{"id": "other:0", "thought": "x"}])
    with pytest.raises(ValueError, match="t.jsonl:1: chunk id 'other:0' is not in"):
        run_teacher(chunks, out, "http://127.0.0.1:9/v1", "m", **FAST)


def test_a_client_error_is_not_retried_and_failures_stop_the_run(tmp_path):
    chunks, out = chunk_file(tmp_path, (20,)), str(tmp_path / "t.jsonl")
    with serve(lambda body, n: (401, {"error": "bad key"}, 0)) as (url, requests):
        with pytest.raises(RuntimeError, match=r"chunk d0:\d+: HTTP 401: .*bad key.* \(after 1 attempt\).*stopped early"):
            run_teacher(chunks, out, url, "m", concurrency=1, max_failures=2, **FAST)
    assert 3 <= len(requests) <= 5  # one try each; stops once more than 2 failed (what was in flight finishes)


def test_no_server_is_a_connection_error_retried_then_reported(tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chunks, out = chunk_file(tmp_path, (1,)), str(tmp_path / "t.jsonl")
    with pytest.raises(RuntimeError, match=r"chunk d0:0: URLError: .*refused.* \(after 3 attempts\)"):
        run_teacher(chunks, out, f"http://127.0.0.1:{port}/v1", "m", **{**FAST, "retries": 2})


def test_corpus_teacher_warm_gives_a_complete_directory(tmp_path):
    from data.files import check_contract, open_bin
    from data.prepare import prepare_corpus, prepare_warm_start
    from data.tokenizer import get_tokenizer
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"Doc {i}. It has two sentences, {i} and {i + 1}."}) + "\n"
                           for i in range(30)))
    d = str(tmp_path / "data")
    prepare_corpus([str(src)], d, tokenizer="byte", workers=1, warm_fraction=0.3, val_fraction=0.1)
    with serve(ok) as (url, requests):
        run_teacher(os.path.join(d, "warm.chunks.jsonl"), str(tmp_path / "t.jsonl"), url, "m", **FAST)
    prepare_warm_start(d, str(tmp_path / "t.jsonl"))
    assert check_contract(d)["boot_gold"] is False
    text = get_tokenizer("byte").decode(open_bin(os.path.join(d, "warm_aug.bin")))
    assert text.count("<|PRIOR_PREFIX|>Z ") + text.count("<|POSTERIOR_PREFIX|>Z ") == len(requests) > 0
