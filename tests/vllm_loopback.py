"""
A stand-in for vLLM's OpenAI-compatible server, for tests on a CPU: the requests vllm_engine.py sends, answered by
our own GPT with true log-probs (GPT.generate for sampling with the request's seed, a full forward for
prompt_logprobs), in vLLM's response shapes. It answers as `vllm serve --logprobs-mode processed_logprobs` does:
sampled log-probs of the distribution the token was drawn from (allowed_token_ids applied).

    python tests/vllm_loopback.py --ckpt=CKPT.pt --port=PORT       # or start(model, tok) in a test

Faults for tests: fail_every=N answers every Nth completion request with HTTP 500; stall=(n, seconds) sleeps that
long before answering the nth.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import load_checkpoint  # noqa: E402


def completion(model, tok, body):
    prompts = body["prompt"]
    if prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    V = model.config.vocab_size
    for p in prompts:
        if any(t >= tok.n_vocab for t in p):
            return 400, {"error": {"message": f"token id out of vocabulary ({tok.n_vocab})", "code": 400}}
    choices = []
    if body.get("echo") and body.get("max_tokens") == 0:  # scoring: prompt_logprobs, first entry null
        for i, p in enumerate(prompts):
            with torch.no_grad():
                lp = F.log_softmax(model(torch.tensor([p]))[0][0, :, :V].float(), -1)
            plp = [None] + [{str(p[t]): {"logprob": float(lp[t - 1, p[t]]), "rank": 1,
                                         "decoded_token": tok.decode([p[t]])}} for t in range(1, len(p))]
            choices.append({"index": i, "text": tok.decode(p), "logprobs": None, "finish_reason": "length",
                            "prompt_logprobs": plp})
        return 200, {"object": "text_completion", "model": body["model"], "choices": choices}
    allowed = body.get("allowed_token_ids")
    banned = None if allowed is None else sorted(set(range(V)) - set(allowed))
    stop = body.get("stop_token_ids") or []
    n = body.get("n", 1)
    for j, p in enumerate(prompts):
        toks, lps, done = model.generate([p], num_samples=n, max_new_tokens=body["max_tokens"],
                                         temperature=body.get("temperature", 1.0), stop_tokens=stop,
                                         banned_tokens=banned, seed=body.get("seed"))
        for k, (t, lp, d) in enumerate(zip(toks, lps, done)):
            choices.append({"index": j * n + k, "text": tok.decode(t),
                            "logprobs": {"tokens": [f"token_id:{x}" for x in t], "token_logprobs": lp,
                                         "top_logprobs": [{f"token_id:{x}": v} for x, v in zip(t, lp)],
                                         "text_offset": [0] * len(t)},
                            "finish_reason": "stop" if d else "length", "stop_reason": t[-1] if d else None})
    return 200, {"object": "text_completion", "model": body["model"], "choices": choices}


def start(model, tok, port=0, name="served-model", fail_every=0, stall=None):
    """Serve in a thread; returns the server (server.server_address[1] is the port, shutdown() stops it)."""
    model.eval()
    count = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, obj):
            data = json.dumps(obj).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up on a stalled request
                pass

        def do_GET(self):
            if self.path == "/health":
                return self.reply(200, {})
            if self.path == "/v1/models":
                return self.reply(200, {"object": "list", "data": [{"id": name, "object": "model",
                                                                    "max_model_len": model.config.block_size}]})
            self.reply(404, {"error": {"message": "not found", "code": 404}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/detokenize":
                if any(t >= tok.n_vocab for t in body["tokens"]):
                    return self.reply(400, {"error": {"message": "token id out of vocabulary", "code": 400}})
                return self.reply(200, {"prompt": tok.decode(body["tokens"])})
            if self.path != "/v1/completions":
                return self.reply(404, {"error": {"message": "not found", "code": 404}})
            if body.get("model") != name:
                return self.reply(404, {"error": {"message": f"model {body.get('model')!r} not served", "code": 404}})
            with lock:
                count["n"] += 1
                i = count["n"]
            if fail_every and i % fail_every == 0:
                return self.reply(500, {"error": {"message": "injected failure", "code": 500}})
            if stall and i == stall[0]:
                time.sleep(stall[1])
            with lock:  # one model, one forward at a time (torch on a CPU gains nothing from more)
                code, obj = completion(model, tok, body)
            self.reply(code, obj)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.count = count
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    from data.tokenizer import get_tokenizer
    args = dict(a.removeprefix("--").split("=", 1) for a in sys.argv[1:])
    m, ck = load_checkpoint(args["ckpt"])
    torch.set_num_threads(1)
    s = start(m, get_tokenizer(ck["tokenizer"]), int(args["port"]), name=args.get("name", "served-model"))
    print(f"serving on port {s.server_address[1]}", flush=True)
    threading.Event().wait()
