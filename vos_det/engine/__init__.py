"""Training and evaluation entry points of vos_det."""
from .trainer import Trainer
from .predictor import OODPredictor, instances_to_records
from .trained_model import load_trained_model
