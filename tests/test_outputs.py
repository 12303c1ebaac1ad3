"""Saved checkpoints work everywhere, in a fresh process without optimum_hywia: a transformers pipeline,
AutoModelForCausalLM, accelerate's device_map="auto", and lm-evaluation-harness' `hf` model."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import VOCAB, make_tiny_model, run_python
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia import HyWIAConfig, HyWIAPruner

WORDS = [f"w{i}" for i in range(VOCAB - 4)]

CHECK = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

folder, remote = {folder!r}, {remote}
assert "optimum_hywia" not in sys.modules
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer("w5 w9 w13 w17 w21", return_tensors="pt").input_ids

plain = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
with torch.no_grad():
    logits = plain(ids).logits
    greedy = plain.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)

# accelerate: big-model loading with a device map
mapped = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote, device_map="auto").eval()
with torch.no_grad():
    mapped_logits = mapped(ids.to(mapped.device)).logits.cpu()

# transformers pipeline
generator = pipeline("text-generation", model=folder, trust_remote_code=remote)
text = generator("w5 w9 w13 w17 w21", max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]

# lm-evaluation-harness' hf model, loaded from the folder by lm-eval itself
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

lm = get_model("hf").create_from_arg_string(
    f"pretrained={{folder}},trust_remote_code={{remote}},batch_size=1,device=cpu,max_length=64"
)
request = Instance("loglikelihood", doc={{}}, arguments=("w5 w9 w13", " w17"), idx=0)
[(loglikelihood, _)] = lm.loglikelihood([request])
context = tokenizer("w5 w9 w13", add_special_tokens=False).input_ids
target = tokenizer(" w17", add_special_tokens=False).input_ids
with torch.no_grad():
    scores = plain(torch.tensor([context + target])).logits.log_softmax(-1)[0, len(context) - 1 : -1]
expected = sum(scores[i, t].item() for i, t in enumerate(target))

print(json.dumps({{
    "class": type(plain).__name__,
    "mapped_equal": bool(torch.allclose(mapped_logits, logits, atol=1e-5)),
    "device_map": {{k: str(v) for k, v in (getattr(mapped, "hf_device_map", None) or {{}}).items()}},
    "pipeline_equal": text.split() == tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True).split(),
    "generated": text,
    "lm_eval": loglikelihood,
    "expected": expected,
    "params": sum(p.numel() for p in plain.parameters()),
}}))
"""


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>"
    )


@pytest.mark.parametrize(
    "name, layout", [("llama-gqa", "uniform"), ("llama-gqa", "per_layer"), ("llama-mha", "per_layer")]
)
def test_saved_checkpoint_loads_everywhere_in_a_fresh_process(tmp_path, name, layout):
    pruner = HyWIAPruner(
        make_tiny_model(name), HyWIAConfig(pruning_ratio=0.3, layout=layout, importance="l2"), word_tokenizer()
    )
    pruner.prune(show_progress=False)
    folder = pruner.save_pretrained(tmp_path / f"{name}-{layout}")
    remote = not pruner.report.vanilla_config
    assert remote == (layout == "per_layer")  # the tiny per-layer widths cannot be a vanilla config

    result = json.loads(run_python(textwrap.dedent(CHECK.format(folder=str(folder), remote=remote))).splitlines()[-1])
    assert result["params"] == pruner.report.params_after
    assert result["class"].startswith("HyWIA") == remote
    assert result["mapped_equal"] and set(result["device_map"].values()) <= {"cpu", "0", "cuda:0"}
    assert result["pipeline_equal"] and len(result["generated"].split()) >= 1
    assert result["lm_eval"] == pytest.approx(result["expected"], abs=1e-3)
