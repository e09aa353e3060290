"""Train and test one model; see conf/train.yaml.

    python scripts/train.py regularizer=graph data.label_frac=0.01
    python scripts/train.py -m regularizer=none,graph seed=0,1,2
    python scripts/train.py -m experiment=cora_label_frac hydra/launcher=joblib
"""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nsl_lab import sweep
from nsl_lab.run import find_config_error, train

log = logging.getLogger("nsl_lab.train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    sweep.start_job()
    output_dir = HydraConfig.get().runtime.output_dir
    multirun = sweep.in_multirun()
    sweep.default_threads(cfg)
    sweep.ddp_inside_multirun(cfg)
    if multirun and (done := sweep.finished_metrics(cfg, output_dir)) is not None:
        log.info("already finished in %s: skipped", output_dir)
        return done.get("test/acc", float("nan"))
    sweep.one_gpu_per_job(cfg)
    try:
        metrics = train(cfg, output_dir)
    except Exception as error:
        config_error = find_config_error(error)
        message = f"nsl_lab: error: {config_error}" if config_error is not None else None
        sweep.write_failure(output_dir, error, message)
        if multirun:
            # One bad job must not stop the sweep: the report lists it from failed.json.
            log.error("job failed (%s): %s", output_dir, message or repr(error))
            return float("nan")
        if config_error is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(2)
    sweep.clear_failure(output_dir)
    sweep.drop_checkpoints(cfg, output_dir)
    return metrics.get("test/acc", float("nan"))


if __name__ == "__main__":
    main()
