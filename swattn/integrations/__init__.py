"""Adapters that plug swattn into other libraries; each submodule imports its library, this package imports none.

- ``swattn.integrations.transformers``: ``attn_implementation="swattn"`` for Hugging Face transformers models.
- ``swattn.integrations.vllm``: vLLM's ``vllm.vllm_flash_attn.flash_attn_varlen_func`` / ``get_scheduler_metadata``
  signatures (``block_table``, ``seqused_k``, ``out=``, ``s_aux``), and ``patch`` to rebind them in vLLM's backend.
"""
