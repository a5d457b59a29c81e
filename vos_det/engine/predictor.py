"""A predictor for end users: config + weights in, detections with OOD verdicts out.

:class:`OODPredictor` runs one image; :func:`predict_images` runs image files, folders and
glob patterns into a ``predictions.json`` (and drawings), what ``tools/predict.py`` does.
"""
import glob
import json
import logging
import math
import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from PIL import Image
from tqdm import tqdm

from ..config import load_config
from ..data.image_io import IMAGE_EXTENSIONS, read_image_file
from ..modeling import VOSOutputLayers
from ..utils.file_io import atomic_open, check_writable_dir
from ..utils.visualization import draw_ood_detections
from .trained_model import check_weights_file, load_trained_model

__all__ = ["PREDICTIONS_FILE", "OODPredictor", "find_images", "instances_to_records", "predict_images"]

# The file predict_images writes in its output folder.
PREDICTIONS_FILE = "predictions.json"

logger = logging.getLogger(__name__)


class OODPredictor(DefaultPredictor):
    """detectron2's DefaultPredictor for VOS models: one image in, Instances with OOD fields out.

    Example::

        predictor = OODPredictor.from_config_file("digits_vos_r18.yaml", "model_final.pth")
        instances = predictor.predict_file("image.jpg")
        instances.is_ood, instances.ood_scores, instances.id_scores

    ``predictor(image_bgr)`` works as for DefaultPredictor.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): a config with the VOS keys and MODEL.WEIGHTS set.

        Raises:
            FileNotFoundError: MODEL.WEIGHTS names no file (checked before the model is built).
            TypeError: the model's box predictor produces no OOD fields.
            ValueError: the checkpoint's tensors do not fit the model built from cfg.
        """
        check_weights_file(cfg.MODEL.WEIGHTS)
        # DefaultPredictor's fields, with the model loaded by load_trained_model: the checkpoint
        # is checked before it is loaded, and a fitted SAFE gets its hooks.
        self.cfg = cfg.clone()
        self.model = load_trained_model(self.cfg)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        box_predictor = getattr(getattr(self.model, "roi_heads", None), "box_predictor", None)
        if not isinstance(box_predictor, VOSOutputLayers):
            raise TypeError(
                f"MODEL.ROI_HEADS.NAME={cfg.MODEL.ROI_HEADS.NAME!r} builds no VOS box predictor, "
                "so its detections would carry no OOD scores; use VOSROIHeads"
            )
        self.box_predictor = box_predictor
        dataset_names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
        metadata = MetadataCatalog.get(dataset_names[0]) if dataset_names else None
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        names = list(metadata.get("thing_classes", [])) if metadata is not None else []
        self.class_names = names if len(names) == num_classes else [str(i) for i in range(num_classes)]
        # The dataset's own category id of each class index (COCO-json sets), else the index.
        to_index = metadata.get("thing_dataset_id_to_contiguous_id", {}) if metadata is not None else {}
        from_index = {index: dataset_id for dataset_id, index in to_index.items()}
        self.category_ids = [from_index.get(i, i) for i in range(num_classes)]
        self._warn_if_uncalibrated(cfg)

    def _warn_if_uncalibrated(self, cfg):
        """One warning when is_ood would use the default threshold for want of a calibrated one."""
        predictor = self.box_predictor
        if not predictor.use_calibrated_threshold or not math.isnan(float(predictor.calibrated_ood_threshold)):
            return
        logger.warning(
            "%s holds no calibrated OOD threshold: is_ood uses MODEL.OOD.THRESHOLD=%s, which "
            "may flag no box or every box. Calibrate it on an ID validation set with `python "
            "tools/ood_eval.py --config CONFIG MODEL.WEIGHTS %s --calibrate VAL_SET` and use the "
            "model_calibrated.pth it writes (or train with TEST.OOD.CALIBRATION_DATASET VAL_SET), "
            "or pass a threshold of your own (predict.py --ood-threshold T)",
            cfg.MODEL.WEIGHTS,
            predictor.ood_threshold,
            cfg.MODEL.WEIGHTS,
        )

    @classmethod
    def from_config_file(cls, config_file, weights, opts=()):
        """Build from a config file (path or bare name under configs/), weights and overrides.

        Args:
            config_file (str): the config.
            weights (str): checkpoint path (sets MODEL.WEIGHTS).
            opts (list[str]): KEY VALUE overrides, as on the command line.
        """
        return cls(load_config(config_file, ["MODEL.WEIGHTS", weights, *opts]))

    @property
    def ood_threshold(self) -> float:
        """The threshold on ood_scores behind is_ood (calibrated if the checkpoint has one)."""
        return self.box_predictor.current_ood_threshold()

    def predict_file(self, path):
        """Detections of one image file, on the CPU.

        Args:
            path (str): an image file (any mode PIL reads: gray, RGBA, 16-bit, ...).

        Returns:
            Instances: pred_boxes, scores, pred_classes, id_scores, ood_scores, is_ood, ...

        Raises:
            ValueError: the file cannot be read as an image (the message names it).
        """
        image = read_image_file(path, format="BGR")
        return self(image)["instances"].to("cpu")


def find_images(inputs):
    """Expand files, folders (non-recursive, image extensions) and glob patterns, in order.

    Args:
        inputs (list[str]): image files, folders and glob patterns.

    Returns:
        list[str]: the image files.

    Raises:
        FileNotFoundError: an input matches nothing, or no image was found at all.
    """
    found = []
    for spec in inputs:
        if os.path.isdir(spec):
            matches = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not matches:
                raise FileNotFoundError(f"--input folder {spec} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(spec):
            matches = [spec]
        else:
            matches = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"--input {spec!r} is no file or folder and matches no file")
        found.extend(matches)
    return found


def predict_images(config_file, weights, inputs, output_dir, *, draw=False, min_score=0.5, ood_threshold=None, opts=()):
    """Detections with OOD verdicts of every image, written to ``output_dir/predictions.json``.

    The output folder is checked to be writable before any image runs. An unreadable file is
    logged, listed under "errors" and skipped.

    Args:
        config_file (str): the config (path or name under configs/).
        weights (str): the checkpoint.
        inputs (list[str]): image files, folders and glob patterns (:func:`find_images`).
        output_dir (str): gets ``predictions.json`` and, with ``draw``, one PNG per image:
            ID boxes solid green with class and score, OOD boxes dashed red.
        draw (bool): write the drawings.
        min_score (float): keep detections with class score >= this.
        ood_threshold (float, optional): flag boxes with ood_score above this, instead of
            the checkpoint's calibrated threshold.
        opts (list[str]): ``KEY VALUE`` config overrides.

    Returns:
        dict: the report written: config, weights, ood_score, ood_threshold, convention,
        class_names, category_ids, images, detections (:func:`instances_to_records`), errors.
    """
    images = find_images(inputs)
    overrides = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(min_score)]
    if ood_threshold is not None:
        overrides += ["MODEL.OOD.THRESHOLD", str(ood_threshold), "MODEL.OOD.USE_CALIBRATED_THRESHOLD", "False"]
    predictor = OODPredictor.from_config_file(config_file, weights, overrides + list(opts))
    check_writable_dir(output_dir, "--output folder")  # before any image runs
    detections, image_entries, errors = [], [], []
    for image_id, path in enumerate(tqdm(images, desc="predict", unit="img")):
        try:
            image_bgr = read_image_file(path, format="BGR")  # decoded once, for the model and the drawing
            instances = predictor(image_bgr)["instances"].to("cpu")
        except ValueError as e:
            logger.warning("skipping %s", e)
            errors.append({"file_name": path, "error": str(e)})
            continue
        height, width = instances.image_size
        image_entries.append({"id": image_id, "file_name": path, "height": height, "width": width})
        detections.extend(
            instances_to_records(instances, image_id, path, predictor.class_names, predictor.category_ids)
        )
        if draw:
            drawn = draw_ood_detections(np.ascontiguousarray(image_bgr[:, :, ::-1]), instances, predictor.class_names)
            stem = os.path.splitext(os.path.basename(path))[0]
            Image.fromarray(drawn).save(os.path.join(output_dir, f"{image_id:06d}_{stem}.png"))
    report = {
        "config": config_file,
        "weights": weights,
        "ood_score": predictor.box_predictor.ood_score,
        "ood_threshold": predictor.ood_threshold,
        "convention": "ood_score: larger = more OOD; is_ood = ood_score > ood_threshold",
        "class_names": predictor.class_names,
        "category_ids": predictor.category_ids,
        "images": image_entries,
        "detections": detections,
        "errors": errors,
    }
    with atomic_open(os.path.join(output_dir, PREDICTIONS_FILE), "w") as f:
        json.dump(report, f, indent=1)
    return report


def instances_to_records(instances, image_id, file_name, class_names, category_ids=None):
    """COCO-results-style dicts of one image's detections, with their OOD verdicts.

    Args:
        instances (Instances): detections on the CPU, with the OOD fields.
        image_id (int): id of the image in the output.
        file_name (str): the image file.
        class_names (list[str]): names of the ID classes.
        category_ids (list[int], optional): the dataset's category id of each class index
            (:attr:`OODPredictor.category_ids`); the class index itself when None.

    Returns:
        list[dict]: one dict per box: image_id, file_name, category_id (the training set's
        own category id when known: COCO-json sets; else the 0-based class index),
        class_index (0-based), category_name, bbox (XYWH, absolute pixels), score, id_score,
        ood_score (larger = more OOD), is_ood.
    """
    category_ids = category_ids or list(range(len(class_names)))
    boxes = instances.pred_boxes.tensor.clone()
    boxes[:, 2:] -= boxes[:, :2]
    records = []
    for box, score, label, id_score, ood_score, is_ood in zip(
        boxes.tolist(),
        instances.scores.tolist(),
        instances.pred_classes.tolist(),
        instances.id_scores.tolist(),
        instances.ood_scores.tolist(),
        instances.is_ood.tolist(),
    ):
        records.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "category_id": category_ids[label],
                "class_index": label,
                "category_name": class_names[label],
                "bbox": [round(v, 2) for v in box],
                "score": score,
                "id_score": id_score,
                "ood_score": ood_score,
                "is_ood": bool(is_ood),
            }
        )
    return records
