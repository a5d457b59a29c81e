"""Training and evaluation entry points of vos_det."""
from .trainer import Trainer
from .predictor import OODPredictor, instances_to_records
