# The whole EM loop with a tiny model on a CPU, in about a minute on 2 cores:
#     python em.py config/em_cpu_smoke.py
# It checks that every stage runs and hands its files to the next; the numbers mean little at this size.
run_dir = "runs/cpu_smoke"
iters = 2
n_docs = 150
train_config = "config/train_cpu_smoke.py"
train_overrides = {"block_size": 256, "rope_theta": 10000.0}
base_epochs = 0.05
m0_epochs = 1.0
mstep_epochs = 1.0
oracle = False
K = 2
max_thought_tokens = 32
estep_batch = 64
eval_shots = 1
eval_limit = 40
eval_max_new_tokens = 48
eval_batch = 40
heldout_docs = 10
finetune_problems = 100
finetune_seeds = 2
finetune_epochs = 2.0
