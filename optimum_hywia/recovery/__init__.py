"""Recovery: a short fine-tuning of a pruned model on `transformers.Trainer`, with LoRA (peft, merged back so the
result is a plain model) or all weights, on the LM loss or by distillation from the dense model.

```python
model = recover(pruned_model, tokenizer, texts, RecoveryConfig(max_steps=200), output_dir="recovery-run")
model = recover(pruned_model, tokenizer, texts, RecoveryConfig(objective="distillation"), teacher=dense_model)
```

With an `output_dir`, Trainer writes a checkpoint there (`checkpoint-<step>`, `trainer_state.json` last) every
`save_steps` steps, at the end, and on Ctrl-C. Calling `recover` again with the same arguments resumes from the newest
complete one to the weights of an uninterrupted run; a fingerprint kept in the trainer state refuses a different run,
and checkpoints a killed run left incomplete are deleted.

- `configuration.py`: `RecoveryConfig` (the settings) and `RecoveryLog` (what a run did).
- `training.py`: `recover`, the distillation loss and the Trainer subclass that uses it, the callbacks.
- `checkpoints.py`: the run fingerprint, the resume point, `save_recovered_model`.
"""

from ..data.training import IGNORE_INDEX, build_examples, load_records
from ..model_card import RECOVERY_LOG_NAME
from .checkpoints import save_recovered_model
from .configuration import RecoveryConfig, RecoveryLog, default_target_modules
from .training import RecoveryTrainer, distillation_loss, recover

__all__ = [
    "IGNORE_INDEX",
    "RECOVERY_LOG_NAME",
    "RecoveryConfig",
    "RecoveryLog",
    "RecoveryTrainer",
    "build_examples",
    "default_target_modules",
    "distillation_loss",
    "load_records",
    "recover",
    "save_recovered_model",
]
