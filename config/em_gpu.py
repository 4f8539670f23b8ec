# The preset em.py applies by itself on a machine with a GPU (python em.py --iters 3): a larger world (all five
# problem families, problems of up to four steps, four times the documents) and a larger model, for the same
# three findings with larger effects. Sized for about 15 minutes on one H100; not yet measured on a GPU. It keeps
# the budgets of the previous CPU default (no ladder, 3.5 passes per M-step), for which it was sized.
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
