# Issue 21: flash_attn_func prefills and training steps of new lengths (s15-dense-q's rebased dense-q plans, replays
# across lengths, the backward's rebase and shared compiled kernels), ~90 s.
bash scripts/gpu_dense_prefill.sh
