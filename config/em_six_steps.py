# An ablation of docs/notebook.md ("Chains of 2-6 steps and a reliable M_0"): serial chains of 2-6 steps, the
# same ladder (the teacher writes mostly up to 4 steps), and M_0 at 24 passes over the warm-start split, where its
# training is no longer a lottery. Its seed runs, then its baselines and oracle in a second pass:
#     python em.py config/em_six_steps.py --run_dir=runs/six_s1 --seed=1 --data_seed=1 --threads=1 --baselines=False --oracle=False
#     python em.py config/em_six_steps.py --run_dir=runs/six_s1 --seed=1 --data_seed=1 --threads=1 --em=False
families = ("chain",)
max_level = 5
warm_max_level = 3
warm_long_share = 0.3
m0_epochs = 24.0
mstep_epochs = 7.0
max_thought_tokens = 64
eval_max_new_tokens = 80
n_eval = 1000
sampler = "windows"  # the reading its tables were measured with (the default until 2026-12-06)
