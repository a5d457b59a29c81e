"""Dataset mapper of the classifier: read the image, resize it to a fixed size, keep its class."""
import copy

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import transforms as T

from ..data.image_io import read_image_file

__all__ = ["ClassificationDatasetMapper"]


class ClassificationDatasetMapper:
    """Map a classification dataset dict to the model's input.

    Input: ``{"file_name", "image_id", "height", "width", "class_id"}`` (see
    :mod:`vos_det.classification.image_folder`). Output: the same keys plus ``"image"``, a
    (3, H, W) uint8 tensor in ``image_format`` channel order, resized to ``image_size``;
    ``height`` / ``width`` stay those of the file. Grayscale, palette, RGBA and 16-bit files
    are converted; a file that cannot be read raises a ValueError naming it.
    """

    @configurable
    def __init__(self, is_train: bool, *, image_size, image_format: str = "BGR", crop_padding: int = 0):
        """
        Args:
            is_train: apply the training augmentation (random crop of the padded image).
            image_size (tuple[int, int]): (height, width) of every output image.
            image_format: "BGR" or "RGB", the channel order the model expects.
            crop_padding: in training, pad each side by this many pixels (edge replication)
                and crop ``image_size`` at a random position; 0 = no augmentation.
        """
        height, width = (int(v) for v in image_size)
        if height <= 0 or width <= 0:
            raise ValueError(
                f"INPUT.CLASSIFICATION.IMAGE_SIZE must be positive, got {tuple(image_size)}"
            )
        if crop_padding < 0:
            raise ValueError(
                f"INPUT.CLASSIFICATION.RANDOM_CROP_PADDING must be >= 0, got {crop_padding}"
            )
        self.is_train = is_train
        self.image_size = (height, width)
        self.image_format = image_format
        self.crop_padding = crop_padding if is_train else 0
        self.augmentations = T.AugmentationList([T.Resize(self.image_size)])

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "image_size": cfg.INPUT.CLASSIFICATION.IMAGE_SIZE,
            "image_format": cfg.INPUT.FORMAT,
            "crop_padding": cfg.INPUT.CLASSIFICATION.RANDOM_CROP_PADDING,
        }

    def _random_crop(self, image: np.ndarray) -> np.ndarray:
        pad = self.crop_padding
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        top, left = np.random.randint(0, 2 * pad + 1, size=2)
        height, width = self.image_size
        return padded[top : top + height, left : left + width]

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image's dataset dict.

        Returns:
            dict: the model input, with ``image`` and ``class_id``.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_file(dataset_dict["file_name"], format=self.image_format)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = aug_input.image
        if self.crop_padding:
            image = self._random_crop(image)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return dataset_dict
