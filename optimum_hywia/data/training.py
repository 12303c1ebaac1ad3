"""Training examples of recovery (`optimum_hywia.recovery`): text packed into windows, instruction and chat records
with the loss on the responses only, and the padding collator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .inputs import normalize_inputs, record_text

DATA_FORMATS = ("auto", "text", "instruction")
IGNORE_INDEX = -100  # labels without loss (prompts, padding), as transformers' losses expect
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


Example = tuple[torch.Tensor, torch.Tensor]  # input_ids, labels (IGNORE_INDEX where no loss)


def build_examples(data: Any, tokenizer: Any, config: Any) -> tuple[list[Example], str]:
    """Training examples `(input_ids, labels)` and the data format used (`"text"` or `"instruction"`), for a
    `RecoveryConfig` (its `data_format` and `sequence_length`)."""
    records = load_records(data)
    if all(isinstance(record, torch.Tensor) for record in records):
        if config.data_format == "instruction":
            raise ValueError("data_format='instruction' needs records with prompts and responses, not token ids.")
        return _pack(records, config.sequence_length), "text"
    if tokenizer is None:
        raise ValueError("Text recovery data needs a tokenizer: pass tokenizer= (or token ids instead of text).")
    data_format = config.data_format
    if data_format == "auto":
        data_format = "instruction" if _instruction_kind(records[0]) else "text"
    if data_format == "text":
        texts = [record_text(record, "text-format recovery") for record in records]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        stream = torch.tensor([token for ids in encoded for token in [*ids, *eos]], dtype=torch.long)
        return _pack([stream], config.sequence_length), "text"
    examples = [_instruction_example(record, tokenizer, config.sequence_length) for record in records]
    examples = [example for example in examples if (example[1] != IGNORE_INDEX).any()]
    if not examples:
        raise ValueError(
            f"No instruction example keeps a response within sequence_length={config.sequence_length} tokens: "
            "raise sequence_length."
        )
    return examples, "instruction"


def load_records(data: Any) -> list[Any] | list[torch.Tensor]:
    """Strings or dicts (records), or 1-D token-id tensors, from any data `recover` accepts (the shared
    `optimum_hywia.data.inputs.normalize_inputs`; a dataset with instruction fields gives its rows as records)."""
    return normalize_inputs(data, "recovery data", records=True, is_record=_instruction_kind)


def _instruction_kind(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return None
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and ("completion" in record or "response" in record):
        return "prompt"
    return None


def _instruction_example(record: Any, tokenizer: Any, sequence_length: int) -> Example:
    """Prompt and response token ids, with the loss on the response (and its EOS) only. Conversations and Alpaca
    records are rendered by the tokenizer's chat template when it has one."""
    kind = _instruction_kind(record)
    if kind == "messages":
        messages = list(record["messages"])
        if not messages or not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "assistant":
            raise ValueError("Each 'messages' record must end with an assistant message (the response to learn).")
        prompt_messages, response = messages[:-1], messages[-1]["content"]
    elif kind == "alpaca":
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        prompt_messages, response = [{"role": "user", "content": user}], record["output"]
    elif kind == "prompt":
        prompt, response = record["prompt"], record.get("completion", record.get("response"))
        prompt_messages = None
    else:
        raise ValueError(
            f"An instruction-format recovery record needs 'messages', 'instruction' + 'output', or 'prompt' + "
            f"'completion'/'response' fields, got {_describe(record)}."
        )
    if prompt_messages is not None:
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
        elif kind == "alpaca":
            template = ALPACA_PROMPT_WITH_INPUT if record.get("input") else ALPACA_PROMPT
            prompt = template.format(instruction=record["instruction"], input=record.get("input", ""))
        else:
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in prompt_messages) + "assistant: "
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"Instruction prompts and responses must be strings, got {_describe(record)}.")
    prompt_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False, verbose=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not response_ids or response_ids[-1] != tokenizer.eos_token_id):
        response_ids = [*response_ids, tokenizer.eos_token_id]
    input_ids = torch.tensor([*prompt_ids, *response_ids], dtype=torch.long)[:sequence_length]
    labels = torch.tensor([IGNORE_INDEX] * len(prompt_ids) + response_ids, dtype=torch.long)[:sequence_length]
    return input_ids, labels


def _pack(streams: list[torch.Tensor], sequence_length: int) -> list[Example]:
    """Consecutive `sequence_length` windows of each stream; a stream shorter than one window is used whole."""
    length = sequence_length
    windows = [s.unfold(0, length, length) if len(s) >= length else s[None] for s in streams]  # remainders dropped
    examples = [(window, window) for rows in windows for window in rows if len(window) >= 2]
    if not examples:
        raise ValueError("The recovery data yields no sequence of at least 2 tokens: pass more text or token ids.")
    return examples


@dataclass
class Collator:
    """Right-pads a batch: `pad_id` in the inputs, `IGNORE_INDEX` in the labels, zeros in the attention mask."""

    pad_id: int

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pad = torch.nn.utils.rnn.pad_sequence
        ids, labels = [f["input_ids"] for f in features], [f["labels"] for f in features]
        mask = [torch.ones_like(i) for i in ids]
        return {
            "input_ids": pad(ids, batch_first=True, padding_value=self.pad_id),
            "labels": pad(labels, batch_first=True, padding_value=IGNORE_INDEX),
            "attention_mask": pad(mask, batch_first=True, padding_value=0),
        }


def _describe(record: Any) -> str:
    return f"a record with fields {sorted(record)}" if isinstance(record, Mapping) else f"a {type(record).__name__}"
