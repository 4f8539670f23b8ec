"""
The latent format (docs/method.md, The latent format), defined once. Every stage formats thoughts by calling
these functions.

A document is split into chunks X_1..X_n; each chunk carries a thought Z_i, written in one of two orders
chosen by a fair coin per chunk (the paper's "random" latent type):

    prior order:      <|START_OF_LATENT|><|PRIOR_PREFIX|> Z <|END_OF_LATENT|> X          teaches p(Z, X)
    posterior order:  <|START_OF_LATENT|><|END_OF_LATENT|> X <|START_OF_LATENT|><|POSTERIOR_PREFIX|> Z <|END_OF_LATENT|>
                                                                                        teaches q(Z | X)

All functions return token ids. Text (documents, thoughts, prefixes) is always encoded as ordinary text;
control tokens come only from here. Chunk texts are contiguous slices of their document, so joining a
document's chunks gives it back exactly; no spaces are added around the special tokens.
"""
import numpy as np

# the special tokens, here and nowhere else: every tokenizer (data/tokenizer.py, data/llama_tokenizer.py) gives
# them ids, and only the functions below put them into a sequence
EOT = "<|endoftext|>"  # the document separator (a Llama tokenizer uses its own </s> for it)
SOL = "<|START_OF_LATENT|>"
EOL = "<|END_OF_LATENT|>"
PRIOR = "<|PRIOR_PREFIX|>"
POSTERIOR = "<|POSTERIOR_PREFIX|>"
SPECIALS = [EOT, SOL, EOL, PRIOR, POSTERIOR]


def open_prior(tok):
    # <SOL><PRIOR>: a thought in the prior order starts here (the evaluation prompt ends with it)
    return [tok.sol, tok.prior]


def prior_order(tok, z_ids, x_ids):
    # <SOL><PRIOR> Z <EOL> X: the one spelling of the prior order (training, E-step scoring, evaluation exemplars)
    return open_prior(tok) + z_ids + [tok.eol] + x_ids


def prior_chunk(tok, x, z):
    return prior_order(tok, tok.encode(z), tok.encode(x))


def posterior_order(tok, x_ids, z_ids):
    # <SOL><EOL> X <SOL><POSTERIOR> Z <EOL>: the one spelling of the posterior order
    return [tok.sol, tok.eol] + x_ids + [tok.sol, tok.posterior] + z_ids + [tok.eol]


def posterior_chunk(tok, x, z):
    return posterior_order(tok, tok.encode(x), tok.encode(z))


def coin_flips(n, seed):
    """The per-chunk fair coin (True = prior order), seeded per document: seed is an int or a tuple of ints."""
    rng = np.random.default_rng(list(seed) if isinstance(seed, (tuple, list)) else seed)
    return rng.random(n) < 0.5


def augmented_document(tok, chunks, thoughts, seed):
    """A whole document in the thought-augmented format, ending with <|endoftext|> (the document separator)."""
    if len(chunks) != len(thoughts):
        raise ValueError(f"{len(chunks)} chunks but {len(thoughts)} thoughts")
    return augmented_ids(tok, [tok.encode(x) for x in chunks], [tok.encode(z) for z in thoughts],
                         coin_flips(len(chunks), seed))


def augmented_ids(tok, x_ids, z_ids, prior):
    """The same from token ids already encoded (chunk by chunk, thought by thought) and the coins (True = prior
    order): a training that reads a document many times encodes it once and tosses new coins per reading."""
    ids = []
    for x, z, p in zip(x_ids, z_ids, prior):
        ids += prior_order(tok, z, x) if p else posterior_order(tok, x, z)
    return ids + [tok.eot]


def raw_document(tok, text):
    return tok.encode(text) + [tok.eot]


def fit_context(tok, prefix, x, max_tokens):
    """
    Token ids of (prefix, chunk) with len(prefix) + len(chunk) <= max_tokens (docs/method.md, E-step 1): if
    prompt + thought would exceed the context, the prefix is truncated first (its oldest tokens go), then the chunk (its tail
    goes). The posterior prompt and the joint sequence both call this, so they see the same P and X.
    """
    p, xs = tok.encode(prefix) if prefix else [], tok.encode(x)
    if max_tokens is not None:
        if len(xs) > max_tokens:
            p, xs = [], xs[:max_tokens]
        elif len(p) + len(xs) > max_tokens:
            p = p[len(p) + len(xs) - max_tokens:]
    return p, xs


def _prefix_part(tok, p):
    # <|endoftext|> first: in training every document follows one, so it is the document's start-of-context
    # (and the first scored token always has a context). The prefix is earlier document text, marked as a
    # chunk of its own by the empty START/END pair.
    return [tok.eot] + ([tok.sol, tok.eol] + p if p else [])


def posterior_prompt(tok, prefix, x, max_tokens=None):
    """E-step prompt: P <SOL><EOL> X <SOL><POSTERIOR>; the model continues with a thought Z ~ q(Z | X, P)."""
    p, xs = fit_context(tok, prefix, x, max_tokens)
    return _prefix_part(tok, p) + [tok.sol, tok.eol] + xs + [tok.sol, tok.posterior]


def joint_sequence(tok, prefix, x, z, max_tokens=None, block_size=None):
    """
    E-step scoring sequence P <SOL><PRIOR> Z <EOL> X and the index where its scored part starts:
    the sum of log-probs of tokens[start:] is log p(Z, X | P). P and X are fitted to max_tokens as in the
    posterior prompt; if the thought's text re-encodes longer than the sampled tokens (invalid UTF-8 decodes to
    U+FFFD), they are shortened further, so that the whole sequence fits block_size.
    """
    z_ids = tok.encode(z)
    fixed = len(prior_order(tok, z_ids, []))
    room = None if block_size is None else block_size - (len(_prefix_part(tok, [0])) - 1) - fixed  # with P
    if room is None or (max_tokens is not None and max_tokens <= room):
        p, xs = fit_context(tok, prefix, x, max_tokens)
    else:  # the thought re-encodes longer than it was sampled: P and X give way so that the whole fits the block
        if block_size - 1 - fixed < 0:
            raise ValueError(f"a thought of {len(z_ids)} tokens leaves no room for its chunk in block_size "
                             f"{block_size}")
        p, xs = fit_context(tok, prefix, x, max(room, 0))
        if not p:  # no prefix part after all: its two control tokens are room for the chunk
            xs = fit_context(tok, "", x, block_size - 1 - fixed if max_tokens is None else
                             min(max_tokens, block_size - 1 - fixed))[1]
    head = _prefix_part(tok, p)
    return head + prior_order(tok, z_ids, xs), len(head)


def thought_stop_token(tok):
    """A sampled thought ends at <|END_OF_LATENT|>."""
    return tok.eol


# ----- evaluation prompts (docs/method.md, Evaluation) -----
# Both start with <|endoftext|>, the start-of-document context every training document has.
# raw models:    "Problem:\n{problem}\n{solution}\n\n" exemplars, then "Problem:\n{problem}\n"
# latent models: "Problem:\n{problem}\n<SOL><PRIOR>{thought}<EOL>Final Answer: {answer}\n\n" exemplars, then
#                "Problem:\n{problem}\n<SOL><PRIOR>"; generation stops at "Problem:" or a new <SOL>.

def latent_exemplar(tok, problem, thought, answer):
    answer_ids = tok.encode(f"Final Answer: {answer}\n\n")
    return tok.encode(f"Problem:\n{problem}\n") + prior_order(tok, tok.encode(thought), answer_ids)


def latent_eval_prompt(tok, exemplars, problem):
    """exemplars: list of (problem, thought, answer)."""
    ids = [tok.eot]
    for ex in exemplars:
        ids += latent_exemplar(tok, *ex)
    return ids + tok.encode(f"Problem:\n{problem}\n") + open_prior(tok)


def raw_exemplar(tok, problem, solution):
    """A solved problem in the raw spelling; solution is whatever follows the problem in the raw data ("Final
    Answer: 42" in the embedded corpus, "Solution: ... \\boxed{42}" for MATH)."""
    return tok.encode(f"Problem:\n{problem}\n{solution}\n\n")


def raw_eval_prompt(tok, exemplars, problem):
    """exemplars: list of (problem, solution), each as raw_exemplar spells it."""
    return [tok.eot] + tok.encode("".join(f"Problem:\n{p}\n{s}\n\n" for p, s in exemplars) + f"Problem:\n{problem}\n")


def show(tok, ids):
    """Decode ids for a human: special tokens appear by name (text that merely spells them looks the same,
    so use this to LOOK, never to re-encode)."""
    return tok.decode(ids)
