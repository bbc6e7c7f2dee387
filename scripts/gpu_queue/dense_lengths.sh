# Issue 21: dense-cache decodes of new lengths (e075b6b's rebased plans and shared compiled kernels), ~60-80 s.
bash scripts/gpu_dense_lengths.sh
