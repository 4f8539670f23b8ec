# A world built to bootstrap (docs/bootstrapping.md): serial chains of 2-5 steps that raw text cannot shortcut,
# a difficulty ladder (the teacher writes mostly chains of up to 4 steps; 30% of its problems come from every
# level, so 5-step thoughts are rare but seen), a training budget at which the M-step learns reliably, and
# 1,000 held-out problems in each of eval.jsonl and valid.jsonl:
#     python em.py config/em_ladder.py --run_dir=runs/ladder_s0 --seed=0 --data_seed=0
families = ("chain",)
max_level = 4
warm_max_level = 3
warm_long_share = 0.3
mstep_epochs = 7.0
max_thought_tokens = 64
eval_max_new_tokens = 80
n_eval = 1000
