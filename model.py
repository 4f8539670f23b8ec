"""
A GPT-2-architecture language model in plain PyTorch (nanoGPT-style), plus what the EM loop needs from it:
(a few GPTConfig switches turn its blocks into Llama's: rotary positions, RMSNorm, SwiGLU, grouped-query attention)

- `GPT.generate`: batched sampling with a hand-written KV cache. Prompts of different lengths in one call,
  one prefill per prompt shared by its K samples (the E-step's K thoughts), per-row stop tokens, and the
  log-prob of every sampled token (the E-step's log q(Z | X, P)).
- `GPT.score`: teacher-forced sums of log-probs over a suffix of each sequence (the E-step's log p(Z, X | P)).
- checkpoints (one file), `GPT.from_pretrained` for a local Hugging Face GPT-2 or Llama directory, `export_hf`
  back to one (`python -m model export --ckpt=CKPT.pt --out=DIR`), and an MFU estimate.
"""
import json
import math
import os
import struct
import sys
from contextlib import nullcontext
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
from torch.nn import functional as F


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
    mlp: str = "gelu"  # or "swiglu": c_proj(silu(gate) * up)
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

    def forward(self, x, cache=None, layer=0, mask=None, rope=None):
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_head, hs).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hs)
        if rope is not None:
            cos, sin = (t.to(q.dtype) for t in rope)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # keys are cached already rotated
        if cache is not None:
            k, v = cache.insert(layer, k, v)  # (B, nkv, S, hs): everything cached so far, this step included
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
        # SwiGLU's gate and up projections are one fused c_fc, gate rows first
        self.c_fc = nn.Linear(config.n_embd, 2 * n if self.swiglu else n, bias=config.bias)
        self.c_proj = nn.Linear(n, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.dropout(self.c_proj(F.silu(gate) * up))
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, mask=None, rope=None):
        x = x + self.attn(self.ln_1(x), cache, layer, mask, rope)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """
    Preallocated keys/values for every layer, (L, B, nkv, T, hs), nkv the key/value heads (fewer than the query
    heads under grouped-query attention). All rows share one write column: prompts are left-padded so they end
    together, and padding is hidden by the attention mask.

    Two ways to write. A chunk of tokens (prefill, scoring) goes to the Python int `pos`, and attention reads the
    columns up to it. One decoded token goes to the column held in the tensor `col` (set by generate, so no step
    needs a value from the host), and attention reads the first `width` columns: the whole buffer when the step is
    compiled (the same shapes at every step, captured once as a CUDA graph and replayed), else the columns written
    so far (reading the cache is most of a small model's decode step on a CPU).
    """

    def __init__(self, n_layer, B, n_head, T, head_dim, dtype, device):
        self.k = torch.zeros(n_layer, B, n_head, T, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos, self.n_layer = 0, n_layer
        self.col, self.width = None, T  # col: a (1,) long tensor once decoding one token at a time; None: use `pos`

    def insert(self, layer, k, v):
        if self.col is not None:
            self.k[layer].index_copy_(2, self.col, k)
            self.v[layer].index_copy_(2, self.col, v)
            # (B, nkv, width, hs): the step's mask hides padding and unwritten columns
            return self.k[layer, :, :, :self.width], self.v[layer, :, :, :self.width]
        t = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        if layer == self.n_layer - 1:
            self.pos += t  # the position advances once every layer has written this step
            return self.k[layer, :, :, :self.pos], self.v[layer, :, :, :self.pos]
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def select(self, rows):
        """Keep only these batch rows (repeat a shared prompt K times, or drop finished rows)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        for key, values in (("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "swiglu"))):
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

    def forward(self, idx, targets=None, pos=None, cache=None, mask=None, last_only=False):
        """
        idx (B, T) token ids; pos (B, T) positions (default 0..T-1); cache/mask for cached decoding, where
        mask is a (B, 1, T, S) boolean "may attend" over the S keys cached so far. Returns (logits, loss):
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
            x = block(x, cache, i, mask, rope)
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
        if share is None:  # sharing pays when the heads are a good part of the rows (measured: README, Benchmarks)
            share = len(H) * max(map(len, H)) + len(seqs) * Tm < 0.75 * len(seqs) * max(lengths)
        if not share:
            return self._score_full(seqs, starts)
        last, cache, pad = self.prefill(H, Tm)  # (H, V): each head's last logits predict its rows' first scored token
        Pm = cache.pos
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
        logits, _ = self(tail, pos=pos, cache=cache, mask=mask[:, None])
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
        logits, _ = self(idx.to(device), pos=(col[None] - pad[:, None]).clamp(min=0), cache=cache,
                         mask=mask[:, None], last_only=True)
        return logits[:, -1], cache, pad

    def decode_step(self, tok, pad, cache):
        """
        One new token per row: tok (B, 1) is written to the cache at column cache.col (a (1,) tensor) and attends
        over the first cache.width columns, masked to those that are not left padding (pad (B,), per row) and not
        after this one. It reads no value on the host; with cache.width the whole buffer, every step has the same
        shapes, so generate can compile it into a CUDA graph. Returns float32 logits (B, padded_vocab).
        """
        cols = torch.arange(cache.width, device=tok.device)
        mask = (cols >= pad[:, None]) & (cols <= cache.col)  # (B, width)
        pos = cache.col - pad[:, None]  # (B, 1): positions count from each row's first real token
        logits, _ = self(tok, pos=pos, cache=cache, mask=mask[:, None, None])
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
        cache.col = torch.full((1,), P, device=device)  # decoding from here: the write column lives on the device

        step = self.decode_step
        if compile_step:
            step = torch.compile(self.decode_step, mode="reduce-overhead", fullgraph=True)
        B = N * K
        rows = torch.arange(B, device=device)  # which output row each live batch row is
        out_tok = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
        out_lp = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        nxt = None  # the token each row drew last: the input of the next step

        for t in range(max_new_tokens):
            if t > 0:
                # compiled: attention over the whole buffer, one shape for every step; eager: only the columns so
                # far, since on a CPU reading the cache is most of the step (the whole buffer costs ~10% there)
                cache.width = cache.k.size(3) if compile_step else P + t
                if compile_step:
                    # a CUDA graph copies its inputs in on every replay unless told their address is fixed: the
                    # cache's is, until a compaction replaces it (then a graph is recorded for the smaller batch)
                    torch._dynamo.mark_static_address(cache.k)
                    torch._dynamo.mark_static_address(cache.v)
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(nxt[:, None], pad, cache)
                cache.col += 1
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

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, tok, block_size=None):
        """
        Load a local Hugging Face checkpoint directory without the transformers package: GPT-2 (gpt2 .. gpt2-xl
        shapes) or the Llama family (model_type llama, or mistral without a sliding window), from
        config.json + model.safetensors, sharded model-*.safetensors with model.safetensors.index.json, or
        pytorch_model.bin. The embedding grows to tok.n_vocab: the new rows (the latent special tokens) start at
        the mean of the existing rows, a neutral point from which training moves them.

        Only weights are read: `tok` is the tokenizer the model will be used with, anything with n_vocab >= the
        checkpoint's vocab_size whose ids 0..vocab_size-1 mean what they meant to the checkpoint. For a Llama
        1/2-family directory that is get_tokenizer("DIR/tokenizer.json") (data/llama_tokenizer.py: its ids, then
        the four latent tokens); this project's byte and gpt2 tokenizers are refused for a Llama checkpoint.
        """
        config_path = os.path.join(path, "config.json")
        with open(config_path) as f:
            hf = json.load(f)
        if hf.get("model_type") in ("llama", "mistral"):
            return cls._from_llama(path, hf, tok, block_size)
        # the settings that change GPT-2's computation, with the values this model implements (a missing field
        # takes Hugging Face's default, which is the implemented one): anything else would load silently wrong
        _check_implemented(config_path, hf, {
            "model_type": ("gpt2",), "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
            "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
            "reorder_and_upcast_attn": (False,), "add_cross_attention": (False,), "tie_word_embeddings": (True,),
            "n_inner": (None, 4 * hf.get("n_embd", 0))})
        _check_vocab(config_path, hf, tok)
        sd = _read_hf_weights(path)
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        n_pos = hf.get("n_positions", hf.get("n_ctx", 1024))
        config = GPTConfig(block_size=block_size or n_pos, vocab_size=tok.n_vocab, n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True)
        model = cls(config)
        own = model.state_dict()
        for k, v in sd.items():
            if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias") or k == "lm_head.weight":
                continue  # causal-mask buffers; lm_head is tied to wte
            k = "transformer." + k
            if k not in own:
                raise KeyError(f"{path}: unexpected weight {k.removeprefix('transformer.')}")
            v = v.float().t() if k.endswith(GPT2_CONV1D) else v.float()
            if k == "transformer.wte.weight":
                v = _grow(v, model.padded_vocab)
            elif k == "transformer.wpe.weight":
                v = v[:config.block_size]
            if own[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
            own[k].copy_(v)
        return model

    @classmethod
    def _from_llama(cls, path, hf, tok, block_size):
        config_path = os.path.join(path, "config.json")
        C, nh = hf["hidden_size"], hf["num_attention_heads"]
        # Llama's computation with the values this model implements; a missing field takes Hugging Face's default
        _check_implemented(config_path, hf, {
            "hidden_act": ("silu",), "rope_scaling": (None,), "sliding_window": (None,), "attention_bias": (False,),
            "mlp_bias": (False,), "head_dim": (None, C // nh), "partial_rotary_factor": (None, 1.0)})
        rope = dict(hf.get("rope_parameters") or {})  # newer config.json files nest rope_theta here
        if rope.pop("rope_type", rope.pop("type", "default")) != "default" or set(rope) - {"rope_theta"}:
            raise ValueError(f"{config_path}: rope_parameters={hf['rope_parameters']!r} is not implemented "
                             f"(supported: rope_type 'default' with rope_theta)")
        nkv = hf.get("num_key_value_heads") or nh
        if C % nh or nh % nkv:
            raise ValueError(f"{config_path}: hidden_size={C}, num_attention_heads={nh}, num_key_value_heads="
                             f"{nkv}: heads must divide hidden_size and key/value heads the query heads")
        if getattr(tok, "name", None) in ("byte", "gpt2"):
            raise ValueError(f"{path}: the {tok.name!r} tokenizer's ids are not Llama's; use the directory's own, "
                             f"tokenizer={os.path.join(path, 'tokenizer.json')!r}")
        _check_vocab(config_path, hf, tok)
        tie = hf.get("tie_word_embeddings", False)
        config = GPTConfig(block_size=block_size or hf.get("max_position_embeddings", 2048), vocab_size=tok.n_vocab,
                           n_layer=hf["num_hidden_layers"], n_head=nh, n_embd=C, dropout=0.0, bias=False,
                           rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
                           norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", n_inner=hf["intermediate_size"],
                           n_kv_head=nkv, tie_embeddings=tie)
        model = cls(config)
        own = model.state_dict()
        sd = _read_hf_weights(path)
        used = set()
        for k, parts in _llama_names(config):
            if k == "lm_head.weight" and tie:
                continue  # the same tensor as wte
            missing = [name for name, _ in parts if name not in sd]
            if missing:
                raise KeyError(f"{path}: missing weight {missing[0]}")
            v = torch.cat([sd[name].float() for name, _ in parts])  # q, k, v (or gate, up) stacked as c_attn (c_fc)
            used.update(name for name, _ in parts)
            if k in ("transformer.wte.weight", "lm_head.weight"):
                v = _grow(v, model.padded_vocab)
            if own[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
            own[k].copy_(v)
        # rotary_emb.inv_freq: a buffer older files saved; lm_head.weight: a tied copy some files keep
        extra = [k for k in sd if k not in used and not k.endswith("rotary_emb.inv_freq") and k != "lm_head.weight"]
        if extra:
            raise KeyError(f"{path}: unexpected weight {extra[0]}")
        return model


# HF's GPT-2 Conv1D stores (in, out): transposed from and to nn.Linear's (out, in)
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


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
        # torch.multinomial's own method for one sample (argmax of p / Exp(1) noise, so the same draws from the
        # same seed), without its check of the probabilities, which is a host sync
        nxt = (lp.exp() / torch.empty_like(lp).exponential_(1, generator=gen)).argmax(-1)
    return nxt, lp.gather(-1, nxt[:, None]).squeeze(-1)


def cut_at_stop(tokens, logprobs, stop):
    """(B, T) outputs -> lists, each row running to its first stop token inclusive; and whether it had one."""
    is_stop = torch.isin(tokens, stop) if len(stop) else torch.zeros_like(tokens, dtype=torch.bool)
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, tokens.size(1)).tolist()
    tokens, logprobs = tokens.tolist(), logprobs.tolist()
    return [r[:n] for r, n in zip(tokens, first)], [r[:n] for r, n in zip(logprobs, first)], is_stop.any(1).tolist()


def _llama_names(config):
    """
    Our parameter names, each with the Hugging Face Llama tensors it is made of and their rows: c_attn is
    q_proj, k_proj, v_proj stacked, c_fc is gate_proj, up_proj stacked. Loading concatenates, export splits.
    """
    hs = config.n_embd // config.n_head
    q, kv, n = config.n_head * hs, config.n_kv_head * hs, config.n_inner
    names = [("transformer.wte.weight", [("model.embed_tokens.weight", None)]),
             ("transformer.ln_f.weight", [("model.norm.weight", None)]),
             ("lm_head.weight", [("lm_head.weight", None)])]
    for i in range(config.n_layer):
        o, p = f"transformer.h.{i}.", f"model.layers.{i}."
        names += [(o + "ln_1.weight", [(p + "input_layernorm.weight", None)]),
                  (o + "attn.c_attn.weight", [(p + "self_attn.q_proj.weight", q), (p + "self_attn.k_proj.weight", kv),
                                              (p + "self_attn.v_proj.weight", kv)]),
                  (o + "attn.c_proj.weight", [(p + "self_attn.o_proj.weight", None)]),
                  (o + "ln_2.weight", [(p + "post_attention_layernorm.weight", None)]),
                  (o + "mlp.c_fc.weight", [(p + "mlp.gate_proj.weight", n), (p + "mlp.up_proj.weight", n)]),
                  (o + "mlp.c_proj.weight", [(p + "mlp.down_proj.weight", None)])]
    return names


def _check_implemented(config_path, hf, implemented):
    for key, values in implemented.items():
        if key in hf and hf[key] not in values:
            raise ValueError(f"{config_path}: {key}={hf[key]!r} is not implemented by this model "
                             f"(supported: {', '.join(map(repr, values))})")


def _check_vocab(config_path, hf, tok):
    if "vocab_size" in hf and tok.n_vocab < hf["vocab_size"]:
        raise ValueError(f"{config_path}: vocab_size={hf['vocab_size']} is more than the tokenizer's "
                         f"{tok.n_vocab}: the tokenizer must extend the checkpoint's vocabulary")


def _grow(v, rows):
    # the embedding grows to `rows`: new rows (the latent tokens, then padding) start at the mean of the old ones
    grown = v.mean(0, keepdim=True).repeat(rows, 1)
    grown[:v.size(0)] = v
    return grown


def _read_hf_weights(path):
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return _read_safetensors(single)
    if os.path.exists(index):  # sharded: the index maps every tensor to its shard file
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for shard in shards:
            sd.update(_read_safetensors(os.path.join(path, shard)))
        return sd
    if os.path.exists(os.path.join(path, "pytorch_model.bin")):
        return torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: none of model.safetensors, model.safetensors.index.json, pytorch_model.bin")


def _read_safetensors(path):
    """The safetensors layout is an 8-byte header length, a JSON header, then raw little-endian tensors."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: {k} has dtype {info['dtype']}, not one of {', '.join(dtypes)}")
        a, b = info["data_offsets"]
        out[k] = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


# ---------------------------------------------------------------------- export
def export_hf(model, tok_name, out_dir):
    """
    Write a Hugging Face directory that transformers loads as GPT2LMHeadModel (the default switches),
    GPTNeoXForCausalLM (rotary positions in a GPT-2 block: em.py's default model) or LlamaForCausalLM
    (rope_theta > 0, rmsnorm, swiglu, no biases): config.json and model.safetensors (float32, the embedding cut
    back to the real vocabulary), plus the tokenizer when tok_name is one of this project's.

    Tokenizer files: all tokenizers here are byte-level BPEs. "gpt2" and "byte" (no merges) use GPT-2's split
    pattern, so they are written as a GPT2Tokenizer: vocab.json and merges.txt, with <|endoftext|> and the four
    latent tokens as special tokens in added_tokens.json, special_tokens_map.json and tokenizer_config.json.
    The BPEs fitted here (mathworld, .tiktoken files) split digits apart, so they are written as a tokenizer.json
    with their own pattern. What cannot be carried over: this project encodes documents with encode_ordinary,
    so a special-token string typed in a document is ordinary text, while Hugging Face's tokenizer turns it into
    the special token by default (split_special_tokens=True gives this project's behaviour).
    With tok_name None (weights loaded for a foreign tokenizer) no tokenizer files are written.
    """
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    gpt2 = dict(rope_theta=0.0, norm="layernorm", mlp="gelu", n_kv_head=c.n_head, tie_embeddings=True)
    llama = dict(norm="rmsnorm", mlp="swiglu", bias=False)
    tok = None
    if tok_name is not None:
        from data.tokenizer import get_tokenizer
        tok = get_tokenizer(tok_name)
    eot = tok.eot if tok is not None else None
    bos = getattr(tok, "bos", eot)  # Llama tokenizers put <s> first; the others start a text with nothing
    if all(getattr(c, k) == v for k, v in gpt2.items()):
        hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
              "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
              "n_head": c.n_head, "n_inner": c.n_inner, "activation_function": "gelu_new",
              "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": True, "resid_pdrop": c.dropout,
              "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "bos_token_id": eot, "eos_token_id": eot}
        out = {}
        for k, v in sd.items():
            if k == "lm_head.weight":
                continue  # tied to wte
            if k == "transformer.wte.weight":
                v = v[:c.vocab_size]
            out[k] = v.t() if k.endswith(GPT2_CONV1D) else v
            if not c.bias and k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "c_attn.weight",
                                           "c_proj.weight", "c_fc.weight")):
                out[k.removesuffix("weight") + "bias"] = torch.zeros(v.size(0))  # GPT-2 has biases: zeros are none
    elif c.rope_theta > 0 and all(getattr(c, k) == v for k, v in llama.items()):
        hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "intermediate_size": c.n_inner, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.n_embd // c.n_head,
              "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
              "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "mlp_bias": False,
              "attention_dropout": c.dropout, "bos_token_id": bos, "eos_token_id": eot,
              # older transformers read rope_theta and rope_scaling, newer ones rope_parameters
              "rope_theta": c.rope_theta, "rope_scaling": None,
              "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}
        out = {}
        for k, parts in _llama_names(c):
            if k == "lm_head.weight" and c.tie_embeddings:
                continue
            v = sd[k][:c.vocab_size] if k in ("transformer.wte.weight", "lm_head.weight") else sd[k]
            pieces = v.split([rows for _, rows in parts]) if len(parts) > 1 else [v]
            out.update({name: piece for (name, _), piece in zip(parts, pieces)})
    elif c.rope_theta > 0 and c.norm == "layernorm" and c.mlp == "gelu" and c.n_kv_head == c.n_head:
        # rotary positions in a GPT-2 block (em.py's default model): GPT-NeoX with a sequential residual
        hf = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "intermediate_size": c.n_inner, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "hidden_act": "gelu_pytorch_tanh", "use_parallel_residual": False,
              "max_position_embeddings": c.block_size, "layer_norm_eps": c.norm_eps, "attention_bias": True,
              "tie_word_embeddings": c.tie_embeddings, "attention_dropout": c.dropout, "hidden_dropout": c.dropout,
              "bos_token_id": eot, "eos_token_id": eot, "rotary_pct": 1.0, "rotary_emb_base": c.rope_theta,
              "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                                                        "partial_rotary_factor": 1.0}}
        out = _neox_weights(c, sd)
    else:
        raise ValueError(f"export_hf: this GPTConfig mixes switches that no one Hugging Face architecture (GPT-2, "
                         f"GPT-NeoX, Llama) implements together: {c}")
    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, "config.json"), hf)
    _write_safetensors(os.path.join(out_dir, "model.safetensors"), out)
    if tok is not None:
        _write_tokenizer(tok, c.block_size, out_dir)


def _neox_weights(c, sd):
    """Our state dict under GPT-NeoX's names. Its fused projection holds each head's q, k, v side by side (ours:
    all q heads, then all k, then all v); its MLP and norms always have biases (zeros where ours has none)."""
    H, hs, C = c.n_head, c.n_embd // c.n_head, c.n_embd
    bias = lambda k, n: sd.get(k, torch.zeros(n))
    out = {"gpt_neox.embed_in.weight": sd["transformer.wte.weight"][:c.vocab_size],
           "gpt_neox.final_layer_norm.weight": sd["transformer.ln_f.weight"],
           "gpt_neox.final_layer_norm.bias": bias("transformer.ln_f.bias", C)}
    if not c.tie_embeddings:
        out["embed_out.weight"] = sd["lm_head.weight"][:c.vocab_size]  # the name in NeoX checkpoints
    for i in range(c.n_layer):
        a, b = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
        out.update({
            b + "input_layernorm.weight": sd[a + "ln_1.weight"], b + "input_layernorm.bias": bias(a + "ln_1.bias", C),
            b + "post_attention_layernorm.weight": sd[a + "ln_2.weight"],
            b + "post_attention_layernorm.bias": bias(a + "ln_2.bias", C),
            b + "attention.query_key_value.weight": sd[a + "attn.c_attn.weight"].view(3, H, hs, C).transpose(0, 1)
            .reshape(3 * C, C),
            b + "attention.query_key_value.bias": bias(a + "attn.c_attn.bias", 3 * C).view(3, H, hs).transpose(0, 1)
            .reshape(3 * C),
            b + "attention.dense.weight": sd[a + "attn.c_proj.weight"],
            b + "attention.dense.bias": bias(a + "attn.c_proj.bias", C),
            b + "mlp.dense_h_to_4h.weight": sd[a + "mlp.c_fc.weight"],
            b + "mlp.dense_h_to_4h.bias": bias(a + "mlp.c_fc.bias", c.n_inner),
            b + "mlp.dense_4h_to_h.weight": sd[a + "mlp.c_proj.weight"],
            b + "mlp.dense_4h_to_h.bias": bias(a + "mlp.c_proj.bias", C)})
    return {k: v.contiguous() for k, v in out.items()}


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _write_safetensors(path, tensors):
    """The layout _read_safetensors reads: 8-byte little-endian header length, JSON header, raw float32 bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k, v in tensors.items():
        n = v.numel() * 4
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned; the format allows trailing spaces in the header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for v in tensors.values():
            f.write(v.contiguous().float().numpy().tobytes())  # little-endian on every machine torch runs on


def _byte_symbols():
    # GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes take the
    # code points from 256 on, in byte order (so every token is a printable string in vocab.json)
    own = {*range(33, 127), *range(161, 173), *range(174, 256)}
    extra = iter(range(256, 512))
    return [chr(b) if b in own else chr(next(extra)) for b in range(256)]


def _bpe_pair(ranks, token):
    """The two parts tiktoken joins last to make token: BPE over its bytes with the merges ranked below it."""
    parts, top = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        r, i = min((ranks.get(a + b, top), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if r >= top:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"export_hf: token {token!r} is not reachable by merges of lower rank")
    return parts


def _write_tokenizer_json(tok, block_size, out_dir):
    """A Hugging Face fast tokenizer (tokenizer.json) equal to a tiktoken BPE: the same split pattern, GPT-2's byte
    symbols, one merge per token in rank order, and whole pieces that are tokens taken as such (ignore_merges,
    as tiktoken does)."""
    from data.tokenizer import EOT, SPECIALS
    sym = _byte_symbols()
    text = lambda b: "".join(sym[x] for x in b)
    ranks = tok.ranks
    merges = [[text(a), text(b)] for t, _ in sorted(ranks.items(), key=lambda x: x[1]) if len(t) > 1
              for a, b in [_bpe_pair(ranks, t)]]
    ids = {s: tok.enc.encode_single_token(s) for s in SPECIALS}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in ids.items()]
    _write_json(os.path.join(out_dir, "tokenizer.json"), {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pat}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {text(t): r for t, r in ranks.items()}, "merges": merges}})
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "additional_special_tokens": SPECIALS[1:]}
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size, **specials,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added}})


def _write_llama_tokenizer(tok, block_size, out_dir):
    """A Llama-family tokenizer.json as it came, with the four latent tokens added after its vocabulary."""
    from data.tokenizer import SPECIALS
    with open(tok.name, encoding="utf-8") as f:
        tj = json.load(f)
    latent = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
               "special": True} for s, i in zip(SPECIALS[1:], tok.latent_ids)]
    tj["added_tokens"] = [a for a in tj.get("added_tokens", []) if a["content"] not in SPECIALS] + latent
    _write_json(os.path.join(out_dir, "tokenizer.json"), tj)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "additional_special_tokens": SPECIALS[1:]}
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size, **specials,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in tj["added_tokens"]}})


def _write_tokenizer(tok, block_size, out_dir):
    from data.tokenizer import EOT, SPECIALS, gpt2_files
    if tok.name.endswith("tokenizer.json"):
        return _write_llama_tokenizer(tok, block_size, out_dir)
    if tok.name == "gpt2":
        merges, vocab_path = gpt2_files()
        with open(vocab_path) as f:
            vocab = json.load(f)
        with open(merges) as f:
            merges = f.read()
    elif tok.name == "byte":  # the 256 byte symbols, no merges
        vocab = {sym: b for b, sym in enumerate(_byte_symbols())}
        merges = "#version: 0.2\n"
    else:  # BPE fitted here (mathworld, a .tiktoken file): its own split pattern, so a tokenizer.json
        return _write_tokenizer_json(tok, block_size, out_dir)
    ids = {s: tok.enc.encode_single_token(s) for s in SPECIALS}
    latent = SPECIALS[1:]
    _write_json(os.path.join(out_dir, "vocab.json"), vocab)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write(merges)
    _write_json(os.path.join(out_dir, "added_tokens.json"), {s: i for s, i in ids.items() if s not in vocab})
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "additional_special_tokens": latent}
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
    decoder = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for s, i in ids.items()}
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "add_prefix_space": False,
        "errors": "replace", "added_tokens_decoder": decoder, **specials})


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path, ckpt):
    """One file: {"model", "model_args", "tokenizer", "latent", ...}. Written to a temporary name, then renamed,
    so a crash never leaves a half-written checkpoint that looks complete."""
    from data.files import atomic_open  # the project's one way to write a file
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)


def clean_state_dict(sd):
    # torch.compile wraps the model as _orig_mod, DDP as module: strip both so any checkpoint loads
    out = {}
    for k, v in sd.items():
        for pre in ("_orig_mod.", "module."):
            k = k.removeprefix(pre)
        out[k] = v
    return out


def load_checkpoint(path, device="cpu", tokenizer=None, **config):
    """(model, ckpt) from a checkpoint of this project; the one loader every stage uses. tokenizer (a name), when
    given, must be the checkpoint's; config overrides GPTConfig fields that do not change the weights (dropout)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except OSError:
        raise  # a missing or unreadable file: the message names the path already
    except Exception as e:  # unpickling and zip errors do not name the file
        raise ValueError(f"{path}: not readable as a checkpoint ({type(e).__name__}: {e})") from e
    for key in ("model", "model_args", "tokenizer"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise ValueError(f"{path}: not a checkpoint of this project (no {key!r})")
    if tokenizer is not None and ckpt["tokenizer"] != tokenizer:
        raise ValueError(f"{path}: checkpoint of tokenizer {ckpt['tokenizer']!r}, but the config says {tokenizer!r}")
    model = GPT(GPTConfig(**{**ckpt["model_args"], **config}))
    model.load_state_dict(clean_state_dict(ckpt["model"]))
    return model.to(device), ckpt


# ---------------------------------------------------------------------- compute
@dataclass
class Compute:
    """Where a stage runs: device, the autocast context its forward passes use, and its place among processes."""
    device: str
    cuda: bool
    ctx: object           # bf16 autocast, or a no-op context
    rank: int = 0
    world: int = 1
    own_group: bool = False  # this process started the process group, so it ends it

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def close(self):
        if self.own_group:
            torch.distributed.destroy_process_group()


def setup(device="auto", dtype="auto"):
    """
    The one set-up of every stage (train, E-step, evaluation, em): device "auto" = this rank's GPU if there is one,
    else the CPU; dtype "auto" = bf16 autocast on CUDA (matmuls in bf16, weights and log-softmaxes float32),
    float32 on a CPU. Under torchrun (WORLD_SIZE > 1) it joins the process group, starting it if no caller has.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"  # set_device needs an index; under torchrun it is this rank's GPU
    cuda = device.startswith("cuda")
    if dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    if cuda:
        torch.cuda.set_device(device)  # so synchronize() and nccl use this rank's GPU
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA for what runs in float32
    own = world > 1 and not torch.distributed.is_initialized()
    if own:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    bf16 = dtype == "bfloat16" or (dtype == "auto" and cuda)
    ctx = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    return Compute(device, cuda, ctx, rank, world, own)


# ---------------------------------------------------------------------- MFU
# bf16 dense peak FLOP/s (no sparsity) by device name, from the vendors' data sheets
PEAK_FLOPS = [
    ("H200", 989e12), ("GH200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("A10G", 70e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device_name):
    for key, flops in PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


def flops_per_token(model, T):
    # 6N for the matmuls forward+backward, plus attention 12 * L * H * Q * T (PaLM appendix B)
    cfg = model.config
    return 6 * model.get_num_params() + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T


def estimate_mfu(model, tokens_per_sec, T, device_name=None):
    """Model FLOPs utilisation as a fraction of the GPU's bf16 peak; None when the GPU is not in the table."""
    if device_name is None:
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_flops(device_name)
    return None if peak is None else flops_per_token(model, T) * tokens_per_sec / peak


def model_args(config):
    return asdict(config)


if __name__ == "__main__":
    # python -m model export --ckpt=CKPT.pt --out=DIR
    args = dict(a.removeprefix("--").split("=", 1) for a in sys.argv[2:] if "=" in a)
    if sys.argv[1:2] != ["export"] or sorted(args) != ["ckpt", "out"] or len(args) != len(sys.argv) - 2:
        sys.exit("usage: python -m model export --ckpt=CKPT.pt --out=DIR")
    model, ckpt = load_checkpoint(args["ckpt"])
    export_hf(model, ckpt["tokenizer"], args["out"])
    print(f"wrote {args['out']}: {', '.join(sorted(os.listdir(args['out'])))}")
