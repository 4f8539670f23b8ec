# The settings of the three seed runs of docs/bootstrapping.md, which are today's defaults (serial chains of 2-5
# steps, a difficulty ladder, twice the training budget of the previous default, 1,000 held-out problems in each of
# eval.jsonl and valid.jsonl), pinned here so that the documented commands reproduce them if the defaults move:
#     python em.py config/em_ladder.py --run_dir=runs/ladder_s0 --seed=0 --data_seed=0 --threads=1
families = ("chain",)
max_level = 4
warm_max_level = 3
warm_long_share = 0.3
mstep_epochs = 7.0
max_thought_tokens = 64
eval_max_new_tokens = 80
n_eval = 1000
sampler = "windows"  # the reading its tables were measured with (the default until 2026-12-06)
