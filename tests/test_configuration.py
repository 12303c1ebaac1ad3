"""HyWIAConfig: defaults, validation with clear errors, and the hywia_config.json round trip."""

from __future__ import annotations

import json

import pytest

from optimum_hywia import HyWIAConfig
from optimum_hywia.configuration import CONFIG_NAME


def test_round_trip_through_hywia_config_json(tmp_path):
    config = HyWIAConfig(
        pruning_ratio=0.5,
        importance="element2",
        layout="per_layer",
        layer_range=(2, 7),
        group_kinds=["mlp"],
        fusion_temperature=[2.0, 0.1],
    )
    path = config.save_pretrained(tmp_path)
    assert path.name == CONFIG_NAME
    loaded = HyWIAConfig.from_pretrained(tmp_path)
    assert loaded == config
    assert loaded.layer_range == (2, 7) and loaded.group_kinds == ("mlp",)
    assert json.loads(path.read_text())["pruning_ratio"] == 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pruning_ratio=0.0), r"pruning_ratio must be in \(0, 1\)"),
        (dict(pruning_ratio=1.0), r"pruning_ratio must be in \(0, 1\)"),
        (dict(pruning_ratio="0.5"), "pruning_ratio must be a number"),
        (dict(pruning_steps=0), "pruning_steps must be >= 1"),
        (dict(pruning_steps=1.5), "pruning_steps must be an integer"),
        (dict(importance="taylor"), "importance must be one of"),
        (dict(fine_estimators=("vector",)), "fine_estimators must be a non-empty subset"),
        (dict(fine_estimators=()), "fine_estimators must be a non-empty subset"),
        (dict(fine_estimators=("element1", "element1")), "duplicates"),
        (dict(layout="global"), "layout must be one of"),
        (dict(group_kinds=()), "group_kinds must be a non-empty subset"),
        (dict(group_kinds=("heads",)), "group_kinds must be a non-empty subset"),
        (dict(group_kinds=("mlp", "mlp")), "duplicates"),
        (dict(num_calibration_samples=0), "num_calibration_samples must be >= 1"),
        (dict(calibration_batch_size=2.5), "calibration_batch_size must be an integer"),
        (dict(round_to=0), "round_to must be >= 1"),
        (dict(head_round_to=0), "head_round_to must be >= 1"),
        (dict(head_round_to=2.0), "head_round_to must be an integer"),
        (dict(fusion_steps=-1), "fusion_steps must be >= 0"),
        (dict(fusion_learning_rate=0), "fusion_learning_rate must be > 0"),
        (dict(fusion_temperature=(1.0,)), "fusion_temperature must be two positive numbers"),
        (dict(layer_range=(5, 2)), "layer_range must satisfy"),
        (dict(layer_range=(0, 2, 3)), "layer_range must be two integers"),
        (dict(seed=True), "seed must be an integer"),
        (dict(reconstruction_reselect_damping=-0.1), "reconstruction_reselect_damping must be >= 0"),
        (dict(reconstruction_reselect_damping=float("inf")), "or None for the plain squared error"),
    ],
)
def test_invalid_fields_get_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HyWIAConfig(**kwargs)


def test_unknown_keys_and_bad_json_are_refused(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"pruning_ratio": 0.3, "prune_heads": True}))
    with pytest.raises(ValueError, match=r"Unknown HyWIAConfig keys \['prune_heads'\]"):
        HyWIAConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HyWIAConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"pruning_ratio": 3}))
    with pytest.raises(ValueError, match="pruning_ratio must be in"):
        HyWIAConfig.from_pretrained(tmp_path)


def test_fine_estimators_accept_a_name_and_older_files_with_one_fine_estimator():
    assert HyWIAConfig().fine_estimators == ("element1", "element2")
    assert HyWIAConfig(fine_estimators="element2").fine_estimators == ("element2",)
    legacy = {**HyWIAConfig().to_dict(), "fine_estimator": "element1"}
    del legacy["fine_estimators"]
    assert HyWIAConfig.from_dict(legacy).fine_estimators == ("element1",)


def test_default_layer_range_is_every_layer_in_both_layouts():
    assert HyWIAConfig(layout="uniform").resolve_layer_range(30) == (0, 30)
    assert HyWIAConfig(layout="per_layer").resolve_layer_range(30) == (0, 30)  # the global ranking decides
    assert HyWIAConfig(layout="per_layer", layer_range=(3, 28)).resolve_layer_range(30) == (3, 28)
    with pytest.raises(ValueError, match="goes past the model's 30 decoder layers"):
        HyWIAConfig(layer_range=(0, 40)).resolve_layer_range(30)
