"""
Hugging Face checkpoints in and out, without the transformers package (weight conversion kept apart from the
model, as gpt-fast keeps it):

    model = from_pretrained("/models/gpt2", tok)                  # train.py's init_from=DIR comes here
    python -m hf export --ckpt=runs/default/m0/ckpt.pt --out=DIR  # a directory transformers loads

from_pretrained reads a local GPT-2 or Llama-family directory and refuses any config.json setting this model does
not implement (it would load silently wrong). export_hf writes GPT-2, GPT-NeoX or Llama, whichever architecture
the model's switches are, plus the tokenizer files of this project's tokenizers.
"""
import json
import os
import struct
import sys

import torch

from common import load_checkpoint
from data.latent import EOT, SPECIALS
from data.tokenizer import get_tokenizer, gpt2_files
from model import GPT, GPTConfig

# ---------------------------------------------------------------------- import
def from_pretrained(path, tok, block_size=None):
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
        return _from_llama(path, hf, tok, block_size)
    # the settings that change GPT-2's computation, with the values this model implements (a missing field
    # takes Hugging Face's default, which is the implemented one): anything else would load silently wrong
    _check_implemented(config_path, hf, {
        "model_type": ("gpt2",), "activation_function": ("gelu_new", "gelu_pytorch_tanh", "gelu"),
        "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
        "reorder_and_upcast_attn": (False,), "add_cross_attention": (False,), "tie_word_embeddings": (True,),
        "n_inner": (None, 4 * hf.get("n_embd", 0))})
    _check_vocab(config_path, hf, tok)
    sd = _read_hf_weights(path)
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    n_pos = hf.get("n_positions", hf.get("n_ctx", 1024))
    config = GPTConfig(block_size=block_size or n_pos, vocab_size=tok.n_vocab, n_layer=hf["n_layer"],
                       n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
                       mlp="gelu_exact" if hf.get("activation_function") == "gelu" else "gelu")
    model = GPT(config)
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

def _from_llama(path, hf, tok, block_size):
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
    model = GPT(config)
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
    config = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    gpt2 = dict(rope_theta=0.0, norm="layernorm", n_kv_head=config.n_head, tie_embeddings=True)
    gelu = {"gelu": "gelu_new", "gelu_exact": "gelu"}.get(config.mlp)  # Hugging Face's names: tanh form, erf form
    llama = dict(norm="rmsnorm", mlp="swiglu", bias=False)
    tok = None
    if tok_name is not None:
        tok = get_tokenizer(tok_name)
    eot = tok.eot if tok is not None else None
    bos = getattr(tok, "bos", eot)  # Llama tokenizers put <s> first; the others start a text with nothing
    if gelu and all(getattr(config, k) == v for k, v in gpt2.items()):
        hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
              "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
              "n_layer": config.n_layer,
              "n_head": config.n_head, "n_inner": config.n_inner, "activation_function": gelu,
              "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": True, "resid_pdrop": config.dropout,
              "embd_pdrop": config.dropout, "attn_pdrop": config.dropout, "bos_token_id": eot, "eos_token_id": eot}
        out = {}
        for k, v in sd.items():
            if k == "lm_head.weight":
                continue  # tied to wte
            if k == "transformer.wte.weight":
                v = v[:config.vocab_size]
            out[k] = v.t() if k.endswith(GPT2_CONV1D) else v
            if not config.bias and k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "c_attn.weight",
                                           "c_proj.weight", "c_fc.weight")):
                out[k.removesuffix("weight") + "bias"] = torch.zeros(v.size(0))  # GPT-2 has biases: zeros are none
    elif config.rope_theta > 0 and all(getattr(config, k) == v for k, v in llama.items()):
        hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
              "hidden_size": config.n_embd, "intermediate_size": config.n_inner, "num_hidden_layers": config.n_layer,
              "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
              "head_dim": config.n_embd // config.n_head,
              "hidden_act": "silu", "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
              "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
              "attention_dropout": config.dropout, "bos_token_id": bos, "eos_token_id": eot,
              # older transformers read rope_theta and rope_scaling, newer ones rope_parameters
              "rope_theta": config.rope_theta, "rope_scaling": None,
              "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta}}
        out = {}
        for k, parts in _llama_names(config):
            if k == "lm_head.weight" and config.tie_embeddings:
                continue
            v = sd[k][:config.vocab_size] if k in ("transformer.wte.weight", "lm_head.weight") else sd[k]
            pieces = v.split([rows for _, rows in parts]) if len(parts) > 1 else [v]
            out.update({name: piece for (name, _), piece in zip(parts, pieces)})
    elif (config.rope_theta > 0 and config.norm == "layernorm" and gelu
          and config.n_kv_head == config.n_head):
        # rotary positions in a GPT-2 block (em.py's default model): GPT-NeoX with a sequential residual
        hf = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": config.vocab_size,
              "hidden_size": config.n_embd, "intermediate_size": config.n_inner, "num_hidden_layers": config.n_layer,
              "num_attention_heads": config.n_head, "hidden_act": {"gelu_new": "gelu_pytorch_tanh"}.get(gelu, gelu),
              "use_parallel_residual": False,
              "max_position_embeddings": config.block_size, "layer_norm_eps": config.norm_eps, "attention_bias": True,
              "tie_word_embeddings": config.tie_embeddings, "attention_dropout": config.dropout,
              "hidden_dropout": config.dropout,
              "bos_token_id": eot, "eos_token_id": eot, "rotary_pct": 1.0, "rotary_emb_base": config.rope_theta,
              "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta,
                                                        "partial_rotary_factor": 1.0}}
        out = _neox_weights(config, sd)
    else:
        raise ValueError(f"export_hf: this GPTConfig mixes switches that no one Hugging Face architecture (GPT-2, "
                         f"GPT-NeoX, Llama) implements together: {config}")
    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, "config.json"), hf)
    _write_safetensors(os.path.join(out_dir, "model.safetensors"), out)
    if tok is not None:
        _write_tokenizer(tok, config.block_size, out_dir)


def _neox_weights(config, sd):
    """Our state dict under GPT-NeoX's names. Its fused projection holds each head's q, k, v side by side (ours:
    all q heads, then all k, then all v); its MLP and norms always have biases (zeros where ours has none)."""
    H, hs, C = config.n_head, config.n_embd // config.n_head, config.n_embd
    bias = lambda k, n: sd.get(k, torch.zeros(n))
    out = {"gpt_neox.embed_in.weight": sd["transformer.wte.weight"][:config.vocab_size],
           "gpt_neox.final_layer_norm.weight": sd["transformer.ln_f.weight"],
           "gpt_neox.final_layer_norm.bias": bias("transformer.ln_f.bias", C)}
    if not config.tie_embeddings:
        out["embed_out.weight"] = sd["lm_head.weight"][:config.vocab_size]  # the name in NeoX checkpoints
    for i in range(config.n_layer):
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
            b + "mlp.dense_h_to_4h.bias": bias(a + "mlp.c_fc.bias", config.n_inner),
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


def main(argv):
    args = dict(a.removeprefix("--").split("=", 1) for a in argv[1:] if "=" in a)
    if argv[:1] != ["export"] or sorted(args) != ["ckpt", "out"] or len(args) != len(argv) - 1:
        print("usage: python -m hf export --ckpt=CKPT.pt --out=DIR", file=sys.stderr)
        sys.exit(2)
    model, checkpoint = load_checkpoint(args["ckpt"])
    export_hf(model, checkpoint["tokenizer"], args["out"])
    print(f"wrote {args['out']}: {', '.join(sorted(os.listdir(args['out'])))}")


if __name__ == "__main__":
    main(sys.argv[1:])
