"""Image classification data: scikit-learn's 8x8 digits and CIFAR-10, in mini-batches.

Augmentation (random crop with padding, horizontal flip) and normalisation run batched on
the device in ``on_after_batch_transfer``; no torchvision.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nsl_lab.batch import Batch
from nsl_lab.context import Requirement
from nsl_lab.datamodules.generators import SeededGenerators
from nsl_lab.datamodules.label_fraction import check_label_setting, stratified_label_subset
from nsl_lab.errors import ConfigError, check_integer
from nsl_lab.modules.backbone import InputKind

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_RECORD = 1 + 3 * 32 * 32


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image, a random ``H x W`` window of the zero-padded image (one gather, no loop)."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(images.device)
    rows = offsets[0][:, None] + torch.arange(height, device=images.device)  # [B, H]
    cols = offsets[1][:, None] + torch.arange(width, device=images.device)   # [B, W]
    sample = torch.arange(batch, device=images.device)[:, None, None]
    # Advanced indexing over (sample, row, col) puts the channel dimension last.
    return padded.permute(0, 2, 3, 1)[sample, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirrors each image left-right with probability 1/2."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class _Gather:
    """Collates a list of sample ids into one :class:`Batch` by indexing the stage tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __call__(self, ids: list[int]) -> Batch:
        index = torch.as_tensor(ids, dtype=torch.long)
        return Batch(x=self.x[index], y=self.y[index], index=index)


class ImageDataModule(pl.LightningDataModule):
    """Shared mini-batch plumbing: seeded splits, ``label_frac`` on the training split, and
    on-device augmentation / normalisation.

    Pixels are floats in ``[0, 1]`` (uint8 storage is converted on the device). Training
    batches hold only the labeled training images.

    Subclasses implement ``load() -> (train_x, train_y, test_x, test_y)`` with ``x`` as
    ``[N, C, H, W]`` uint8 or float tensors.

    Args:
        data_dir: the data root.
        batch_size: training batch size (evaluation uses ``eval_batch_size``).
        eval_batch_size: batch size of validation and test.
        val_size: images held out from the training images for validation (seeded by
            ``split_seed``).
        label_frac: fraction of the training split that keeps labels (stratified, seeded by
            ``seed``); ``None`` = all.
        seed: seed of the label draw and of the shuffling.
        split_seed: seed of the train / validation split, fixed across ``seed`` so every
            seed is tested on the same images.
        crop_padding: pixels of zero padding for random crops (0 = no crop).
        flip: random horizontal flips.
        normalize: subtract ``mean``, divide by ``std`` per channel (all stages). Attacks and
            perturbations then act in normalised units; leave it off to measure epsilon in
            pixel units.
        mean, std: per-channel statistics for ``normalize``.
    """

    num_features: int
    num_classes: int
    input_kind: ClassVar[InputKind] = "images"
    preset: ClassVar[str | None] = None

    @classmethod
    def provides(cls, settings: Mapping[str, Any]) -> frozenset[Requirement]:
        """Batches of labeled images: no graph, no unlabeled rows."""
        return frozenset()

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        val_size: int = 0,
        label_frac: float | None = None,
        seed: int = 0,
        split_seed: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
        normalize: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_label_setting(label_frac, None)
        for name, value in [("batch_size", batch_size), ("eval_batch_size", eval_batch_size)]:
            check_integer(f"data.{name}", value, 1)
        check_integer("data.val_size", val_size, 0)
        check_integer("data.crop_padding", crop_padding, 0)
        check_integer("seed", seed, 0)
        if normalize and (mean is None or std is None):
            raise ConfigError("data.normalize=true needs data.mean and data.std (one value per channel)")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.eval_batch_size, self.val_size = batch_size, eval_batch_size, int(val_size)
        self.label_frac, self.seed, self.split_seed = label_frac, int(seed), int(split_seed)
        self.crop_padding, self.flip, self.normalize = int(crop_padding), bool(flip), bool(normalize)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)
        self._stages: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        # Shuffling and augmentation draw from their own generators (their states travel in checkpoints);
        # both seeded with ``seed``, as before they had names.
        self.generators = SeededGenerators({"shuffle": self.seed, "augment": self.seed})

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._stages is not None:
            return
        train_x, train_y, test_x, test_y = self.load()
        if not 0 <= self.val_size < len(train_y):
            raise ConfigError(f"data.val_size={self.val_size} must be below the {len(train_y)} training images")
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.split_seed))
        val_ids, train_ids = order[: self.val_size], order[self.val_size:]
        if self.label_frac is not None:
            train_ids = stratified_label_subset(train_y, train_ids, self.seed, self.label_frac)
        self.num_features, self.num_classes = int(train_x.shape[1]), int(max(train_y.max(), test_y.max())) + 1
        self.image_shape = tuple(train_x.shape[1:])
        self.n_labeled = int(train_ids.numel())
        self._stages = {
            "train": (train_x[train_ids], train_y[train_ids]),
            "val": (train_x[val_ids], train_y[val_ids]),
            "test": (test_x, test_y),
        }

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        x, y = self._stages[stage]
        generator = self.generators.reset()["shuffle"] if shuffle else None
        return DataLoader(range(len(y)), batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=_Gather(x, y))

    def state_dict(self) -> dict[str, Any]:
        return {"generators": self.generators.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generators.load_state_dict(state["generators"])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def transform(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 -> [0, 1] floats, then (training only) crop and flip, then normalisation."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if train:
            x = random_crop(x, self.crop_padding, self.generators.generators["augment"])
            if self.flip:
                x = random_flip(x, self.generators.generators["augment"])
        if self.normalize:
            x = (x - self.mean.to(x)[:, None, None]) / self.std.to(x)[:, None, None]
        return x

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        training = self.trainer is not None and self.trainer.training
        return Batch(self.transform(batch.x, training), batch.y, batch.index)

    def __repr__(self) -> str:
        setting = "all labels" if self.label_frac is None else f"label_frac={self.label_frac}"
        return f"{self.__class__.__name__}({setting}, seed={self.seed}, batch_size={self.batch_size})"


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download).

    Pixel values 0..16 are scaled to ``[0, 1]``; images are ``[1, 8, 8]``. A seeded split
    (``split_seed``) holds out ``test_size`` images for test and ``val_size`` for validation.

    Args:
        test_size: images in the test split.
        **kwargs: see :class:`ImageDataModule` (``data_dir`` is unused).
    """

    preset = "digits_cnn"

    def __init__(self, test_size: int = 360, val_size: int = 180, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)
        check_integer("data.test_size", test_size, 1)
        self.test_size = int(test_size)

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, rest, test = load_digits_split(self.test_size, self.split_seed, self.val_size)
        return x[rest], y[rest], x[test], y[test]


def load_digits_split(test_size: int, split_seed: int, min_rest: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [1797, 1, 8, 8] in [0, 1], y [1797], rest ids, test ids)``: scikit-learn's digits
    and their seeded test draw, the same images for every datamodule that reads digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    if test_size + min_rest >= len(y):
        raise ConfigError(f"data.test_size={test_size} (+ {min_rest} validation images) leaves no training images "
                          f"of the {len(y)}; allowed: test_size + val_size < {len(y)}")
    # Test images come from their own seeded draw; validation is drawn from the rest later.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed + 1))
    return x, y, order[test_size:], order[:test_size]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches and nothing else: only the numpy array
    reconstruction the official files reference may be loaded."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell byte strings
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch references {module}.{name}, which a CIFAR file never does")


def read_cifar10_python_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, 32, 32], labels [N])`` from a file of the python version."""
    with open(path, "rb") as handle:
        entry = _CifarUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(data.copy()), torch.tensor(list(entry[b"labels"]), dtype=torch.long)


def read_cifar10_binary_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, 32, 32], labels [N])`` from a file of the binary version
    (records of one label byte and 3072 pixel bytes, channel-major)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % CIFAR10_RECORD:
        raise ConfigError(f"{path} is not a CIFAR-10 binary batch: {raw.size} bytes is not a multiple of "
                          f"{CIFAR10_RECORD}")
    records = raw.reshape(-1, CIFAR10_RECORD)
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(records[:, 0].astype(np.int64))


class Cifar10DataModule(ImageDataModule):
    """CIFAR-10 from the official release under the data root, no download.

    Reads ``<data_dir>/cifar10/cifar-10-batches-bin/`` (binary version: ``data_batch_1.bin``
    .. ``data_batch_5.bin``, ``test_batch.bin``) or ``<data_dir>/cifar10/cifar-10-batches-py/``
    (the python version torchvision reads: ``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``); the folders may also sit directly in the data root. Standard training
    augmentation by default: 4-pixel padded random crops, horizontal flips, per-channel
    normalisation.

    Args:
        **kwargs: see :class:`ImageDataModule`.
    """

    def __init__(self, val_size: int = 5000, crop_padding: int = 4, flip: bool = True, normalize: bool = True,
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD,
                 **kwargs) -> None:
        super().__init__(val_size=val_size, crop_padding=crop_padding, flip=flip, normalize=normalize,
                         mean=mean, std=std, **kwargs)

    def _candidates(self) -> list[Path]:
        return [self.data_dir / "cifar10", self.data_dir]

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        for root in self._candidates():
            binary, python = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
            if all((binary / f"{name}.bin").is_file() for name in [*CIFAR10_TRAIN_FILES, "test_batch"]):
                read, files = read_cifar10_binary_batch, [binary / f"{n}.bin" for n in CIFAR10_TRAIN_FILES]
                test_file = binary / "test_batch.bin"
                break
            if all((python / name).is_file() for name in [*CIFAR10_TRAIN_FILES, "test_batch"]):
                read, files, test_file = read_cifar10_python_batch, [python / n for n in CIFAR10_TRAIN_FILES], \
                    python / "test_batch"
                break
        else:
            raise ConfigError(
                f"CIFAR-10 not found: put the official cifar-10-batches-py/ or cifar-10-batches-bin/ folder in "
                f"{self.data_dir / 'cifar10'} (set the data root with paths.data_dir=... or NSL_LAB_DATA)"
            )
        parts = [read(f) for f in files]
        test_x, test_y = read(test_file)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), test_x, test_y
