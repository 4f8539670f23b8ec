# What em.py applies by itself on a machine with a GPU (python em.py --iters 3): the measured default world and
# budgets, unchanged (the README's seed tables), with the E-step and the evaluations in bigger batches, which a GPU
# runs in about the time of a small one. Every training keeps its 8 rows per step: the row count is part of the
# optimisation that was measured, not a speed setting. Trainings, the E-step and evaluations run under bf16
# autocast on a GPU (common.py: setup), the official code's precision; the CPU figures are float32.
# Not yet run on a GPU (none was lent). A larger world for a GPU, not measured: config/em_gpu_large.py.
estep_batch = 512
eval_batch = 500
