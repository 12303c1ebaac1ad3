"""A small Baichuan-7B-style model (remote code on the Hub, not in transformers) for the tests: same public module
names (`W_pack`, `o_proj`, `gate_proj`/`up_proj`/`down_proj`), shapes and config keys, written from the public
description so that no download is needed."""
