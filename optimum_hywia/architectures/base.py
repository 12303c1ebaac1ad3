"""The declarative mapping table that tells the shared engine where a family's prunable groups live."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

UnitSpace = Literal["q_heads", "kv_heads", "channels"]
Layout = Literal["concat", "per_group"]
# per-layer quantities a per-layer config key can hold (see `ArchitectureSpec.layer_config`)
Quantity = Literal["num_heads", "num_kv_heads", "heads_per_kv", "attention_width", "kv_width", "intermediate_size"]
# how a tensor passed to an attention module carries one slice per head (see `Alibi`)
HeadLayout = Literal["batch_heads", "heads"]


@dataclass(frozen=True)
class Projection:
    """One weight matrix touched by a group kind.

    Args:
        path: module path relative to a decoder layer, e.g. `"self_attn.q_proj"`.
        dim: `"out"` when the group owns output features (q/k/v, gate/up), `"in"` when it owns input features (o, down).
        units: what the sliced dimension is made of: one unit space (`"q_heads"`, `"kv_heads"`: `head_dim` features
            per unit, `"channels"`: one), or, for a fused matrix, the tuple of its segments in order, e.g.
            `("q_heads", "kv_heads", "kv_heads")` for a fused QKV or `("channels", "channels")` for a fused gate/up.
        layout: how fused segments are arranged. `"concat"`: segment after segment (`[q | k | v]`, Phi-3, GPT-2,
            Baichuan's `W_pack`). `"per_group"`: group after group, each group's slice of every segment together
            (`[n_groups, q_per_group + 2, head_dim]`: GPT-NeoX, Bloom, Falcon).

    Linear and `Conv1D` (GPT-2, weight stored `[in, out]`) modules are both accepted; the engine reads the weight
    orientation from the module type.
    """

    path: str
    dim: Literal["out", "in"]
    units: UnitSpace | tuple[UnitSpace, ...]
    layout: Layout = "concat"

    @property
    def segments(self) -> tuple[UnitSpace, ...]:
        return self.units if isinstance(self.units, tuple) else (self.units,)


@dataclass(frozen=True)
class Alibi:
    """Where a family's attention receives per-head ALiBi tensors built by the model for its original head count.

    Args:
        path: the attention module, relative to a decoder layer, e.g. `"self_attention"`.
        inputs: (keyword argument, layout) of every tensor the model passes to that module with one slice per head.
            `"batch_heads"`: heads folded into the batch axis, `[batch * heads, ...]`, or next to it in a 4-d
            `[batch, heads, query, key]` (BLOOM's and Falcon's `alibi`);
            `"heads"`: heads on the third axis from the end, `[..., heads, query, key]` (Baichuan-13B's
            `attention_mask`, which is the ALiBi bias plus the causal mask; Falcon's 4-d mask with ALiBi folded in).

    The pruned model still builds the tensors for the original head count (the config keeps it); the modeling
    override hands each attention the slices of its kept heads, so every head keeps the slope of its original index.
    """

    path: str
    inputs: tuple[tuple[str, HeadLayout], ...] = (("alibi", "batch_heads"),)


@dataclass(frozen=True)
class Variant:
    """A config-dependent change to a family's table (Falcon's fused-QKV layouts, ALiBi checkpoints).

    Args:
        when: the condition, for docs/architectures.md, e.g. "`alibi=True` (Falcon-RW)".
        applies: the same condition as a test on the model config.
        changes: `ArchitectureSpec` fields replaced when it applies. Every applying variant is applied, in order.
    """

    when: str
    applies: Callable[[Any], bool] = field(compare=False, repr=False)
    changes: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ConfigKeys:
    """Names of the config attributes the surgery reads and rewrites.

    A key set to `None` does not exist in the family's config: `head_dim=None` means the modeling code derives the
    head size from `hidden_size // num_heads`, so a vanilla config cannot describe pruned heads;
    `intermediate_size=None` means the MLP width is hard-coded (Bloom: `4 * hidden_size`).
    """

    num_layers: str = "num_hidden_layers"
    hidden_size: str = "hidden_size"
    num_heads: str = "num_attention_heads"
    num_kv_heads: str | None = "num_key_value_heads"
    head_dim: str | None = "head_dim"
    intermediate_size: str | None = "intermediate_size"


@dataclass(frozen=True)
class ArchitectureSpec:
    """Mapping table of one model family.

    Args:
        name: family name used in docs and errors.
        model_types: `config.model_type` values the table applies to.
        layers: path from the model to the list of decoder layers.
        attention: projections of one attention (KV-head) group.
        mlp: projections of one MLP channel.
        config_keys: config attributes holding the widths.
        text_config: attribute of the model config holding the widths, for multimodal configs (Gemma 3:
            `"text_config"`); `None`: the config itself.
        hidden_divisible_by_heads: the vanilla config rejects a `hidden_size` that is not a multiple of the head
            count, so uniform checkpoints must choose head counts that divide it.
        vanilla_loadable: whether a pruned checkpoint can ever be a vanilla config of the family (Bloom: no, its
            ALiBi slopes follow the head count and its MLP width is hard-coded).
        shared_kv: multi-query attention: one KV head read by every query head. The groups are then the query heads
            (with their `o` columns); the KV rows are shared and never removed. Set automatically when the config
            has a single KV head.
        residual_attributes, attention_width_attributes: for a family whose head size is `hidden_size // heads`,
            the attention-module attributes (`"<path relative to the layer>.<attribute>"`) that hold `hidden_size`
            in an unpruned model: whether each stays the residual width or follows the pruned heads. Every other
            cached width is derived from the module's own class (`optimum_hywia.cached_widths`).
        layer_config: modules whose forward reads widths from `self.config`, as (path relative to the layer,
            config key, quantity); each such module gets its own config copy with its layer's widths.
        alibi: the attention module that receives the model's ALiBi bias and how (`Alibi`): pruned heads keep the
            slope of their original index.
        remote_code: the family is not in transformers; checkpoints bring their own modeling file.
        auto_class: the transformers Auto class that loads the family's checkpoints (`HyWIAPruner.from_pretrained`):
            `"AutoModelForCausalLM"` for decoders, `"AutoModel"` for encoders.
        variants: config-dependent changes to this table (`Variant`), applied in order by `for_config`.
        bias_switches: (group kind, config key) pairs of boolean config keys that give every projection of that kind a
            bias (Llama's `("mlp", "mlp_bias")`); compensation switches one on to carry a refit bias where the
            input-sliced projection has none, and the checkpoint still loads with the family's class.
        residual_points: (group kind, module path relative to the layer) pairs: the module whose input is the residual
            stream right after that kind's input-sliced projection has added into it (Llama: attention
            `"post_attention_layernorm"`, MLP `""`, the layer's own output). That sum is linear in the projection, so
            least-squares compensation can pull it back toward the dense model's (`HyWIAConfig.reconstruction_drift`);
            a kind without a pair (post-norm families such as Gemma 2, whose projection output is normalised before
            the sum) is refit toward its own output only.
        notes: per-family quirks, for docs/architectures.md.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: tuple[Projection, ...]
    mlp: tuple[Projection, ...]
    config_keys: ConfigKeys = field(default_factory=ConfigKeys)
    text_config: str | None = None
    hidden_divisible_by_heads: bool = True
    vanilla_loadable: bool = True
    shared_kv: bool = False
    residual_attributes: tuple[str, ...] = ()
    attention_width_attributes: tuple[str, ...] = ()
    layer_config: tuple[tuple[str, str, Quantity], ...] = ()
    alibi: Alibi | None = None
    remote_code: bool = False
    auto_class: str = "AutoModelForCausalLM"
    variants: tuple[Variant, ...] = field(default=(), compare=False, repr=False)
    bias_switches: tuple[tuple[str, str], ...] = ()
    residual_points: tuple[tuple[str, str], ...] = ()
    notes: str = ""

    def projections(self, kind: str) -> tuple[Projection, ...]:
        return {"attention": self.attention, "mlp": self.mlp}[kind]

    def widths_config(self, config: Any) -> Any:
        """The (sub-)config that holds the widths."""
        return getattr(config, self.text_config) if self.text_config else config

    def for_config(self, config: Any) -> ArchitectureSpec:
        """The table for one model: the config-dependent variant, multi-query attention detected."""
        spec = self
        if self.variants:
            for variant in self.variants:
                if variant.applies(config):
                    spec = replace(spec, **variant.changes)
            spec = replace(spec, variants=())
        widths = spec.widths_config(config)
        keys = spec.config_keys
        if not spec.shared_kv and keys.num_kv_heads:
            kv_heads = getattr(widths, keys.num_kv_heads, None)
            if kv_heads == 1 and getattr(widths, keys.num_heads) > 1:
                spec = replace(spec, shared_kv=True)
        return spec

    @property
    def fused(self) -> list[str]:
        """Fused projections, described for the docs."""
        described = []
        for projection in (*self.attention, *self.mlp):
            if len(projection.segments) > 1:
                parts = "; ".join({"q_heads": "q", "kv_heads": "kv", "channels": "ch"}[s] for s in projection.segments)
                shape = f"[{parts}]" if projection.layout == "concat" else f"per group [{parts}]"
                described.append(f"`{projection.path}` {shape}")
        return described
