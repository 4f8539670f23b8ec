# The paper's model: continued pretraining of TinyLlama-1.1B (a Llama-2-shaped model, 22 layers, 2048 wide, 4
# key/value heads) from a local Hugging Face directory holding config.json, model.safetensors and tokenizer.json
# (nothing is downloaded: fetch the directory yourself and point _MODEL at it). Optimiser settings follow the
# official code's bootstrapping experiment: lr 1e-4 with cosine decay, 2048-token sequences, 96 sequences per
# step (its warm start; its bootstrap M-steps use 192: --grad_accum=16). Per GPU: 12 x 2048 tokens per micro-step
# (the official value for an 80 GB GPU). Not yet run here: no time or memory figure has been measured.
#     python train.py config/train_tinyllama.py --train_bins="['runs/tinyllama/data/warm_aug.bin']" --max_tokens=...
#     python em.py config/em_tinyllama.py                       # the whole method (docs/real_corpora.md)
_MODEL = "models/TinyLlama-1.1B"
init_from = _MODEL
tokenizer = _MODEL + "/tokenizer.json"   # data/llama_tokenizer.py: its ids, then the four latent tokens
block_size = 2048
dropout = 0.0
batch_size = 12
grad_accum = 8
learning_rate = 1e-4
min_lr = 1e-5
warmup_frac = 0.05
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 500
eval_tokens = 262144
log_interval = 10
ckpt_interval = 250
