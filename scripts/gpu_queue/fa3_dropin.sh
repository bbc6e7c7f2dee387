# FlashAttention 3's own tests through the drop-in (carry .fa3-tests, made here by `python scripts/fa3_dropin.py
# prepare --source <flash-attention git dir>`); a larger sample than session 14's 75 s (~220 s).
export PYTHONPATH=$PWD:${PYTHONPATH:-}
[ -f .fa3-tests/test_flash_attn.py ] || { echo ".fa3-tests not carried"; exit 1; }
python3 scripts/fa3_dropin.py run --sample "test_flash_attn_output=2+4,test_flash_attn_varlen_output=2+4,test_flash_attn_kvcache=2+8,test_flash_attn_combine=1+2" \
  --log "$OUT/fa3.log" --time-limit 200 -- -n 8 -p no:cacheprovider
python3 scripts/fa3_dropin.py summary "$OUT/fa3.log"
