"""vos_det: Virtual Outlier Synthesis (VOS) out-of-distribution detection for Detectron2."""
from .utils.log_noise import filter_known_warnings

filter_known_warnings()  # before torch / detectron2 are imported: their known deprecation warnings
from . import data as _data  # registers the built-in datasets
from . import modeling as _modeling  # registers the ROI heads, box predictor and backbone
from .config import add_vos_config
from . import classification as _classification  # registers VOSImageClassifier and digits-cls

__version__ = "0.1.0"
