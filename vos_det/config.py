"""Configuration keys of vos_det."""
from pathlib import Path

from detectron2.config import CfgNode as CN


def add_vos_config(cfg):
    """Add the keys of VOS (Virtual Outlier Synthesis) to a detectron2 config.

    Model keys live under ``cfg.MODEL.VOS``; the tiny digits backbone under
    ``cfg.MODEL.TINY_NET``; OOD evaluation under ``cfg.DATASETS.OOD_TEST`` and
    ``cfg.TEST.OOD``. Defaults are the paper's (Du et al., ICLR 2022) VOC recipe.

    Sign convention, used everywhere: an OOD score is larger for boxes that are
    more likely out-of-distribution.
    """
    cfg.MODEL.VOS = CN()
    # Turn virtual outlier synthesis and the uncertainty loss on. Off gives the vanilla
    # detector (the OOD fields are still produced from the energy of its logits).
    cfg.MODEL.VOS.ENABLED = True
    # Name of the box predictor of VOSROIHeads in BOX_PREDICTOR_REGISTRY.
    cfg.MODEL.VOS.BOX_PREDICTOR = "VOSOutputLayers"
    # Capacity of the FIFO feature queue of each class (paper: 1000).
    cfg.MODEL.VOS.SAMPLE_NUMBER = 1000
    # Iteration from which outliers are synthesised, once every class queue is full.
    cfg.MODEL.VOS.STARTING_ITER = 12000
    # Number of Gaussian samples drawn per class at each synthesis step (paper: 10000).
    cfg.MODEL.VOS.SAMPLE_FROM = 10000
    # Number of lowest-likelihood samples kept per class as virtual outliers (paper: 1).
    cfg.MODEL.VOS.SELECT = 1
    # beta, the weight of the uncertainty loss in the total loss (paper: 0.1).
    cfg.MODEL.VOS.LOSS_WEIGHT = 0.1
    # eps of the "+ eps * I" regulariser of the shared covariance (paper code: 1e-4).
    cfg.MODEL.VOS.COVARIANCE_EPS = 1e-4
    # The covariance is updated incrementally as features enter and leave the queues;
    # every this many synthesis steps it is recomputed exactly from the queues.
    cfg.MODEL.VOS.COVARIANCE_RECOMPUTE_PERIOD = 500
    # How the lowest-likelihood samples are drawn, both exact in distribution:
    # "chi2": the squared radii ||z||^2 ~ chi-square(m) are drawn and ranked, then only the
    #         kept ones get a uniform direction (no SAMPLE_FROM x m tensor);
    # "gaussian": z ~ N(0, I) is drawn in full and ranked by ||z||^2 (reference route).
    cfg.MODEL.VOS.SAMPLER = "chi2"
    # Base seed of the random stream of synthesis: iteration i uses its own seed derived
    # from (SYNTHESIS_SEED, i), so all ranks draw the same outliers and a resumed run
    # draws the ones it would have drawn without interruption.
    cfg.MODEL.VOS.SYNTHESIS_SEED = 0
    # Score written to Instances.ood_scores and thresholded into is_ood:
    # "vos": 1 - p(ID | box), the logistic regression on the weighted energy (paper eq. 8);
    # "energy": the free energy -logsumexp of the foreground logits (the released code's
    #           test-time score on a VOS-trained model).
    cfg.MODEL.VOS.OOD_SCORE = "vos"
    # A box is flagged is_ood when its ood_score is above this threshold. For the "vos"
    # score it is 1 - gamma of eq. 9. The calibrated threshold stored in the model
    # (95% of ID validation boxes kept, TEST.OOD.CALIBRATION_DATASET) replaces it unless
    # USE_CALIBRATED_THRESHOLD is False.
    cfg.MODEL.VOS.OOD_THRESHOLD = 0.5
    # Use the threshold calibrated on ID validation boxes when the checkpoint has one.
    cfg.MODEL.VOS.USE_CALIBRATED_THRESHOLD = True
    # Class Gaussians of the box features written by tools/fit_mahalanobis.py; when set,
    # every detection also gets ood_scores_mahalanobis ("" = none).
    cfg.MODEL.VOS.MAHALANOBIS_STATS = ""

    # Regularisers of the box-head embedding, with or without VOS (MODEL.VOS.ENABLED).
    cfg.MODEL.EMBEDDING = CN()
    # The box classifier (cls_score), a name in CLASSIFIER_REGISTRY: "LinearClassifier"
    # (Fast R-CNN's), "L2SoftmaxClassifier", "CosFaceClassifier", "ArcFaceClassifier" or
    # "SphereFaceClassifier" (formulas in vos_det/modeling/margin_classifiers.py).
    cfg.MODEL.EMBEDDING.CLASSIFIER = "LinearClassifier"
    # L2-constrained softmax (Ranjan et al. 2017): features rescaled to norm ALPHA.
    cfg.MODEL.EMBEDDING.L2_SOFTMAX = CN({"ALPHA": 16.0})
    # CosFace (Wang et al. 2018): logits SCALE * cos, true class SCALE * (cos - MARGIN).
    # SCALE 20 is the cosine box classifier's of few-shot detection (TFA, Wang et al. 2020);
    # the face-recognition papers' 64 made the digits detector diverge at BASE_LR 0.02.
    cfg.MODEL.EMBEDDING.COSFACE = CN({"SCALE": 20.0, "MARGIN": 0.35})
    # ArcFace (Deng et al. 2019): true class SCALE * cos(theta + MARGIN), MARGIN in radians;
    # SCALE as for CosFace.
    cfg.MODEL.EMBEDDING.ARCFACE = CN({"SCALE": 20.0, "MARGIN": 0.5})
    # SphereFace (Liu et al. 2017): integer angle multiplier MARGIN; the margin logit is
    # blended with the plain one by lambda = max(LAMBDA_MIN, LAMBDA_BASE * (1 + LAMBDA_GAMMA
    # * iter) ** -LAMBDA_POWER), the paper's annealing.
    cfg.MODEL.EMBEDDING.SPHEREFACE = CN(
        {"MARGIN": 4, "LAMBDA_BASE": 1000.0, "LAMBDA_MIN": 5.0, "LAMBDA_GAMMA": 0.12, "LAMBDA_POWER": 1.0}
    )
    # Losses on the foreground box features, names in EMBEDDING_LOSS_REGISTRY:
    # "CenterLoss", "CIDERLoss" (vos_det/modeling/center_loss.py, cider.py).
    cfg.MODEL.EMBEDDING.LOSSES = []
    # Center loss (Wen et al. 2016): WEIGHT * mean_i 1/2 ||x_i - c_{y_i}||^2; the centers
    # move by ALPHA times the paper's update each iteration.
    cfg.MODEL.EMBEDDING.CENTER_LOSS = CN({"WEIGHT": 0.003, "ALPHA": 0.5})
    # CIDER (Ming et al. 2023): a 2-layer projection to EMBEDDING_DIM on the unit sphere,
    # compactness and dispersion losses at TEMPERATURE, prototypes updated per sample with
    # the EMA factor PROTOTYPE_MOMENTUM (the authors' CIFAR-10 value). The paper trains with
    # these losses alone (weights 1); beside the detection losses, weights of 1 made the
    # digits detector diverge at BASE_LR 0.02, 0.1 did not.
    cfg.MODEL.EMBEDDING.CIDER = CN(
        {
            "EMBEDDING_DIM": 128,
            "TEMPERATURE": 0.1,
            "PROTOTYPE_MOMENTUM": 0.95,
            "COMPACTNESS_WEIGHT": 0.1,
            "DISPERSION_WEIGHT": 0.1,
        }
    )

    # A few-layer conv net with FPN outputs for the CPU digits-det benchmark.
    cfg.MODEL.TINY_NET = CN()
    # Output channels of each stage; stage i has stride 2 ** (i + 2) (res2, res3, ...).
    cfg.MODEL.TINY_NET.STAGE_CHANNELS = [32, 64, 128]
    # Normalisation of the conv layers ("", "BN", "GN", ...).
    cfg.MODEL.TINY_NET.NORM = "BN"

    # Out-of-distribution test sets, evaluated against the ID sets of DATASETS.TEST.
    cfg.DATASETS.OOD_TEST = ()
    cfg.TEST.OOD = CN()
    # With BOX_SELECTION "fixed": detections whose class score is below this are not scored
    # for OOD (also the fallback when the optimal-F1 threshold cannot be computed).
    cfg.TEST.OOD.SCORE_THRESHOLD = 0.5
    # Which detections are scored for OOD (ID and OOD sets alike, no ground-truth matching):
    # "optimal_f1": class score >= the ID test set's optimal-F1 threshold (per class, the
    #               score maximising F1 at IoU 0.5, averaged over classes; the VOS protocol);
    # "fixed": class score >= TEST.OOD.SCORE_THRESHOLD.
    cfg.TEST.OOD.BOX_SELECTION = "optimal_f1"
    # ID validation set on which the OOD threshold of is_ood is calibrated and saved with
    # the model (model_calibrated.pth, ood_threshold.json); "" = no calibration.
    cfg.TEST.OOD.CALIBRATION_DATASET = ""
    # Fraction of the selected ID validation boxes the calibrated threshold keeps as ID.
    cfg.TEST.OOD.CALIBRATION_ID_KEEP = 0.95
    # How FPR95 reads the ROC curve: "first_at_least" (first point keeping >= 95% of ID) or
    # "official_closest" (the point whose ID recall is closest to 95%, as the VOS code).
    cfg.TEST.OOD.FPR95_METHOD = "first_at_least"
    # Draw the ROC curves and ID-vs-OOD score histograms (PNG) under OUTPUT_DIR/ood_plots.
    cfg.TEST.OOD.PLOTS = True

    # The image classifier's keys (MODEL.VOS_CLASSIFIER, INPUT.CLASSIFICATION,
    # TEST.CLASSIFICATION, DATASETS.IMAGE_FOLDERS); imported here, not at the top, because
    # vos_det.classification imports the engine, which imports this module.
    from .classification.config import add_classification_config

    add_classification_config(cfg)


# The configs/ folder of the repository (vos_det is installed editable from it).
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_file(name: str) -> str:
    """Resolve a config path: an existing path as is, else a file name found under configs/.

    Args:
        name: a path (``configs/VOC-Detection/vos_rcnn.yaml``), a path relative to configs/
            (``VOC-Detection/vos_rcnn.yaml``) or a bare file name (``vos_rcnn.yaml``).

    Returns:
        str: the path of the config file.

    Raises:
        FileNotFoundError: no such file, or a bare name matching several files (listed).
    """
    if not name:
        raise FileNotFoundError("no config file given: pass --config NAME (e.g. vos_rcnn.yaml)")
    path = Path(name)
    if path.is_file():
        return str(path)
    if (CONFIGS_DIR / path).is_file():
        return str(CONFIGS_DIR / path)
    matches = sorted(CONFIGS_DIR.rglob(path.name)) if path.name == name else []
    if len(matches) == 1:
        return str(matches[0])
    if len(matches) > 1:
        listed = ", ".join(str(m.relative_to(CONFIGS_DIR)) for m in matches)
        raise FileNotFoundError(f"config name {name!r} is ambiguous under {CONFIGS_DIR}: {listed}")
    raise FileNotFoundError(f"config file {name!r} not found (nor under {CONFIGS_DIR})")
