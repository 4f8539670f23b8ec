# A tiny model for CPU tests and the CPU smoke run of em.py: it checks that every stage runs, not what it learns.
#     python train.py config/train_cpu_smoke.py --train_bins="['runs/cpu_smoke/data/warm_aug.bin']" --max_steps=50
tokenizer = "byte"
n_layer = 2
n_head = 2
n_embd = 64
block_size = 256
dropout = 0.0
batch_size = 8
grad_accum = 1
learning_rate = 3e-3
min_lr = 3e-4
warmup_frac = 0.05
eval_interval = 100
eval_tokens = 8192
log_interval = 10
ckpt_interval = 100
device = "cpu"
compile = False
