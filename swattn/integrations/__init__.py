"""Adapters that plug swattn into other libraries; each submodule imports its library, this package imports none.

- ``swattn.integrations.transformers``: ``attn_implementation="swattn"`` for Hugging Face transformers models.
"""
