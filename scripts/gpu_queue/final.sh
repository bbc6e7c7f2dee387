# Every GPU test but NCCL's (~170 s at -n 14), then the self-check (~70 s).
export PYTHONPATH=$PWD:${PYTHONPATH:-}
SWATTN_TEST_DEVICE=cuda python3 -m pytest -q -n 14 -p no:cacheprovider --ignore=tests/gpu/test_distributed_nccl.py \
  tests/gpu 2>&1 | tail -30
python3 -m swattn.selfcheck --minutes 1 --seed "${SELFCHECK_SEED:-16}" 2>&1 | tail -15
