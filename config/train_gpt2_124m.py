# The GPT-2 124M shape for real corpora (gpt2 tokenizer), 64 rows x 1024 tokens = 65,536 tokens per step on one GPU:
#     python train.py config/train_gpt2_124m.py --train_bins="['data_dir/train_aug.bin']" --max_tokens=1000000000
#     torchrun --nproc_per_node=8 train.py config/train_gpt2_124m.py --grad_accum=1 ...
# Set init_from to a local Hugging Face GPT-2 directory to continue pretraining it instead (the paper continues
# pretraining a 1.1B model: docs/method.md, The official code's settings).
tokenizer = "gpt2"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
bias = True
batch_size = 16
grad_accum = 4
learning_rate = 6e-4
min_lr = 6e-5
warmup_frac = 0.02
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 500
eval_tokens = 262144
log_interval = 20
ckpt_interval = 1000
