# What em.py applies by itself on a machine with a GPU (python em.py --iters 3): the measured default world and
# budgets, unchanged (the README's seed tables), with the E-step and the evaluations in bigger batches, which a GPU
# runs in about the time of a small one. Every training keeps its 8 rows per step: the row count is part of the
# optimisation that was measured, not a speed setting. Trainings, the E-step and evaluations run under bf16
# autocast on a GPU (common.py: setup), the official code's precision; the CPU figures are float32.
# A GPU also runs what a CPU runs only on request: three seeds one after another (their mean and spread on one
# page, run_dir/seeds.html), and the paper's other measures as extra rows (raw-fresh, WRAP, WRAP-CoT, the
# thought-worth curve, the fine-tuning evaluation; the held-out ELBO is on everywhere).
# Not yet run on a GPU (none was lent). A larger world for a GPU, not measured: config/em_gpu_large.py.
# throughput only
estep_batch = 512
eval_batch = 500
# three seeds and the extra rows
seeds = (0, 1, 2)
raw_fresh = True
wrap = True
worth = (2, 4, 8)
finetune_eval = True
