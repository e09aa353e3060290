"""Catches a dataset, backbone and regularizers that cannot work together, before any data
is loaded: each side declares what it gives or needs, and a mismatch names the preset to use."""
from __future__ import annotations

from typing import Any, Mapping

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from nsl_lab.context import Requirement
from nsl_lab.errors import ConfigError

#: what each requirement means, and how to get it
REQUIREMENTS: dict[Requirement, tuple[str, str]] = {
    "graph": ("a sample graph", "set data.graph (e.g. data.graph.kind=knn)"),
    "batch_graph": ("the whole graph in every training batch (full-graph data such as data=cora)",
                    "use a regularizer for mini-batches (e.g. regularizer=graph_nsl)"),
    "neighbors": ("each training sample's graph neighbours in its batch",
                  "set data.neighbors=<k> to pack k neighbours into every batch"),
    "unlabeled_in_batch": ("unlabeled samples in the training batches", "set data.include_unlabeled=true"),
}


def group_choice(group: str, fallback: str) -> str:
    """The option chosen for a config group (``data=imdb``), when Hydra is running."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return f"{group} ({fallback})"


def _target_class(node: DictConfig | None) -> Any:
    if node is None or "_target_" not in node:
        return None
    try:
        return get_class(str(node._target_))
    except Exception:  # noqa: BLE001 - a bad _target_ is reported when it is instantiated
        return None


def check_compatibility(cfg: DictConfig, regularizers: Mapping[str, Any]) -> None:
    """Raises one :class:`ConfigError` line when ``cfg.data``, ``cfg.backbone`` and
    ``regularizers`` do not fit together."""
    data_class, backbone_class = _target_class(cfg.get("data")), _target_class(cfg.get("backbone"))
    if data_class is None or not hasattr(data_class, "provides"):
        return
    data = group_choice("data", data_class.__name__)
    preset = getattr(data_class, "preset", None)
    hint = f"; or use experiment={preset}" if preset else ""
    kind = getattr(data_class, "input_kind", None)
    accepts = getattr(backbone_class, "accepts", None)
    if kind is not None and accepts is not None and kind not in accepts:
        raise ConfigError(f"{group_choice('backbone', backbone_class.__name__)} takes {' or '.join(accepts)}, but "
                          f"{data} gives {kind}; choose a backbone for {kind}{hint}", "backbone")
    settings = OmegaConf.to_container(cfg.data, resolve=True)
    provided = data_class.provides(settings)
    for name, regularizer in regularizers.items():
        kinds = getattr(regularizer, "input_kinds", None)
        if kind is not None and kinds is not None and kind not in kinds:
            raise ConfigError(f"regularizer.{name} ({type(regularizer).__name__}) works on {' or '.join(sorted(kinds))}, "
                              f"but {data} gives {kind}", f"regularizer.{name}")
        missing = regularizer.requirements - provided
        if "neighbors" in missing and "graph" not in provided:  # no graph at all: that is what to fix first
            missing = (missing - {"neighbors"}) | {"graph"}
        for requirement in sorted(missing):
            needs, fix = REQUIREMENTS[requirement]
            raise ConfigError(f"regularizer.{name} ({type(regularizer).__name__}) needs {needs}, which {data} "
                              f"does not give with these settings; {fix}{hint}", f"regularizer.{name}")
