"""Every supported family, on a tiny in-process config: HyWIA at 20% and 50%, uniform and per-layer layouts.

For each: physical removal is exact (pruned logits == original logits with the removed groups masked), `generate()`
works with and without the KV cache, and every saved checkpoint reloads in one fresh process with identical logits,
through vanilla `from_pretrained` when the report says the config is vanilla, through the shipped override otherwise.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from conftest import VOCAB, masked_logits, run_python

from optimum_hywia import HyWIAConfig, HyWIAPruner, load_pruned_model
from optimum_hywia.architectures import get_architecture
from optimum_hywia.groups import build_group_sets
from optimum_hywia.importance import group_masks

LAYERS, HIDDEN = 2, 64
COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# name: (model class, config class, config kwargs)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(num_attention_heads=8, num_key_value_heads=2)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(num_attention_heads=8, num_key_value_heads=4)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(num_attention_heads=8, num_key_value_heads=2)),
    # head_dim independent of hidden_size
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24)),
    # multi-query (Gemma-2B style): the groups are single query heads
    "gemma-mqa": ("GemmaForCausalLM", "GemmaConfig", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32)),
    "gemma2": (
        "Gemma2ForCausalLM",
        "Gemma2Config",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    ),
    "gemma3_text": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    ),
    # the language model of the multimodal Gemma 3 (widths in config.text_config, layers under model.language_model)
    "gemma3": (
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    ),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(num_attention_heads=8, num_key_value_heads=4)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(num_attention_heads=8, rotary_pct=0.5)),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(num_attention_heads=8, ffn_dim=96, word_embed_proj_dim=HIDDEN)),
    "falcon-gqa": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True, ffn_hidden_size=96),
    ),
    "falcon-mqa": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(num_attention_heads=8, multi_query=True, parallel_attn=True, ffn_hidden_size=96),
    ),
    "falcon-mha": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(num_attention_heads=8, multi_query=False, parallel_attn=False, bias=True, ffn_hidden_size=96),
    ),
    # Falcon-RW: ALiBi instead of rotary; kept heads keep their original slopes
    "falcon-rw": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(num_attention_heads=8, multi_query=False, parallel_attn=False, bias=True, alibi=True, ffn_hidden_size=96),
    ),
    # ALiBi with the Falcon-7B multi-query layout (query heads pruned one by one around the shared KV head)
    "falcon-alibi-mqa": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(num_attention_heads=8, multi_query=True, parallel_attn=True, alibi=True, ffn_hidden_size=96),
    ),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_head=8, n_inner=96, n_positions=256)),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(n_head=8)),
}
LAYOUTS = ("uniform", "per_layer")
RATIOS = (0.2, 0.5)


def make_family_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    model_class, config_class, extra = FAMILIES[name]
    settings = dict(COMMON, hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=96)
    if config_class in ("GPT2Config", "BloomConfig"):
        settings.pop("intermediate_size")
    settings["max_position_embeddings"] = 256
    if config_class == "GPT2Config":
        settings.pop("max_position_embeddings")
    settings.update(extra)
    if config_class == "Gemma3Config":
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=28)
        config = transformers.Gemma3Config(
            text_config=settings, vision_config=dict(vision, patch_size=14), mm_tokens_per_image=4, **COMMON
        )
    else:
        config = getattr(transformers, config_class)(**settings)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():  # spread the logits so that the rankings are not ties
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(3.0)
    return model.eval()


def tiny_config(**overrides) -> HyWIAConfig:
    settings = dict(num_calibration_samples=8, calibration_sequence_length=24, calibration_batch_size=4, fusion_steps=2)
    settings.setdefault("reconstruction", "none")  # exact masking equivalences; compensation has its own tests
    settings.update(overrides)
    return HyWIAConfig(**settings)


RELOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM
results = {}
for folder, remote in json.loads(sys.argv[1]):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote)
    with torch.no_grad():
        logits = model(torch.arange(3, 23)[None]).logits[0, -3:]
    generated = model.generate(torch.arange(3, 9)[None], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    results[folder] = {"logits": logits.tolist(), "generated": generated.shape[1], "class": type(model).__name__}
print(json.dumps({"results": results, "imported": "optimum_hywia" in sys.modules}))
"""


def reload_in_fresh_process(script: str, saved: list[tuple[str, bool, torch.Tensor]]) -> dict:
    """Run a reload script on the saved `(folder, needs_remote_code, expected)` checkpoints in a new interpreter;
    its results, after checking that the checkpoints needed nothing from optimum_hywia."""
    output = run_python(script.replace("sys.argv[1]", repr(json.dumps([(f, r) for f, r, _ in saved]))))
    result = json.loads(output.strip().splitlines()[-1])
    assert result["imported"] is False  # the checkpoints need nothing from optimum_hywia
    return result


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_prunes_exactly_saves_and_reloads(family, tmp_path):
    base = make_family_model(family)
    spec = get_architecture(base.config)
    calibration = torch.randint(3, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    inputs = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    reload_inputs = torch.arange(3, 23)[None]
    saved = []
    for layout in LAYOUTS:
        for ratio in RATIOS:
            model = copy.deepcopy(base)
            pruner = HyWIAPruner(model, tiny_config(pruning_ratio=ratio, layout=layout))
            pruned = pruner.prune(calibration, show_progress=False)
            report = pruner.report
            assert report.params_after < report.params_before
            assert abs(report.achieved_ratio - ratio) < 0.12, (layout, ratio, report.achieved_ratio)
            with torch.no_grad():
                logits = pruned(inputs).logits
            torch.testing.assert_close(logits, masked_logits(base, pruner, inputs), rtol=1e-4, atol=1e-4)

            prompt = inputs[:1, :6]
            cached = pruned.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=True)
            uncached = pruned.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False)
            assert cached.shape == (1, 11) and torch.equal(cached, uncached)

            widths = [layer["after"] for layer in report.layers]
            if not spec.vanilla_loadable or any(w != widths[0] for w in widths):
                assert not report.vanilla_config
            elif spec.config_keys.head_dim is not None:
                assert report.vanilla_config, "uniform widths of this family must load with vanilla transformers"
            folder = pruner.save_pretrained(tmp_path / f"{layout}-{ratio}")
            assert ((folder / "modeling_hywia.py").exists()) == (not report.vanilla_config)
            with torch.no_grad():
                expected = pruned(reload_inputs).logits[0, -3:]
                # the package's own loader (no remote code) rebuilds the same model; not for Gemma 3 multimodal yet:
                # transformers saves its weights under renamed keys (language_model.model.layers...), which
                # modeling.check_declared_shapes looks up by module path
                if family != "gemma3" or report.vanilla_config:
                    reloaded = load_pruned_model(folder).eval()
                    torch.testing.assert_close(reloaded(reload_inputs).logits[0, -3:], expected, rtol=0, atol=1e-5)
            saved.append((str(folder), not report.vanilla_config, expected))

    result = reload_in_fresh_process(RELOAD_SCRIPT, saved)
    for folder, remote, expected in saved:
        reloaded = result["results"][folder]
        torch.testing.assert_close(torch.tensor(reloaded["logits"]), expected, rtol=0, atol=1e-5)
        assert reloaded["generated"] == 10
        assert reloaded["class"].startswith("HyWIA") == remote


def test_falcon_alibi_eager_attention_reads_the_kept_slopes_from_its_alibi_argument(tmp_path):
    """SDPA reads Falcon's ALiBi from the 4-d attention mask; eager attention also adds the `alibi` argument."""
    base = make_family_model("falcon-rw")
    base.config._attn_implementation = "eager"
    inputs = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    pruner = HyWIAPruner(copy.deepcopy(base), tiny_config(pruning_ratio=0.5, layout="per_layer", importance="l2"))
    pruned = pruner.prune(show_progress=False)
    assert min(len(pruner.report.kept_groups[f"{layer}.attention"]) for layer in range(LAYERS)) < 8
    with torch.no_grad():
        logits = pruned(inputs).logits
    torch.testing.assert_close(logits, masked_logits(base, pruner, inputs), rtol=1e-4, atol=1e-4)
    folder = pruner.save_pretrained(tmp_path / "falcon-rw-eager")
    reloaded = load_pruned_model(folder, attn_implementation="eager").eval()
    assert reloaded.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs).logits, logits, rtol=0, atol=1e-5)


def save_baichuan_checkpoint(folder, alibi: bool = False) -> None:
    """A tiny Baichuan checkpoint as the Hub has them: config + weights + its own modeling files (auto_map).

    `alibi=False`: Baichuan-7B (rotary, `max_position_embeddings`); `alibi=True`: Baichuan-13B (ALiBi,
    `model_max_length`), with 10 heads so that the slopes take `_get_interleave`'s non-power-of-2 branch like the
    real model's 40 heads.
    """
    if alibi:
        from baichuan13b_test_model.configuration_baichuan import BaichuanConfig
        from baichuan13b_test_model.modeling_baichuan import BaichuanForCausalLM

        sizes = dict(hidden_size=80, num_attention_heads=10, model_max_length=64)
    else:
        from baichuan_test_model.configuration_baichuan import BaichuanConfig
        from baichuan_test_model.modeling_baichuan import BaichuanForCausalLM

        sizes = dict(hidden_size=HIDDEN, num_attention_heads=8, max_position_embeddings=256)
    config = BaichuanConfig(vocab_size=VOCAB, intermediate_size=96, num_hidden_layers=LAYERS, **sizes)
    torch.manual_seed(0)
    model = BaichuanForCausalLM(config)
    if alibi:
        with torch.no_grad():  # spread the logits so that the rankings are not ties
            for param in model.parameters():
                if param.ndim == 2:
                    param.mul_(3.0)
    BaichuanConfig.register_for_auto_class()
    BaichuanForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    model.save_pretrained(folder)


BAICHUAN_VARIANTS = {
    # Baichuan-7B: rotary; one layout per ratio
    "7b-rotary": (False, (("uniform", 0.2), ("per_layer", 0.5))),
    # Baichuan-13B / Baichuan2-13B: ALiBi; both layouts at both ratios
    "13b-alibi": (True, tuple((layout, ratio) for layout in LAYOUTS for ratio in RATIOS)),
}


@pytest.mark.parametrize("variant", list(BAICHUAN_VARIANTS))
def test_baichuan_remote_code_prunes_exactly_and_reloads_with_its_own_code(variant, tmp_path):
    alibi, runs = BAICHUAN_VARIANTS[variant]
    save_baichuan_checkpoint(tmp_path / f"baichuan-{variant}", alibi=alibi)
    assert (tmp_path / f"baichuan-{variant}" / "modeling_baichuan.py").exists()
    base = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / f"baichuan-{variant}", trust_remote_code=True
    ).eval()
    assert type(base).__name__ == "BaichuanForCausalLM" and base.config.model_type == "baichuan"
    spec = get_architecture(base.config)
    assert (spec.alibi is not None) == alibi  # the variant is read from the config (no max_position_embeddings)
    calibration = torch.randint(3, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    inputs = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    padding = torch.ones_like(inputs)
    padding[1, :4] = 0  # left padding: Baichuan2-13B combines it with the ALiBi mask into [batch, heads, q, k]
    saved, kept_heads = [], []
    for layout, ratio in runs:
        model = copy.deepcopy(base)
        pruner = HyWIAPruner(model, tiny_config(pruning_ratio=ratio, layout=layout))
        pruned = pruner.prune(calibration, show_progress=False)
        assert pruner.report.vanilla_config is False  # Baichuan derives head_dim from hidden_size // heads
        assert abs(pruner.report.achieved_ratio - ratio) < 0.12, (layout, ratio, pruner.report.achieved_ratio)
        kept_heads += [len(pruner.report.kept_groups[f"{layer}.attention"]) for layer in range(LAYERS)]
        with torch.no_grad():
            logits = pruned(inputs).logits
        torch.testing.assert_close(logits, masked_logits(base, pruner, inputs), rtol=1e-4, atol=1e-4)
        if alibi:
            with torch.no_grad():
                padded = pruned(inputs, attention_mask=padding).logits[1, 4:]
                with_masks = _masked_logits_with(base, pruner, inputs, attention_mask=padding)[1, 4:]
            torch.testing.assert_close(padded, with_masks, rtol=1e-4, atol=1e-4)
        cached = pruned.generate(inputs[:1, :6], max_new_tokens=4, min_new_tokens=4, do_sample=False)
        uncached = pruned.generate(inputs[:1, :6], max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
        folder = pruner.save_pretrained(tmp_path / f"{variant}-{layout}-{ratio}")
        files = {path.name for path in folder.iterdir()}
        assert {"modeling_baichuan.py", "configuration_baichuan.py", "modeling_hywia.py"} <= files
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hywia.HyWIABaichuanForCausalLM"
        assert config["auto_map"]["AutoConfig"] == "configuration_baichuan.BaichuanConfig"
        if alibi:
            assert config["hywia_alibi_inputs"] == {"attention_mask": "heads"}
            assert config["hywia_alibi_total_heads"] == base.config.num_attention_heads
            assert "max_position_embeddings" not in config and config["model_max_length"] == 64
        with torch.no_grad():
            expected = pruned(torch.arange(3, 23)[None]).logits[0, -3:]
        saved.append((str(folder), True, expected))
    assert min(kept_heads) < base.config.num_attention_heads  # heads were removed: the slopes were put to the test

    result = reload_in_fresh_process(RELOAD_SCRIPT, saved)
    for folder, _, expected in saved:
        reloaded = result["results"][folder]
        torch.testing.assert_close(torch.tensor(reloaded["logits"]), expected, rtol=0, atol=1e-5)
        assert reloaded["generated"] == 10
        assert reloaded["class"] == "HyWIABaichuanForCausalLM"


def _masked_logits_with(reference, pruner, inputs, **kwargs) -> torch.Tensor:
    """`conftest.masked_logits` with extra keyword arguments for the model (e.g. a padding mask)."""
    sets = build_group_sets(reference, pruner.spec, range(LAYERS), ("attention", "mlp"))
    masks = {}
    for group_set in sets:
        masks[group_set.key] = torch.zeros(group_set.num_groups)
        masks[group_set.key][pruner.report.kept_groups[f"{group_set.layer}.{group_set.kind}"]] = 1.0
    with torch.no_grad(), group_masks(sets, masks):
        return reference(inputs, **kwargs).logits


ENCODER_RELOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModel
results = {}
for folder, remote in json.loads(sys.argv[1]):
    model = AutoModel.from_pretrained(folder, trust_remote_code=remote)
    with torch.no_grad():
        hidden = model(torch.arange(3, 23)[None]).last_hidden_state[0, :3]
    results[folder] = {"hidden": hidden.tolist(), "class": type(model).__name__}
print(json.dumps({"results": results, "imported": "optimum_hywia" in sys.modules}))
"""


def _tiny_bert() -> transformers.BertModel:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=8,
        intermediate_size=96,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def test_bert_encoder_prunes_exactly_saves_and_reloads(tmp_path):
    base = _tiny_bert()
    calibration = torch.randint(3, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    inputs = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    saved = []
    for layout in LAYOUTS:
        for ratio in RATIOS:
            model = copy.deepcopy(base)
            pruner = HyWIAPruner(model, tiny_config(pruning_ratio=ratio, layout=layout))
            pruned = pruner.prune(calibration, show_progress=False)
            assert len(pruner.report.fusion_losses) == 2 and all(0 <= loss < 2 for loss in pruner.report.fusion_losses)
            sets = build_group_sets(base, pruner.spec, range(LAYERS), ("attention", "mlp"))
            masks = {}
            for group_set in sets:
                masks[group_set.key] = torch.zeros(group_set.num_groups)
                masks[group_set.key][pruner.report.kept_groups[f"{group_set.layer}.{group_set.kind}"]] = 1.0
            with torch.no_grad(), group_masks(sets, masks):
                expected_masked = base(inputs).last_hidden_state
            with torch.no_grad():
                torch.testing.assert_close(pruned(inputs).last_hidden_state, expected_masked, rtol=1e-4, atol=1e-4)
                expected = pruned(torch.arange(3, 23)[None]).last_hidden_state[0, :3]
            folder = pruner.save_pretrained(tmp_path / f"{layout}-{ratio}")
            saved.append((str(folder), not pruner.report.vanilla_config, expected))

    result = reload_in_fresh_process(ENCODER_RELOAD_SCRIPT, saved)
    for folder, remote, expected in saved:
        reloaded = result["results"][folder]
        torch.testing.assert_close(torch.tensor(reloaded["hidden"]), expected, rtol=0, atol=1e-5)
        assert reloaded["class"] == ("HyWIABertModel" if remote else "BertModel")


def _save_tiny_bert(folder) -> None:
    """A tiny BERT encoder checkpoint with its WordPiece tokenizer, as a sentence-encoder repository has them."""
    folder.mkdir(parents=True)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "and", "slow", "big", "small", "red"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(tokens + [f"w{i}" for i in range(VOCAB - len(tokens))]) + "\n")
    transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    _tiny_bert().save_pretrained(folder)


def test_from_pretrained_loads_an_encoder_with_the_auto_class_of_its_table(tmp_path):
    _save_tiny_bert(tmp_path / "bert")
    texts = ["the cat sat on the mat and the dog ran fast", "a big red dog and a small cat sat on a mat"] * 8
    config = tiny_config(pruning_ratio=0.5, layout="per_layer", calibration_sequence_length=12)
    pruner = HyWIAPruner.from_pretrained(tmp_path / "bert", config=config)
    assert type(pruner.model) is transformers.BertModel  # AutoModel, not AutoModelForCausalLM's BertLMHeadModel
    assert isinstance(pruner.tokenizer, transformers.PreTrainedTokenizerBase)
    dense = copy.deepcopy(pruner.model)
    pruned = pruner.prune(texts, show_progress=False)
    assert type(pruned) is transformers.BertModel and not pruned.can_generate()
    assert pruner.report.params_after < pruner.report.params_before and len(pruner.report.fusion_losses) == 2
    inputs = pruner.tokenizer(texts[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pruned(**inputs).last_hidden_state
    assert hidden.shape == dense(**inputs).last_hidden_state.shape
    folder = pruner.save_pretrained(tmp_path / "bert-hywia")
    reloaded = load_pruned_model(folder).eval()
    assert type(reloaded).__name__ == "HyWIABertModel"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).last_hidden_state, hidden, rtol=0, atol=1e-5)


def test_from_pretrained_takes_an_explicit_model_class(tmp_path):
    _save_tiny_bert(tmp_path / "bert")
    masked_lm = HyWIAPruner.from_pretrained(tmp_path / "bert", model_class="AutoModelForMaskedLM")
    assert type(masked_lm.model) is transformers.BertForMaskedLM and masked_lm.spec.name == "BERT"
    direct = HyWIAPruner.from_pretrained(tmp_path / "bert", model_class=transformers.BertModel)
    assert type(direct.model) is transformers.BertModel
    with pytest.raises(ValueError, match="AutoModelForMaskedLMM"):
        HyWIAPruner.from_pretrained(tmp_path / "bert", model_class="AutoModelForMaskedLMM")
    with pytest.raises(TypeError, match="model_class"):
        HyWIAPruner.from_pretrained(direct.model, model_class="AutoModel")
    # an MLP-only pruned BERT is a vanilla checkpoint: load_pruned_model loads it with AutoModel too
    mlp_only = HyWIAPruner.from_pretrained(tmp_path / "bert", config=tiny_config(importance="l2", group_kinds="mlp"))
    mlp_only.prune(show_progress=False)
    assert mlp_only.report.vanilla_config
    assert type(load_pruned_model(mlp_only.save_pretrained(tmp_path / "bert-mlp"))) is transformers.BertModel
    # decoders still load with AutoModelForCausalLM by default
    make_family_model("llama").save_pretrained(tmp_path / "llama")
    masked_lm.tokenizer.save_pretrained(tmp_path / "llama")
    assert type(HyWIAPruner.from_pretrained(tmp_path / "llama").model) is transformers.LlamaForCausalLM


MINILM_PIPELINE_SCRIPT = """
import json, sys, torch
from transformers import pipeline
extractor = pipeline("feature-extraction", model=sys.argv[1], trust_remote_code=True)
features = torch.tensor(extractor(json.loads(sys.argv[2])[0]))[0]
print(json.dumps({"mean": features.mean(0).tolist(), "class": type(extractor.model).__name__}))
"""


@pytest.mark.slow
def test_real_minilm_sentence_embeddings_survive_pruning_and_load_in_a_pipeline(tmp_path):
    from optimum_hywia.data.assets import minilm_dir
    from optimum_hywia.data.text_sources import lambada_texts, wikipedia_texts

    folder = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    dense = transformers.AutoModel.from_pretrained(folder).eval()
    assert dense.config.model_type == "bert"
    sentences = [s for passage in lambada_texts(20) for s in passage.split(". ") if len(s.split()) >= 6][:48]

    def embed(model, texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    reference = embed(dense, sentences)
    similarity = {}
    for ratio in RATIOS:
        model = copy.deepcopy(dense)
        config = HyWIAConfig(
            pruning_ratio=ratio, num_calibration_samples=8, calibration_sequence_length=64, fusion_steps=4
        )
        pruner = HyWIAPruner(model, config, tokenizer=tokenizer)
        pruner.prune(wikipedia_texts(10), show_progress=False)
        assert abs(pruner.report.achieved_ratio - ratio) < 0.02
        similarity[ratio] = float((embed(model, sentences) * reference).sum(-1).mean())
        if ratio == 0.2:
            saved = pruner.save_pretrained(tmp_path / "minilm-20")
            sentence = sentences[0]
            with torch.no_grad():
                pruned_features = model(**tokenizer(sentence, return_tensors="pt")).last_hidden_state[0].mean(0)
    # measured with the default calibration (32 x 128 tokens, 16 fusion steps): 0.83 at 20%, 0.57 at 50%
    assert similarity[0.2] > 0.7 and similarity[0.5] > 0.4 and similarity[0.2] > similarity[0.5], similarity

    script = MINILM_PIPELINE_SCRIPT.replace("sys.argv[1]", repr(str(saved)))
    output = run_python(script.replace("sys.argv[2]", repr(json.dumps([sentence]))))
    result = json.loads(output.strip().splitlines()[-1])
    assert result["class"] == "HyWIABertModel"
    torch.testing.assert_close(torch.tensor(result["mean"]), pruned_features, rtol=0, atol=1e-5)
