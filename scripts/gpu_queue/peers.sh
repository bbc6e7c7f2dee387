# Sourced by the queue's items: FlashAttention 3 (and FA4 when carried) from .peer-kernels into /tmp/site.
mkdir -p /tmp/site
[ -f /tmp/site/vllm_fa3/_vllm_fa3_C.abi3.so ] || [ ! -f .peer-kernels/vllm_fa3.tar.xz ] \
  || tar -xJf .peer-kernels/vllm_fa3.tar.xz -C /tmp/site
[ -d /tmp/site/flash_attn/cute ] || [ ! -f .peer-kernels/fa4site.tar.xz ] || tar -xJf .peer-kernels/fa4site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD:${PYTHONPATH:-}
