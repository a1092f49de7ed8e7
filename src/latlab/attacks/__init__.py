"""latlab.attacks: the adaptive jailbreak attack suite (direct, prefill, many-shot, GCG, latent and embedding PGD,
refusal-direction ablation); `run_attack_suite` builds one model's row of the ASR matrix."""
