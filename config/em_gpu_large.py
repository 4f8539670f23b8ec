# A larger world for a GPU (python em.py config/em_gpu_large.py): all five problem families, problems of up to four
# steps, four times the documents, a 6x384 model, K = 8. Sized for about 15 minutes on one H100. NOT MEASURED
# anywhere, and it keeps the budgets of a previous CPU default (no ladder, 3.5 passes per M-step), a kind of world
# docs/notebook.md shows does not climb: a starting point for exploring, not a result. On a GPU,
# python em.py --iters 3 runs config/em_gpu.py instead: the measured default world.
n_docs = 8000
families = ("chain", "total", "linear", "word", "poly")
max_level = 3
train_overrides = {"n_layer": 6, "n_head": 6, "n_embd": 384, "batch_size": 64, "learning_rate": 1.5e-3}
estep_batch = 512
eval_batch = 500
K = 8
max_thought_tokens = 64
warm_max_level = 0
warm_long_share = 0.0
n_eval = 500
mstep_epochs = 3.5
eval_max_new_tokens = 64
