"""Mapping tables: lookup, clear errors, and the generated docs table."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimum_hywia.architectures import (
    ARCHITECTURES,
    UnsupportedArchitectureError,
    architectures_markdown,
    auto_class_for,
    get_architecture,
    pipeline_task_for,
)


def test_every_table_is_registered_under_its_model_types():
    for model_type, spec in ARCHITECTURES.items():
        assert model_type in spec.model_types
        assert get_architecture(model_type) is spec
        assert {p.dim for p in spec.attention} == {"in", "out"} and {p.dim for p in spec.mlp} == {"in", "out"}


def test_unknown_model_type_lists_the_supported_ones_and_how_to_add_one():
    with pytest.raises(
        UnsupportedArchitectureError, match=r"model_type='mamba'.*Supported: \[.*'llama'.*docs/architectures.md"
    ):
        get_architecture("mamba")


def test_docs_table_is_generated_from_the_tables():
    docs = (Path(__file__).parent.parent / "docs" / "architectures.md").read_text()
    assert architectures_markdown() in docs


def _tiny(config_class: str, model_class: str, **settings):
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(
        vocab_size=32, num_hidden_layers=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, **settings
    )
    return getattr(transformers, model_class)(config)


def test_fused_concat_layout_maps_q_k_v_segments_to_their_groups():
    from optimum_hywia.groups import build_group_sets

    # Phi-3: 8 query heads of 8 features read 4 KV heads: qkv rows = [q 64 | k 32 | v 32], 2 query heads per group
    model = _tiny("Phi3Config", "Phi3ForCausalLM", hidden_size=64, num_attention_heads=8, num_key_value_heads=4)
    attention, mlp = build_group_sets(model, get_architecture(model.config), range(1), ("attention", "mlp"))
    qkv = attention.group_of_index[0]
    assert attention.num_groups == 4 and qkv.shape == (128,)
    assert qkv[:64].tolist() == [i // 16 for i in range(64)]  # two heads of 8 rows per group
    assert qkv[64:96].tolist() == [i // 8 for i in range(32)] == qkv[96:].tolist()
    gate_up = mlp.group_of_index[0]
    assert mlp.num_groups == model.config.intermediate_size
    assert gate_up.tolist() == list(range(mlp.num_groups)) * 2  # [gate | up]


def test_per_group_layout_keeps_each_heads_q_k_v_together():
    from optimum_hywia.groups import build_group_sets

    # GPT-NeoX: query_key_value rows are [head, (q, k, v), head_dim]
    model = _tiny("GPTNeoXConfig", "GPTNeoXForCausalLM", hidden_size=32, num_attention_heads=4, intermediate_size=48)
    (attention,) = build_group_sets(model, get_architecture(model.config), range(1), ("attention",))
    assert attention.num_groups == 4
    assert attention.group_of_index[0].tolist() == [i // 24 for i in range(96)]
    assert attention.params_per_group == 3 * 8 * (32 + 1) + 8 * 32  # q/k/v rows with biases + dense columns


def test_multi_query_groups_are_query_heads_and_the_kv_head_is_never_removed():
    import torch

    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.surgery import remove_groups

    # Falcon-7B layout: [8 query heads | k | v] x head_dim 8, one shared KV head
    model = _tiny("FalconConfig", "FalconForCausalLM", hidden_size=64, num_attention_heads=8, multi_query=True)
    spec = get_architecture(model.config)
    assert spec.shared_kv
    (attention,) = build_group_sets(model, spec, range(1), ("attention",))
    qkv = attention.group_of_index[0]
    assert attention.num_groups == 8 and attention.units_per_group == {"q_heads": 1, "kv_heads": 0}
    assert (qkv[64:] == 8).all()  # shared rows map past the last group
    remove_groups([attention], {(0, "attention"): torch.tensor([1, 6])})
    assert model.transformer.h[0].self_attention.query_key_value.out_features == 2 * 8 + 2 * 8


def test_conv1d_weights_are_sliced_along_their_transposed_axis():
    import torch

    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.surgery import remove_groups

    model = _tiny("GPT2Config", "GPT2LMHeadModel", n_embd=32, n_head=4, n_inner=48)
    (mlp,) = build_group_sets(model, get_architecture(model.config), range(1), ("mlp",))
    c_fc, c_proj = (p.module for p in mlp.projections)
    assert (mlp.projections[0].weight_axis, mlp.projections[1].weight_axis) == (1, 0)
    expected_fc, expected_proj = c_fc.weight[:, [3, 7]].clone(), c_proj.weight[[3, 7]].clone()
    remove_groups([mlp], {(0, "mlp"): torch.tensor([3, 7])})
    assert torch.equal(c_fc.weight, expected_fc) and c_fc.nf == 2 and c_fc.bias.shape == (2,)
    assert torch.equal(c_proj.weight, expected_proj)


def test_falcon_variant_follows_its_config_and_alibi_is_declared():
    from types import SimpleNamespace

    base = dict(model_type="falcon", num_attention_heads=8, num_kv_heads=2, hidden_size=64)
    grouped = get_architecture(SimpleNamespace(**base, new_decoder_architecture=True, multi_query=False))
    assert grouped.attention[0].layout == "per_group" and not grouped.shared_kv and grouped.alibi is None
    multi_query = get_architecture(SimpleNamespace(**base, new_decoder_architecture=False, multi_query=True))
    assert multi_query.attention[0].layout == "concat" and multi_query.shared_kv
    rw = get_architecture(SimpleNamespace(**base, new_decoder_architecture=False, multi_query=False, alibi=True))
    # the multi-head config reads num_kv_heads (= the head count): pruned heads rewrite it
    assert rw.attention[0].layout == "per_group" and not rw.shared_kv and rw.config_keys.num_kv_heads == "num_kv_heads"
    assert rw.alibi.path == "self_attention"
    assert dict(rw.alibi.inputs) == {"alibi": "batch_heads", "attention_mask": "heads"}
    assert get_architecture(SimpleNamespace(**base, multi_query=True, alibi=True)).shared_kv


def test_baichuan_variant_is_alibi_when_the_config_has_no_max_position_embeddings():
    from types import SimpleNamespace

    base = dict(model_type="baichuan", num_attention_heads=40, hidden_size=5120)
    rotary = get_architecture(SimpleNamespace(**base, max_position_embeddings=4096))  # Baichuan-7B
    assert rotary.alibi is None and rotary.remote_code
    assert get_architecture(SimpleNamespace(**base, max_position_embeddings=4096, model_max_length=4096)).alibi is None
    alibi = get_architecture(SimpleNamespace(**base, model_max_length=4096))  # Baichuan-13B, Baichuan2-13B
    assert alibi.alibi.path == "self_attn" and dict(alibi.alibi.inputs) == {"attention_mask": "heads"}
    assert alibi.attention == rotary.attention and alibi.remote_code


def test_auto_class_is_declared_per_family():
    assert get_architecture("bert").auto_class == "AutoModel"
    assert all(spec.auto_class == "AutoModelForCausalLM" for t, spec in ARCHITECTURES.items() if t != "bert")


@pytest.mark.parametrize(
    "class_name, auto_map, preferred, auto_class, task",
    [
        ("LlamaForCausalLM", None, None, "AutoModelForCausalLM", "text-generation"),
        ("GPT2LMHeadModel", None, None, "AutoModelForCausalLM", "text-generation"),
        ("BertModel", None, "AutoModel", "AutoModel", "feature-extraction"),
        ("BertLMHeadModel", None, "AutoModel", "AutoModelForCausalLM", "text-generation"),  # not what AutoModel loads
        ("BertForMaskedLM", None, None, "AutoModelForMaskedLM", "fill-mask"),
        ("BertForTokenClassification", None, None, "AutoModelForTokenClassification", "token-classification"),
        # multimodal Gemma 3: its pipeline is image-text-to-text, but the family table loads it as a causal LM
        ("Gemma3ForConditionalGeneration", None, None, "AutoModelForImageTextToText", "image-text-to-text"),
        ("Gemma3ForConditionalGeneration", None, "AutoModelForCausalLM", "AutoModelForCausalLM", "text-generation"),
        # classes transformers does not list: the checkpoint's auto_map, else the name's ending
        (
            "HyWIAGemma3ForConditionalGeneration",
            {"AutoModelForCausalLM": "modeling_hywia.HyWIAGemma3ForConditionalGeneration"},
            None,
            "AutoModelForCausalLM",
            "text-generation",
        ),
        (
            "BaichuanForCausalLM",
            {"AutoConfig": "configuration_baichuan.BaichuanConfig", "AutoTokenizer": ["tok.Slow", None]},
            None,
            "AutoModelForCausalLM",
            "text-generation",
        ),
        ("HyWIAGPT2LMHeadModel", None, None, "AutoModelForCausalLM", "text-generation"),
        ("HyWIABertModel", None, None, "AutoModel", "feature-extraction"),
        (None, None, None, "AutoModelForCausalLM", "text-generation"),
    ],
)
def test_one_table_names_the_auto_class_and_pipeline_task_of_a_model_class(
    class_name, auto_map, preferred, auto_class, task
):
    assert auto_class_for(class_name, auto_map, preferred) == auto_class
    assert pipeline_task_for(auto_class) == task


def test_the_family_auto_class_loads_every_family_s_model_class():
    """What the surgery registers a pruned model's override under, from the family table's own Auto class."""
    from test_families import FAMILIES

    for family, (model_class, _, _) in FAMILIES.items():
        spec = ARCHITECTURES[{"gemma-mqa": "gemma"}.get(family, family.split("-")[0])]
        assert auto_class_for(model_class, {}, spec.auto_class) == spec.auto_class, family
    assert auto_class_for("BertModel", {}, get_architecture("bert").auto_class) == "AutoModel"


def test_every_table_declares_a_fused_layout_its_docs_row_shows():
    table = architectures_markdown()
    for spec in ARCHITECTURES.values():
        for description in spec.fused:
            assert description in table
