"""Configuration keys of the image-classification special case of vos_det."""
from detectron2.config import CfgNode as CN

__all__ = ["add_classification_config"]


def add_classification_config(cfg):
    """Add the keys of the VOS image classifier to a detectron2 config.

    The classifier (:class:`vos_det.classification.VOSImageClassifier`) treats the whole image
    as one box: it reuses the backbone keys (``MODEL.BACKBONE``, ``MODEL.FPN``,
    ``MODEL.TINY_NET``), the box pooler and box head keys (``MODEL.ROI_BOX_HEAD``) and every
    VOS key (``MODEL.VOS``) of the detector. Its own keys are under
    ``cfg.MODEL.VOS_CLASSIFIER``; the fixed input size under ``cfg.INPUT.CLASSIFICATION``;
    the evaluation batch size under ``cfg.TEST.CLASSIFICATION``; ImageFolder datasets named
    in the config under ``cfg.DATASETS.IMAGE_FOLDERS``.

    Expects :func:`vos_det.add_vos_config` to have run (or to call this function itself).
    Adding the keys twice leaves the config unchanged.
    """
    if "VOS_CLASSIFIER" in cfg.MODEL:
        return
    cfg.MODEL.VOS_CLASSIFIER = CN()
    # K, the number of in-distribution classes (no background class).
    cfg.MODEL.VOS_CLASSIFIER.NUM_CLASSES = 10
    # Backbone outputs the whole-image box is pooled from (by detectron2's ROIPooler, with
    # MODEL.ROI_BOX_HEAD.POOLER_*; with several FPN levels the box's size picks the level).
    cfg.MODEL.VOS_CLASSIFIER.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # Output dimension of the Linear + ReLU projection between the box head
    # (MODEL.ROI_BOX_HEAD) and the classifier; the VOS class Gaussians are fitted to its
    # outputs. 0 = no projection: the classifier reads the box head's output.
    cfg.MODEL.VOS_CLASSIFIER.PROJECTION_DIM = 64

    cfg.INPUT.CLASSIFICATION = CN()
    # (height, width) every image is resized to by the classification data mapper.
    cfg.INPUT.CLASSIFICATION.IMAGE_SIZE = (32, 32)
    # Training augmentation: pad each side by this many pixels (edge replication) and crop
    # back to IMAGE_SIZE at a random position (CIFAR-style random translation). 0 = off.
    cfg.INPUT.CLASSIFICATION.RANDOM_CROP_PADDING = 0

    cfg.TEST.CLASSIFICATION = CN()
    # Images per batch of the classifier's evaluation loaders.
    cfg.TEST.CLASSIFICATION.IMS_PER_BATCH = 64

    # ImageFolder-style datasets to register, each "NAME:ROLE:PATH" with ROLE "id" or "ood",
    # e.g. ("cifar_train:id:/data/cifar10/train", "svhn:ood:/data/svhn"). PATH holds one
    # folder per class (class names = sorted folder names); an OOD PATH may also hold the
    # images directly. Relative paths are relative to the working directory.
    cfg.DATASETS.IMAGE_FOLDERS = ()
