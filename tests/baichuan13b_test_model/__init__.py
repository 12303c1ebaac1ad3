"""A small Baichuan-13B-style model (ALiBi, remote code on the Hub, not in transformers) for the tests: the public
module names (`W_pack`, `o_proj`, `gate_proj`/`up_proj`/`down_proj`), functions (`_get_interleave`,
`_gen_alibi_mask`, `_buffered_future_mask`) and config keys (`model_max_length`, no `max_position_embeddings`) of
Baichuan-13B / Baichuan2-13B, written from the public description so that no download is needed."""
