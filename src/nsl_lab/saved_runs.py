"""A finished run's folder and weights, read back safely: for ``nsl-eval`` and for
fine-tuning from a pretrained encoder (``init_from``)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nsl_lab.errors import ConfigError
from nsl_lab.files import MODEL_FILE, RESOLVED_CONFIG_FILE


def locate(path: str | Path, setting: str = "run") -> tuple[Path, Path]:
    """The run directory (holding ``config_resolved.yaml``) and the weights file of ``path``: a
    run directory, its ``model.pt``, or a checkpoint inside it (``checkpoints/<digest>/last.ckpt``).
    Errors name ``setting``, the option that gave the path."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{setting}={str(path)!r} does not exist; give a run directory, its {MODEL_FILE} or a "
                          ".ckpt", setting)
    weights = path / MODEL_FILE if path.is_dir() else path
    for folder in [weights.parent, *weights.parent.parents][:3]:
        if (folder / RESOLVED_CONFIG_FILE).is_file():
            break
    else:
        raise ConfigError(f"{setting}={str(path)!r}: no {RESOLVED_CONFIG_FILE} in it or the two folders above; "
                          "give the directory of a finished nsl-train run", setting)
    if not weights.is_file():
        kept = sorted(str(p) for p in folder.glob("checkpoints/*/last.ckpt"))
        instead = (f"give its checkpoint instead: {kept[0]}" if kept else "the run kept no weights: train it again "
                   "with checkpoint.save_model=true (or checkpoint.keep=true to keep its last.ckpt)")
        raise ConfigError(f"{setting}={str(path)!r} holds no {MODEL_FILE}; {instead}", setting)
    return folder, weights


def load_weights(path: Path, setting: str = "run") -> dict[str, torch.Tensor]:
    """The backbone's state dict from ``model.pt`` or a Lightning checkpoint (``backbone.``
    entries of its ``state_dict``), read with ``weights_only=True``: never unpickling code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a corrupt or foreign file, reported in one line
        raise ConfigError(f"{setting}={str(path)!r} cannot be read as weights ({type(error).__name__}); "
                          f"give a {MODEL_FILE} or a .ckpt written by nsl-train", setting) from None
    if isinstance(payload, dict) and "state_dict" in payload:
        prefix = "backbone."
        return {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    if not isinstance(payload, dict):
        raise ConfigError(f"{setting}={str(path)!r} holds a {type(payload).__name__}, not a state dict", setting)
    return payload


def load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], source: Path, setting: str = "run") -> None:
    """Loads ``state`` into ``backbone`` (every key, same shapes), or one line naming what
    does not fit."""
    try:
        backbone.load_state_dict(state)
    except RuntimeError as error:
        # torch's message: a header line, then one line per problem ("size mismatch for <key>: ...",
        # "Missing key(s) in state_dict: ..."); the first problem names the key.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise ConfigError(f"{setting}: the weights in {str(source)!r} do not fit this backbone ({detail.rstrip('.')}); "
                          "use the backbone settings of the run that wrote them", setting) from None


def initialise_from(backbone: nn.Module, path: str | Path, setting: str = "init_from") -> Path:
    """Starts ``backbone`` from a finished run's weights (e.g. a label-free pretraining);
    returns the weights file."""
    _, weights = locate(path, setting)
    load_backbone(backbone, load_weights(weights, setting), weights, setting)
    return weights
