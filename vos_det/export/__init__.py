"""Export of VOS detectors to files that run without vos_det (TorchScript)."""
from .torchscript import (
    METADATA_FILE,
    OUTPUT_NAMES,
    compare_detections,
    export_torchscript,
    load_exported,
    load_metadata,
    ood_detections,
    trace_ood_detector,
)
