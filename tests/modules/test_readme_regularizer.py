"""The README's "write your own regularizer" code, verbatim, trains inside the learner."""
from __future__ import annotations

import re

import pytorch_lightning as pl
import torch

from conftest import REPO


def readme_regularizer_code() -> str:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (code,) = [b for b in blocks if "class LogitNormPenalty(Regularizer)" in b]
    return code


def test_readme_regularizer_trains_with_exactly_that_code(data_root, cache_dir):
    namespace: dict = {}
    exec(compile(readme_regularizer_code(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    penalty = namespace["LogitNormPenalty"](multiplier=0.01)

    from nsl_lab import StructuredLearner
    from nsl_lab.datamodules import PlanetoidDataModule
    from nsl_lab.modules import FFN
    from nsl_lab.regularizers import TrainingStep

    pl.seed_everything(0)
    data = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.05)
    data.setup()
    learner = StructuredLearner(FFN(data.num_features, data.num_classes), [penalty])
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(learner, datamodule=data)
    logged = trainer.logged_metrics
    # Logged under its class name, scaled by the multiplier: 0.01 * mean squared logit norm.
    assert float(logged["train/logit_norm_loss"]) > 0
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        learner.eval()
        value = penalty.loss(TrainingStep(batch, learner(batch), learner.backbone))
    assert torch.isclose(value, learner(batch).logits.pow(2).sum(-1).mean())
