"""
A GPT-2-architecture language model in plain PyTorch (nanoGPT-style), with what the EM loop asks of it:
(a few GPTConfig switches turn its blocks into Llama's: rotary positions, RMSNorm, SwiGLU, grouped-query attention)

- `KVCache`: preallocated keys and values, written at the columns each call names.
- `GPT.generate`: batched sampling with that cache. Prompts of different lengths in one call, one prefill per
  prompt shared by its K samples (the E-step's K thoughts), per-row stop tokens, and the log-prob of every
  sampled token (the E-step's log q(Z | X, P)).
- `GPT.score`: teacher-forced sums of log-probs over a suffix of each sequence (the E-step's log p(Z, X | P)).

Checkpoints and process setup are in common.py; Hugging Face import and export in hf.py.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# How generate(compile_step=True) compiles decode_step: CUDA graphs (mode "reduce-overhead"), one graph, no breaks.
# A setting, so that a test compiles the same step with a CPU backend (tests/test_model.py). A call with a new batch
# size or cache width does not recompile each time: at the first recompile dynamo's automatic dynamic shapes make
# batch and width symbolic, and a batch of one row gets a graph of its own (dynamo specialises sizes 0 and 1); 3
# compiles per model shape in that test, over more shapes than dynamo's recompile_limit (8), past which
# fullgraph=True would fail. Not measured, as no GPU was lent: CUDA graphs are still recorded once per distinct
# (batch, width), by torch's cudagraph trees, at the cost of a warm-up step and memory each.
DECODE_COMPILE = dict(mode="reduce-overhead", fullgraph=True)


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50261  # the tokenizer's size; the embedding is padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    # the defaults above and below are GPT-2; Llama is rope_theta=10000.0, norm="rmsnorm", norm_eps=1e-6,
    # mlp="swiglu", bias=False, tie_embeddings=False (and often n_kv_head < n_head)
    rope_theta: float = 0.0  # > 0: rotary positions with this base, and no learned position embedding
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # GPT-2's tanh-approximated GELU; "gelu_exact": the erf GELU (on a CPU without AVX-512 several
    # times faster than the tanh form, forward and backward: docs/benchmarks.md); "swiglu": c_proj(silu(gate) * up)
    n_inner: int = 0  # MLP hidden width; 0: 4 * n_embd
    n_kv_head: int = 0  # key/value heads, fewer than n_head for grouped-query attention; 0: n_head
    tie_embeddings: bool = True  # lm_head shares wte's weight

    def __post_init__(self):
        # spell out the 0 defaults, so code reads one value (checkpoints saved before these fields load as GPT-2)
        self.n_kv_head = self.n_kv_head or self.n_head
        self.n_inner = self.n_inner or 4 * self.n_embd


def make_norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rotate(x, cos, sin):
    # rotary embedding in the "halves" layout Hugging Face's Llama uses: pairs are (i, i + hs/2), not adjacent
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.n_kv_head = config.n_kv_head
        assert config.n_head % self.n_kv_head == 0
        hs = config.n_embd // config.n_head
        # one fused projection: n_head query heads, then n_kv_head key heads and as many value heads
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * self.n_kv_head) * hs, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, layer=0, mask=None, rope=None, start=0):
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_head, hs).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hs)
        if rope is not None:
            cos, sin = (t.to(q.dtype) for t in rope)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # keys are cached already rotated
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # (B, nkv, S, hs): the columns cached so far, these included
        dropout = self.dropout if self.training else 0.0
        gqa = self.n_kv_head != self.n_head  # query head h reads key/value head h // (nh / nkv)
        if mask is None:
            # no cache and no padding: the fused (flash) causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
        else:
            # is_causal aligns its triangle top-left, wrong once keys include a cached prefix: explicit mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        n = config.n_inner
        self.swiglu = config.mlp == "swiglu"
        self.approximate = "none" if config.mlp == "gelu_exact" else "tanh"
        # SwiGLU's gate and up projections are one fused c_fc, gate rows first
        self.c_fc = nn.Linear(config.n_embd, 2 * n if self.swiglu else n, bias=config.bias)
        self.c_proj = nn.Linear(n, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.dropout(self.c_proj(F.silu(gate) * up))
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, mask=None, rope=None, start=0):
        x = x + self.attn(self.ln_1(x), cache, layer, mask, rope, start)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """
    Preallocated keys/values for every layer, (L, B, nkv, T, hs), nkv the key/value heads (fewer than the query
    heads under grouped-query attention). All rows share their columns: prompts are left-padded so they end
    together, and padding is hidden by the attention mask.

    One way in, as gpt-fast's `update(input_pos, k, v)`: every call names the first column it writes, and nothing
    outside the cache keeps a write pointer. `start` is a Python int (prefill, scoring, eager decoding: attention
    then reads the columns up to the last one written, as reading the cache is most of a small model's decode
    step on a CPU), or a (1,) long tensor on the device (the compiled decode step: no value from the host, and
    attention reads the whole buffer, so every step has the same shapes and is captured once as a CUDA graph).
    """

    def __init__(self, n_layer, B, n_head, T, head_dim, dtype, device):
        self.k = torch.zeros(n_layer, B, n_head, T, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def width(self, start, t):
        """How many columns attention reads after writing t columns from start (the masks are this wide)."""
        return start + t if isinstance(start, int) else self.k.size(3)

    def update(self, layer, start, k, v):
        """Write k, v (B, nkv, t, hs) into columns start..start+t-1; returns (B, nkv, width, hs) keys and values."""
        t = k.size(2)
        if isinstance(start, int):
            self.k[layer, :, :, start:start + t] = k
            self.v[layer, :, :, start:start + t] = v
        else:
            cols = start + torch.arange(t, device=start.device)
            self.k[layer].index_copy_(2, cols, k)
            self.v[layer].index_copy_(2, cols, v)
        n = self.width(start, t)
        return self.k[layer, :, :, :n], self.v[layer, :, :, :n]

    def select(self, rows):
        """Keep only these batch rows (repeat a shared prompt K times, or drop finished rows)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        for key, values in (("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "gelu_exact", "swiglu"))):
            if getattr(config, key) not in values:
                raise ValueError(f"GPTConfig.{key}={getattr(config, key)!r}: expected one of {values}")
        self.config = config
        self.padded_vocab = (config.vocab_size + 63) // 64 * 64
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(self.padded_vocab, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.rope_theta > 0:
            hs = config.n_embd // config.n_head
            # rotary frequencies theta^(-2i/hs); a buffer, not a weight: not in the state dict
            inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs)
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        else:
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, self.padded_vocab, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # tied input/output embeddings (GPT-2)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and "wpe" in self.transformer else n

    def forward(self, idx, targets=None, pos=None, cache=None, start=0, mask=None, last_only=False):
        """
        idx (B, T) token ids; pos (B, T) positions (default 0..T-1); for cached decoding, the cache, the first
        column its keys go to (start) and mask, a (B, 1, T, S) boolean "may attend" over the S = cache.width(start,
        T) columns attention reads. Returns (logits, loss):
        logits (B, T, padded_vocab), or (B, 1, padded_vocab) with last_only; loss is mean cross-entropy.
        """
        B, T = idx.size()
        if pos is None:
            assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
            pos = torch.arange(T, device=idx.device)
        rope = None
        if self.config.rope_theta > 0:
            # rotary angles from the given positions (never an arange: cached and left-padded rows need theirs)
            freqs = pos.float()[..., None] * self.inv_freq  # (T or B, T, hs/2)
            angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(-3)  # broadcasts over heads: (1 or B, 1, T, hs)
            rope = (angles.cos(), angles.sin())
            x = self.transformer.drop(self.transformer.wte(idx))
        else:
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, mask, rope, start)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        return self.lm_head(x[:, -1:] if last_only else x), None

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, seqs, starts, max_logits=None, share=None):
        """
        Teacher-forced sum of log p(seq[t] | seq[:t]) over t in [start, len(seq)), for a batch of sequences of
        different lengths. The E-step calls it with the joint sequence P <SOL><PRIOR> Z <EOL> X and
        start = len(P part), giving log p(Z, X | P). Returns (B,) float32 on the CPU.

        Rows that share their head seq[:start] (the K thoughts of one chunk share P) can share ONE prefill of it:
        each distinct head is encoded once into a KV cache, the cache is copied into its rows, and only the
        scored tails run on top of it, under an explicit mask. The result is the same sum a full forward of each
        row gives. share=None decides by the tokens it saves: with short heads, whole right-padded rows under the
        fused causal kernel are faster (share=True / False force either way).
        max_logits bounds memory: rows go in groups of at most that many logits (rows x tail x vocabulary),
        the rows of one head together unless they alone exceed it, rows of similar length side by side (little padding).
        """
        heads = {}
        for i, (s, st) in enumerate(zip(seqs, starts)):
            heads.setdefault(tuple(s[:st]), []).append(i)
        pieces = []
        for rows in heads.values():
            n = max(len(seqs[i]) for i in rows)
            fit = max(1, max_logits // (n * self.padded_vocab)) if max_logits else len(rows)
            pieces += [(n, rows[j:j + fit]) for j in range(0, len(rows), fit)]  # a head too many rows for one group
        out, group, longest = torch.zeros(len(seqs)), [], 0
        for n, rows in sorted(pieces, key=lambda piece: piece[0]):
            if group and max_logits and (len(group) + len(rows)) * max(longest, n) * self.padded_vocab > max_logits:
                out[group] = self._score([seqs[i] for i in group], [starts[i] for i in group], share).cpu()
                group, longest = [], 0
            group, longest = group + rows, max(longest, n)
        if group:
            out[group] = self._score([seqs[i] for i in group], [starts[i] for i in group], share).cpu()
        return out

    def _score(self, seqs, starts, share=None):
        device = self.lm_head.weight.device
        lengths = [len(s) for s in seqs]
        if min(starts) < 1 or any(st > n for st, n in zip(starts, lengths)):
            raise ValueError("score: need 1 <= start <= len(seq) for every row (the first token has no context)")
        heads = {}
        which = [heads.setdefault(tuple(s[:st]), len(heads)) for s, st in zip(seqs, starts)]
        H, Tm = list(heads), max(n - st for n, st in zip(lengths, starts))
        if share is None:  # sharing pays when the heads are a good part of the rows (measured: docs/benchmarks.md)
            share = len(H) * max(map(len, H)) + len(seqs) * Tm < 0.75 * len(seqs) * max(lengths)
        if not share:
            return self._score_full(seqs, starts)
        last, cache, pad = self.prefill(H, Tm)  # (H, V): each head's last logits predict its rows' first scored token
        Pm = max(map(len, H))  # the prefill's columns; the tails go after them
        col = torch.arange(Pm + Tm, device=device)
        valid = col[None] >= pad[:, None]  # (H, Pm+Tm): not left padding
        # the tails: right-padded, attending to their own head's columns and causally to themselves
        rows = torch.tensor(which, device=device)
        cache.select(rows)
        tail = torch.zeros(len(seqs), Tm, dtype=torch.long)
        for i, (s, st) in enumerate(zip(seqs, starts)):
            tail[i, :len(s) - st] = torch.tensor(s[st:])
        tail = tail.to(device)
        q = col[Pm:]
        mask = (col[None, None] <= q[None, :, None]) & valid[rows][:, None]  # (B, Tm, Pm+Tm)
        # padding past a row's end may run past block_size: its position is clamped (it is never scored)
        pos = (q[None] - pad[rows][:, None]).clamp(max=self.config.block_size - 1)
        logits, _ = self(tail, pos=pos, cache=cache, start=Pm, mask=mask[:, None])
        logits = torch.cat([last[rows, None], logits[:, :-1]], 1)  # the logits that predict tail[:, t]
        tok_logp = target_logprobs(logits[..., :self.config.vocab_size], tail)  # (B, Tm)
        n = torch.tensor([n - st for n, st in zip(lengths, starts)], device=device)
        return (tok_logp * (torch.arange(Tm, device=device)[None] < n[:, None])).sum(1)

    def _score_full(self, seqs, starts):
        # every row whole, right-padded: padding after a row's end changes nothing before it, so the plain causal
        # (flash) attention needs no mask
        device = self.lm_head.weight.device
        L = max(len(s) for s in seqs)
        idx = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            idx[i, :len(s)] = torch.tensor(s)
        idx = idx.to(device)
        if L == 1:  # nothing to score: every row is its head
            return torch.zeros(len(seqs), device=device)
        logits, _ = self(idx[:, :-1])
        tok_logp = target_logprobs(logits[..., :self.config.vocab_size], idx[:, 1:])  # log p(idx[t+1] | idx[:t+1])
        t = torch.arange(1, L, device=device)[None]
        keep = (t >= torch.tensor(starts, device=device)[:, None]) & (t < torch.tensor(list(map(len, seqs)),
                                                                                       device=device)[:, None])
        return (tok_logp * keep).sum(1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def prefill(self, prompts, extra):
        """
        Encode prompts (lists of ids, any lengths) into a new KV cache with room for `extra` more columns: they are
        left-padded to end together, positions count from each one's first real token, and padding is masked
        (a padding query sees itself, so no softmax row is empty). Returns (the logits after each prompt's last
        token (N, padded_vocab), the cache, the left padding of each row (N,)).
        """
        device = self.lm_head.weight.device
        P = max(len(p) for p in prompts)
        idx = torch.zeros(len(prompts), P, dtype=torch.long)
        for i, p in enumerate(prompts):
            idx[i, P - len(p):] = torch.tensor(p)
        pad = torch.tensor([P - len(p) for p in prompts], device=device)
        dtype = torch.get_autocast_dtype("cuda") if (device.type == "cuda" and torch.is_autocast_enabled()) \
            else self.lm_head.weight.dtype
        cache = KVCache(self.config.n_layer, len(prompts), self.config.n_kv_head, P + extra,
                        self.config.n_embd // self.config.n_head, dtype, device)
        col = torch.arange(P, device=device)
        mask = ((col[None] <= col[:, None]) & (col >= pad[:, None, None])) | (col[None] == col[:, None])
        logits, _ = self(idx.to(device), pos=(col[None] - pad[:, None]).clamp(min=0), cache=cache, start=0,
                         mask=mask[:, None], last_only=True)
        return logits[:, -1], cache, pad

    def decode_step(self, tok, pad, cache, col):
        """
        One new token per row: tok (B, 1) is written to the cache at column col and attends over the columns the
        cache reads (KVCache.width), masked to those that are not left padding (pad (B,), per row) and not after
        this one. With col a (1,) device tensor it reads no value on the host and every step has the same shapes,
        so generate can compile it into a CUDA graph. Returns float32 logits (B, padded_vocab).
        """
        cols = torch.arange(cache.width(col, 1), device=tok.device)
        mask = (cols >= pad[:, None]) & (cols <= col)  # (B, width)
        pos = col - pad[:, None]  # (B, 1): positions count from each row's first real token
        logits, _ = self(tok, pos=pos, cache=cache, start=col, mask=mask[:, None, None])
        return logits[:, -1].float()

    @torch.no_grad()
    def generate(self, prompts, num_samples=1, max_new_tokens=256, temperature=1.0, stop_tokens=None,
                 banned_tokens=None, seed=None, compile_step=False):
        """
        Sample continuations for a batch of prompts (lists of token ids, any lengths), num_samples per prompt.

        Returns (tokens, logprobs, finished), one entry per row, prompt-major: row i*num_samples + j is sample
        j of prompt i. A row's tokens end with the stop token that finished it (finished=True), else it ran to
        max_new_tokens. logprobs[r][t] is the log-prob of tokens[r][t] under the distribution it was drawn
        from: softmax(logits / temperature) with banned tokens removed (the E-step's log q at temperature 1).
        With temperature 0 (greedy) it is the log-prob under the untempered model (temperature 1).

        Each prompt is prefilled once and its cache copied into its num_samples rows; then decode_step adds one
        token to every row per step. compile_step (for a GPU) compiles that step with CUDA graphs: at small model
        sizes decode speed is set by Python and kernel-launch overhead, not by the arithmetic.
        """
        device = self.lm_head.weight.device
        N, K = len(prompts), num_samples
        if N == 0:
            return [], [], []
        lengths = torch.tensor([len(p) for p in prompts])
        if lengths.min() < 1:
            raise ValueError("generate: empty prompt")
        P = int(lengths.max())
        if P + max_new_tokens > self.config.block_size:
            raise ValueError(f"generate: prompt of {P} tokens + {max_new_tokens} new > block_size "
                             f"{self.config.block_size}; shorten the prompt (data.latent.fit_context)")
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        bias = torch.zeros(self.padded_vocab, device=device)
        bias[self.config.vocab_size:] = float("-inf")  # padding rows of the embedding are not tokens
        if banned_tokens:
            bias[torch.tensor(list(banned_tokens), device=device)] = float("-inf")
        stop = torch.tensor(sorted(set(stop_tokens or [])), dtype=torch.long, device=device)

        logits, cache, pad = self.prefill(prompts, max_new_tokens)
        rep = torch.arange(N, device=device).repeat_interleave(K)
        cache.select(rep)  # the prompt's cache, shared by its K sample rows
        logits, pad = logits[rep].float(), pad[rep]
        # the column each decoded token goes to, P onwards: a device tensor for the compiled step (its graph
        # reads it, nothing on the host), a Python int for the eager one (attention reads only the columns so far)
        col = torch.full((1,), P, device=device) if compile_step else P

        step = self.decode_step
        if compile_step:
            step = torch.compile(self.decode_step, **DECODE_COMPILE)
        B = N * K
        rows = torch.arange(B, device=device)  # which output row each live batch row is
        out_tok = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
        out_lp = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        nxt = None  # the token each row drew last: the input of the next step

        for t in range(max_new_tokens):
            if t > 0:
                if compile_step:
                    # a CUDA graph copies its inputs in on every replay unless told their address is fixed: the
                    # cache's is, until a compaction replaces it (then a graph is recorded for the smaller batch)
                    torch._dynamo.mark_static_address(cache.k)
                    torch._dynamo.mark_static_address(cache.v)
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(nxt[:, None], pad, cache, col)
                col += 1  # in place for the tensor: the graph's input keeps its address
            nxt, out_lp[rows, t] = sample(logits + bias, temperature, gen)
            out_tok[rows, t] = nxt
            done[rows] |= torch.isin(nxt, stop)
            # checking for finished rows costs a host sync: do it every 16 steps, and then drop finished
            # rows from the batch when they are at least half of it (no compute on rows that are done)
            if (t + 1) % 16 == 0 and t + 1 < max_new_tokens:
                live = ~done[rows]
                n_live = int(live.sum())
                if n_live == 0:
                    break
                if n_live <= len(rows) // 2:
                    keep = live.nonzero().squeeze(-1)
                    rows, pad, nxt = rows[keep], pad[keep], nxt[keep]
                    cache.select(keep)

        return cut_at_stop(out_tok, out_lp, stop)


def target_logprobs(logits, targets):
    """log softmax(logits)[target] at every position, in float32, without a log-softmax over the whole vocabulary
    (one pass for logsumexp, one gather: at a small model's size scoring is bound by these memory passes)."""
    logits = logits.float()
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sample(logits, temperature, gen):
    """One token per row and its log-prob (E-step 1: the log q of what was drawn). Temperature 0: the argmax, with
    its log-prob under the untempered model."""
    if temperature == 0:
        nxt, lp = logits.argmax(-1), F.log_softmax(logits, -1)
    else:
        lp = F.log_softmax(logits / temperature, -1)
        # one draw from softmax as argmax of p / Exp(1) noise (torch.multinomial's method, without its check of the
        # probabilities, a host sync); the noise as -log U, 4x faster on a CPU than exponential_ (docs/benchmarks.md)
        nxt = (lp.exp() / torch.rand(lp.shape, generator=gen, device=lp.device).log_().neg_()).argmax(-1)
    return nxt, lp.gather(-1, nxt[:, None]).squeeze(-1)


def cut_at_stop(tokens, logprobs, stop):
    """(B, T) outputs -> lists, each row running to its first stop token inclusive; and whether it had one."""
    is_stop = torch.isin(tokens, stop) if len(stop) else torch.zeros_like(tokens, dtype=torch.bool)
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, tokens.size(1)).tolist()
    tokens, logprobs = tokens.tolist(), logprobs.tolist()
    return [r[:n] for r, n in zip(tokens, first)], [r[:n] for r, n in zip(logprobs, first)], is_stop.any(1).tolist()
