"""Image classification with VOS: the special case of detection where the whole image is the box.

* :class:`VOSImageClassifier` (registered in detectron2's META_ARCH_REGISTRY): backbone ->
  ROIPooler on the box [0, 0, W, H] of each image -> box head -> projection
  (``MODEL.VOS_CLASSIFIER.PROJECTION_DIM``) -> K-way classifier with the VOS queues,
  outlier synthesis, weighted energy and uncertainty loss of the detector (``MODEL.VOS``).
* Data: ImageFolder trees (:func:`register_image_folder`, or ``DATASETS.IMAGE_FOLDERS`` in a
  config) and the built-in digits-cls (``digits_cls_{train,val,test,ood}``, ID digits 0-4,
  OOD digits 5-9, generated on first use), mapped by :class:`ClassificationDatasetMapper`.
* :class:`ClassificationTrainer`: training, accuracy, and FPR95 / AUROC / AUPR per OOD score.

    python tools/train_net.py --config digits_vos_classifier.yaml
"""
from ..config import add_classification_config
from . import builtin as _builtin  # registers digits-cls
from .digits_cls import generate_digits_cls
from .evaluation import ClassificationOODEvaluator
from .head import VOSClassificationHead
from .image_folder import load_image_folder, register_image_folder, register_image_folders_from_config
from .mapper import ClassificationDatasetMapper
from .meta_arch import VOSImageClassifier, is_image_classifier, whole_image_boxes
from .trainer import ClassificationTrainer

__all__ = [
    "ClassificationDatasetMapper",
    "ClassificationOODEvaluator",
    "ClassificationTrainer",
    "VOSClassificationHead",
    "VOSImageClassifier",
    "add_classification_config",
    "generate_digits_cls",
    "is_image_classifier",
    "load_image_folder",
    "register_image_folder",
    "register_image_folders_from_config",
    "whole_image_boxes",
]
