"""Training and evaluation entry points of vos_det."""
from .trainer import Trainer
