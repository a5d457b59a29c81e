"""Writing the rendered splits of digits-det: ID splits in PASCAL VOC layout, OOD splits as
images with a COCO instances json. Every image draws from its own random stream."""
import json
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image
from tqdm import tqdm

from .digits_det_canvases import CanvasStyle
from .digits_det_objects import PickObject
from .digits_det_render import NUM_CHANNELS, render_image
from .digits_det_splits import random_stream

__all__ = ["write_coco_split", "write_voc_split"]

_JPEG_QUALITY = 95
# VOC annotations count pixels from 1 (detectron2 subtracts 1 from xmin / ymin on load).
_VOC_PIXEL_INDEX_BASE = 1
# COCO category ids of the OOD digits start at 1.
_FIRST_COCO_CATEGORY_ID = 1


def _voc_annotation(
    image_id: str, image_size: int, boxes: List[Tuple[int, int, int, int]], labels: List[str]
) -> ET.ElementTree:
    """Build the PASCAL VOC XML of one image (boxes as 1-based inclusive pixel indices)."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "digits_det"
    ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(annotation, "size")
    ET.SubElement(size, "width").text = str(image_size)
    ET.SubElement(size, "height").text = str(image_size)
    ET.SubElement(size, "depth").text = str(NUM_CHANNELS)
    ET.SubElement(annotation, "segmented").text = "0"
    for (x0, y0, x1, y1), name in zip(boxes, labels):
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1)):
            ET.SubElement(bndbox, tag).text = str(value + _VOC_PIXEL_INDEX_BASE)
    tree = ET.ElementTree(annotation)
    ET.indent(tree)
    return tree


def write_voc_split(
    voc_dir: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    pick_object: PickObject,
    progress: tqdm,
    styles: Optional[Dict[str, CanvasStyle]] = None,
) -> None:
    """Render the images of one ID split and write them in PASCAL VOC layout.

    With ``styles``, each image first draws one of them uniformly; the style of every
    image is then written to ``<voc_dir>/<split>_styles.json``.
    """
    image_dir = os.path.join(voc_dir, "JPEGImages")
    annotation_dir = os.path.join(voc_dir, "Annotations")
    image_ids = [f"{split}_{index:06d}" for index in range(num_images)]
    style_of_image = {}
    for index, image_id in enumerate(image_ids):
        rng = random_stream(seed, split, index)
        style = None
        if styles:
            style_of_image[image_id] = list(styles)[rng.integers(len(styles))]
            style = styles[style_of_image[image_id]]
        image, boxes, labels = render_image(rng, pick_object, image_size, style)
        Image.fromarray(image).save(
            os.path.join(image_dir, f"{image_id}.jpg"), quality=_JPEG_QUALITY
        )
        _voc_annotation(image_id, image_size, boxes, labels).write(
            os.path.join(annotation_dir, f"{image_id}.xml"), encoding="utf-8"
        )
        progress.update()
    with open(os.path.join(voc_dir, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{image_id}\n" for image_id in image_ids))
    if styles:
        with open(os.path.join(voc_dir, f"{split}_styles.json"), "w") as f:
            json.dump(style_of_image, f, indent=1)


def write_coco_split(
    image_dir: str,
    json_file: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    pick_object: PickObject,
    categories: Sequence[Tuple[str, str]],
    description: str,
    progress: tqdm,
) -> None:
    """Render the images of one OOD split and write them with a COCO instances json.

    Args:
        categories: (name, supercategory) of every class ``pick_object`` may draw; their
            COCO ids are 1, 2, ... in this order.
        description: the json's ``info.description``.
    """
    category_id_of_name = {
        name: _FIRST_COCO_CATEGORY_ID + rank for rank, (name, _) in enumerate(categories)
    }
    images, annotations = [], []
    for index in range(num_images):
        rng = random_stream(seed, split, index)
        image, boxes, labels = render_image(rng, pick_object, image_size)
        file_name = f"{split}_{index:06d}.jpg"
        Image.fromarray(image).save(os.path.join(image_dir, file_name), quality=_JPEG_QUALITY)
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for (x0, y0, x1, y1), name in zip(boxes, labels):
            width, height = x1 + 1 - x0, y1 + 1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id_of_name[name],
                    "bbox": [x0, y0, width, height],
                    "area": width * height,
                    "iscrowd": 0,
                }
            )
        progress.update()
    coco = {
        "info": {"description": description},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": category_id_of_name[name], "name": name, "supercategory": supercategory}
            for name, supercategory in categories
        ],
    }
    with open(json_file, "w") as f:
        json.dump(coco, f)
