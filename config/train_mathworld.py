# The default model for the embedded math corpus (em.py's M-steps, with its mathworld tokenizer): 0.85M
# parameters, small enough that the whole EM run (em.py) takes about 22 minutes on a 2-core CPU (README, "Results").
#     python train.py config/train_mathworld.py --train_bins="['runs/default/data/warm_aug.bin']" --max_tokens=2000000
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
dropout = 0.0
rope_theta = 10000.0      # rotary positions: copying a problem's numbers into a thought is learnt many times faster
batch_size = 8
grad_accum = 1
learning_rate = 3e-3
min_lr = 3e-4
warmup_frac = 0.05
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 1000
eval_tokens = 32768
log_interval = 50
ckpt_interval = 100
