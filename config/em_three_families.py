# The previous default world (docs/ablations.md): chain, total and word problems of 2-3 steps, no ladder, half the
# training budget, 500 problems in each of eval.jsonl and valid.jsonl. EM climbs one iteration there and falls back:
#     python em.py config/em_three_families.py --run_dir=runs/three_families
families = ("chain", "total", "word")
max_level = 2
warm_max_level = 0
warm_long_share = 0.0
n_eval = 500
mstep_epochs = 3.5
max_thought_tokens = 48
eval_max_new_tokens = 64
sampler = "windows"  # the reading its tables were measured with (the default until 2026-12-06)
