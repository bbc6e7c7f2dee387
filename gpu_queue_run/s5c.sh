#!/bin/bash
# Session 5, call 3: every Gluon GPU test of main (the direct launch landed), the Gluon probe (sink prefetch,
# ping-pong, TMA store, dynamic beside FA3), then the helpers' scripts (18-gluon-launch, 18-host-b, 21-serving).
set -u
START=$(date +%s); DEADLINE=$((START + ${BUDGET:-500}))
left() { local l=$((DEADLINE - $(date +%s))); [ $l -lt $1 ] && echo $l || echo $1; }
mkdir -p /tmp/site
tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
echo "tree $(cat gpu_queue_run/COMMIT)"
SWATTN_TEST_DEVICE=cuda timeout 150 python3 -m pytest -v --tb=short -n 14 -p no:cacheprovider \
  tests/gpu/test_gluon_fwd.py tests/gpu/test_bf16_real_sizes.py > $R/tests.log 2>&1
echo "lead pytest exit $? at +$(( $(date +%s) - START )) s"
grep -E "(FAILED|ERROR)" $R/tests.log | cut -c1-220 | head -20; tail -1 $R/tests.log
timeout $(left 100) python3 scripts/gpu_gluon_probe.py --rows "causal_D128,W(4095,0)_D128,sinks" --pingpong \
  --variants "shipped,dynamic,gluon_TMA_store,ping-pong,FA3" --rounds 5 --reps 5 --out $R/gluon-probe.md \
  > $R/gluon-probe.stdout 2>&1
echo "probe exit $? at +$(( $(date +%s) - START )) s"; grep "^|" $R/gluon-probe.stdout | tail -16
for s in 18-gluon-launch 18-host-b 21-serving; do
  [ -f gpu_queue_run/$s.sh ] || continue
  t=$(left 90); [ $t -lt 25 ] && { echo "$s: skipped, no time left"; continue; }
  echo "=== $s"; OUT=$R timeout $t bash gpu_queue_run/$s.sh > $R/$s.stdout 2>&1; echo "$s exit $? at +$(( $(date +%s) - START )) s"; tail -40 $R/$s.stdout | cut -c1-300
done
tar -czf $OUT/s5c.tar.gz -C $OUT r
