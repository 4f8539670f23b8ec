"""
The warm-start teacher (docs/method.md, Warm start): a strong model served behind any OpenAI-compatible
chat-completions endpoint (vLLM, llama.cpp's server, an API) writes the thought of every chunk of a chunk file,
reading the previous chunk as context, as GPT-4o-mini does in the paper.

    python -m data.teacher --chunks=DIR/warm.chunks.jsonl --out=teacher.jsonl \
        --base_url=http://127.0.0.1:8000/v1 --model=NAME [--api_key_env=OPENAI_API_KEY] [--concurrency=8]
    python -m data.prepare warm --dir=DIR --thoughts=teacher.jsonl

Output: one {"id", "thought", "finish_reason", "usage"} line per chunk, in chunk order.
What can go wrong, and what happens then:
  - 429, 5xx, timeouts, refused or dropped connections, malformed JSON, no choices, empty content: retried with
    exponential backoff (--retries, --backoff); other 4xx (a bad key, an unknown model) are not retried.
  - a reply that spells a control token (<|END_OF_LATENT|>, <|endoftext|>, ...) is refused and retried. The
    tokenizer would keep it as plain text, but a thought that contains one is almost surely a broken reply.
  - every result is appended to OUT.partial as it arrives, so a kill loses only the requests in flight; a rerun
    skips every chunk id already in OUT or OUT.partial. OUT is written, in chunk order, only when every chunk
    has its thought: a complete OUT never lacks one.
  - a chunk still failing after its retries goes to OUT.failed.jsonl with its last error; the others go on (at
    most --max_failures failures, then the run stops early) and the run ends with an error naming the first.
"""
import argparse
import http.client
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from tqdm import tqdm

from data.files import chunk_prefix, read_chunks, read_jsonl, write_jsonl
from data.latent import SPECIALS

SYSTEM = ("You restore the thinking that a text leaves out. Its author knew background facts and worked through "
          "steps that the text never writes down; a reader has to supply them to follow it. You are shown the "
          "context (the text just before a passage) and the passage itself. Write the thoughts a careful expert "
          "has on the way from the context to the passage: the background knowledge it relies on and every "
          "skipped intermediate step, worked out explicitly (calculations included). Write only these thoughts, "
          "as plain prose and formulas: do not copy the passage, do not summarise it, do not address anyone.")


def teacher_messages(prefix, text):
    """The chat messages that ask for the thought of chunk text, whose previous chunk is prefix."""
    context = prefix if prefix.strip() else "(none: the passage opens the document)"
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n{context}\n\nPassage:\n{text}\n\n"
                                        "Write the thoughts that lead from the context to this passage."}]


class TeacherError(Exception):
    """A request that did not give a usable thought; retry says whether another try may help."""

    def __init__(self, message, retry=True, wait=None):
        super().__init__(message)
        self.retry, self.wait = retry, wait


def ask(opener, url, headers, body, timeout):
    """One chat-completions request -> (thought, finish_reason, usage)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with opener.open(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        wait = e.headers.get("Retry-After") if e.headers else None
        raise TeacherError(f"HTTP {e.code}: {detail}", retry=e.code in (408, 409, 429) or e.code >= 500,
                           wait=float(wait) if wait and wait.replace(".", "", 1).isdigit() else None) from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, refused and dropped connections (URLError too)
        raise TeacherError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    try:
        reply = json.loads(raw)
        choice = reply["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise TeacherError(f"malformed reply ({type(e).__name__}: {e}): {raw[:200]!r}") from None
    if not isinstance(content, str) or not content.strip():
        raise TeacherError(f"empty reply (content {content!r}, finish_reason {choice.get('finish_reason')!r})")
    spelled = [s for s in SPECIALS if s in content]
    if spelled:
        raise TeacherError(f"reply contains the control-token string {spelled[0]}, refused as a broken reply: "
                           f"{content[:200]!r}")
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    return content.strip(), choice.get("finish_reason"), usage


def think(chunk_id, messages, opener, url, headers, body, timeout, retries, backoff, max_backoff=60.0):
    """The thought of one chunk, retrying with exponential backoff (and jitter, so that concurrent requests that
    failed together do not all come back together)."""
    for attempt in range(retries + 1):
        try:
            thought, finish, usage = ask(opener, url, headers, {**body, "messages": messages}, timeout)
            return {"id": chunk_id, "thought": thought, "finish_reason": finish, "usage": usage}
        except TeacherError as e:
            last = e
            if not e.retry or attempt == retries:
                break
            time.sleep(min(max_backoff, e.wait or backoff * 2 ** attempt) * random.uniform(0.5, 1.0))
    raise TeacherError(f"chunk {chunk_id}: {last} (after {attempt + 1} attempt{'s' * (attempt > 0)})", retry=False)


def drop_torn_line(path):
    """A kill during a write can leave the last line of path incomplete: cut it off, so the next append starts
    on a line of its own."""
    with open(path, "rb+") as f:
        end = pos = f.seek(0, 2)
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            i = f.read(step).rfind(b"\n")
            if i >= 0:
                pos += i + 1 - step
                break
            pos -= step
        if pos < end:
            f.truncate(pos)


def load_done(chunks_path, known, *paths):
    """{chunk id: row} from an earlier output and its partial file; a row for a chunk that is not in the chunk
    file means the output belongs to another chunk file."""
    done = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        for n, row in read_jsonl(path, required=("id", "thought")):
            if row["id"] not in known:
                raise ValueError(f"{path}:{n}: chunk id {row['id']!r} is not in {chunks_path} (an output of "
                                 "another chunk file? use another --out)")
            done.setdefault(row["id"], row)
    return done


def run_teacher(chunks, out, base_url, model, api_key=None, concurrency=8, max_tokens=512, temperature=0.7,
                timeout=120.0, retries=6, backoff=1.0, max_failures=10):
    """Thoughts for every chunk of the chunk file, into out (see the module docstring). Returns a summary."""
    docs = read_chunks(chunks)
    # docs/method.md, Warm start: the teacher sees the previous 1 chunk
    work = [(c["id"], teacher_messages(chunk_prefix(doc, i, 1), c["text"])) for doc in docs for i, c in enumerate(doc)]
    order = [i for i, _ in work]
    partial, failed_path = out + ".partial", out + ".failed.jsonl"
    if os.path.exists(partial):
        drop_torn_line(partial)
    done = load_done(chunks, set(order), out, partial)
    todo = [(i, m) for i, m in work if i not in done]

    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    body = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    opener = urllib.request.build_opener()  # reads the proxy settings (and no_proxy) of this run's environment
    t0, tokens, failed, new = time.time(), 0, [], 0
    bar = tqdm(total=len(order), initial=len(done), unit="chunk", desc="teacher", disable=not sys.stderr.isatty())
    pool = ThreadPoolExecutor(concurrency)
    try:
        with open(partial, "a") as f:
            pending, queue = {}, iter(todo)
            while True:
                # a bounded window of submitted requests: memory stays small and a stop takes effect at once
                while len(pending) < 2 * concurrency and len(failed) <= max_failures:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending[pool.submit(think, *item, opener, url, headers, body, timeout, retries, backoff)] = item[0]
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    chunk_id = pending.pop(fut)
                    try:
                        row = fut.result()
                    except TeacherError as e:
                        failed.append({"id": chunk_id, "error": str(e)})
                        continue
                    f.write(json.dumps(row) + "\n")
                    f.flush()  # on disk before it counts as done: a kill loses only what is in flight
                    done[chunk_id] = row
                    new += 1
                    u = row["usage"]
                    tokens += u.get("total_tokens") or (u.get("prompt_tokens") or 0) + (u.get("completion_tokens") or 0)
                    bar.update(1)
                    bar.set_postfix(tokens=f"{tokens:,}", failed=len(failed), refresh=False)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    summary = {"chunks": len(order), "new": new, "resumed": len(order) - len(todo), "failed": len(failed),
               "tokens": tokens, "seconds": round(time.time() - t0, 3),
               "truncated": sum(done[i].get("finish_reason") == "length" for i in done)}
    if failed:
        write_jsonl(failed_path, failed)
        left = len(order) - len(done)
        raise RuntimeError(f"{len(failed)} chunk(s) failed (first: {failed[0]['error']}); "
                           f"{'stopped early after --max_failures; ' if left > len(failed) else ''}"
                           f"the {len(done)} thoughts received are kept in {partial}: run the same command again "
                           f"to ask only for the {left} missing (failures listed in {failed_path})")
    write_jsonl(out, (done[i] for i in order))  # atomic: OUT appears complete, in chunk order, or not at all
    for p in (partial, failed_path):
        if os.path.exists(p):
            os.remove(p)
    return summary


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--chunks", required=True, help="a chunk file, e.g. DIR/warm.chunks.jsonl")
    ap.add_argument("--out", required=True, help="the thoughts jsonl to write")
    ap.add_argument("--base_url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key (if set)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max_tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--retries", type=int, default=6)
    ap.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry, doubled each time")
    ap.add_argument("--max_failures", type=int, default=10, help="stop asking after more chunks than this failed")
    a = ap.parse_args(argv)
    if a.concurrency < 1 or a.retries < 0:
        ap.error("--concurrency must be at least 1 and --retries at least 0")
    try:
        s = run_teacher(a.chunks, a.out, a.base_url, a.model, os.environ.get(a.api_key_env) if a.api_key_env else None,
                        a.concurrency, a.max_tokens, a.temperature, a.timeout, a.retries, a.backoff, a.max_failures)
    except (RuntimeError, ValueError) as e:  # failed chunks, or a chunk or output file that is not what it should be
        sys.exit(f"teacher: {e}")
    print(f"{a.out}: {s['chunks']} thoughts ({s['new']} new, {s['resumed']} from an earlier run), {s['tokens']:,} "
          f"tokens in {s['seconds']:.1f}s; {s['truncated']} cut at --max_tokens")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
