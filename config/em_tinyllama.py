# The paper's setting on one GPU (docs/method.md, The official code's settings): TinyLlama-1.1B
# (config/train_tinyllama.py) continued pretraining on your corpus, prepared with TinyLlama's own tokenizer and
# given warm-start thoughts by a teacher (docs/real_corpora.md, "Real corpora and your own teacher"):
#     python -m data.prepare corpus my_math/*.jsonl.gz --out_dir=runs/tinyllama/data \
#         --tokenizer=models/TinyLlama-1.1B/tokenizer.json
#     python -m data.teacher ...  &&  python -m data.prepare warm --dir=runs/tinyllama/data --thoughts=...
#     python em.py config/em_tinyllama.py --eval_data=MATH.jsonl --eval_exemplars=MATH_EXEMPLARS.jsonl
# The budgets are the official code's in passes (M_0 about one pass over the warm-start split with its
# thoughts; every M-step about two over the bootstrap split), K = 4, thoughts up to 1024 tokens, a 3-chunk
# prefix; every training reads whole passes with a coin per pass and no raw mix, and the M-step trains on the
# bootstrap split alone (mstep_data). The base is the pretrained TinyLlama itself (base_epochs 0: init_from in the
# train preset). Not yet run here: how long it takes depends on the corpus, and no GPU figure has been measured.
data_dir = "runs/tinyllama/data"
run_dir = "runs/tinyllama"
train_config = "config/train_tinyllama.py"
base_epochs = 0.0
m0_epochs = 1.0
mstep_epochs = 2.0
mstep_data = "bootstrap"
sampler = "passes"
coin = "per_pass"
raw_mix = 0.0
K = 4
n_prefix = 3
max_thought_tokens = 1024
estep_batch = 32
eval_shots = 4
eval_max_new_tokens = 512
eval_batch = 32
oracle = False
