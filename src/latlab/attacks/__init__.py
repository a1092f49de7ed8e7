"""latlab.attacks: the adversaries (direct, prefill, many-shot, GCG, latent and embedding PGD, refusal-direction
ablation). Trainers use them (LAT the latent adversary, R2D2 GCG); `latlab.evals.attack_suite` runs and judges them
into one model's row of the ASR matrix."""
