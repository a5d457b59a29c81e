"""A predictor for end users: config + weights in, detections with OOD verdicts out."""
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor

from ..config import add_vos_config, resolve_config_file
from ..data.image_io import read_image_file
from ..modeling import VOSOutputLayers
from .checkpoint import check_checkpoint_matches_model

__all__ = ["OODPredictor", "instances_to_records"]


class OODPredictor(DefaultPredictor):
    """detectron2's DefaultPredictor for VOS models: one image in, Instances with OOD fields out.

    Example::

        predictor = OODPredictor.from_config_file("digits_vos_tiny.yaml", "model_final.pth")
        instances = predictor.predict_file("image.jpg")
        instances.is_ood, instances.ood_scores, instances.id_scores

    ``predictor(image_bgr)`` works as for DefaultPredictor.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): a config with the VOS keys and MODEL.WEIGHTS set.

        Raises:
            TypeError: the model's box predictor produces no OOD fields.
            ValueError: the checkpoint's tensors do not fit the model built from cfg.
        """
        super().__init__(cfg)
        check_checkpoint_matches_model(cfg.MODEL.WEIGHTS, self.model)
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

    @classmethod
    def from_config_file(cls, config_file, weights, opts=()):
        """Build from a config file (path or bare name under configs/), weights and overrides.

        Args:
            config_file (str): the config.
            weights (str): checkpoint path (sets MODEL.WEIGHTS).
            opts (list[str]): KEY VALUE overrides, as on the command line.
        """
        cfg = get_cfg()
        add_vos_config(cfg)
        cfg.merge_from_file(resolve_config_file(config_file))
        cfg.merge_from_list(["MODEL.WEIGHTS", weights, *opts])
        cfg.freeze()
        return cls(cfg)

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


def instances_to_records(instances, image_id, file_name, class_names):
    """COCO-results-style dicts of one image's detections, with their OOD verdicts.

    Args:
        instances (Instances): detections on the CPU, with the OOD fields.
        image_id (int): id of the image in the output.
        file_name (str): the image file.
        class_names (list[str]): names of the ID classes.

    Returns:
        list[dict]: one dict per box: image_id, file_name, category_id (0-based class
        index), category_name, bbox (XYWH, absolute pixels), score, id_score, ood_score
        (larger = more OOD), is_ood.
    """
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
                "category_id": label,
                "category_name": class_names[label],
                "bbox": [round(v, 2) for v in box],
                "score": score,
                "id_score": id_score,
                "ood_score": ood_score,
                "is_ood": bool(is_ood),
            }
        )
    return records
