# The default one-GPU model for the embedded math corpus (em.py's M-steps): a byte-level GPT of ~10.7M parameters.
#     python train.py config/train_mathworld.py --train_bins="['runs/default/data/warm_aug.bin']" --max_tokens=20000000
tokenizer = "byte"
n_layer = 6
n_head = 6
n_embd = 384
block_size = 1024
dropout = 0.0
batch_size = 32
grad_accum = 1
learning_rate = 1e-3
min_lr = 1e-4
warmup_frac = 0.05
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 200
eval_tokens = 65536
log_interval = 20
ckpt_interval = 200
