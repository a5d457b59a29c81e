"""The keys vos_det adds to detectron2's config, with their defaults and comments.

The keys of the VOS training method are declared in :mod:`.vos_keys`; the others are set
here, each with a comment saying what it means (``docs/config_keys.md`` is made from both).
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .vos_keys import add_vos_keys

__all__ = ["add_classification_config", "add_vos_config", "default_config"]


def add_vos_config(cfg):
    """Add the keys of VOS (Virtual Outlier Synthesis) to a detectron2 config.

    Model keys live under ``cfg.MODEL.VOS``; the tiny digits backbone under
    ``cfg.MODEL.TINY_NET``; OOD evaluation under ``cfg.DATASETS.OOD_TEST`` and
    ``cfg.TEST.OOD``. Defaults are the paper's (Du et al., ICLR 2022) VOC recipe.

    Sign convention, used everywhere: an OOD score is larger for boxes that are
    more likely out-of-distribution.
    """
    cfg.MODEL.VOS = CN()
    # The keys of the VOS training method, declared in vos_det/config/vos_keys.py.
    add_vos_keys(cfg.MODEL.VOS)
    # Name of the box predictor of VOSROIHeads in BOX_PREDICTOR_REGISTRY.
    cfg.MODEL.VOS.BOX_PREDICTOR = "VOSOutputLayers"
    # Class Gaussians of the box features written by tools/fit_mahalanobis.py; when set,
    # the evaluation also records ood_scores_mahalanobis ("" = none).
    cfg.MODEL.VOS.MAHALANOBIS_STATS = ""
    # Post-hoc OOD scores (vos_det/modeling/ood_scores/): the evaluation records
    # ood_scores_maxlogit and ood_scores_gen, plus ood_scores_<name> of every score fitted in
    # STATE (knn, vim, react, mahalanobis_multilayer, safe, fused). Any of them can be OOD_SCORE.
    cfg.MODEL.VOS.POST_HOC = CN()
    # File written by tools/fit_ood_scores.py next to the weights ("" = none fitted).
    cfg.MODEL.VOS.POST_HOC.STATE = ""
    # GEN (Liu et al. 2023): exponent gamma and M, the number of largest probabilities
    # summed (paper defaults; M is capped at the number of classes).
    cfg.MODEL.VOS.POST_HOC.GEN = CN({"GAMMA": 0.1, "TOP_M": 100})
    # k-NN (Sun et al. 2022), used when fitting: K, the neighbour (0 = chosen on --val-id /
    # --val-ood boxes by the fit tool, else the paper's 50); MAX_BANK_SIZE, training boxes
    # kept in the bank (0 = all); at inference CHUNK_SIZE, bank rows per chunk of the exact
    # search (0 = one matrix product). SEARCH at inference: "torch" (exact), "faiss_flat" (exact)
    # or "faiss_ivf" (approximate: NLIST k-means cells, 0 = sqrt(bank size), NPROBE of them
    # searched per query); a faiss search falls back to "torch" when faiss is not installed.
    cfg.MODEL.VOS.POST_HOC.KNN = CN(
        {"K": 0, "MAX_BANK_SIZE": 0, "CHUNK_SIZE": 0, "SEARCH": "torch", "NLIST": 0, "NPROBE": 32}
    )
    # ViM (Wang et al. 2022): DIM, the principal subspace dimension (0 = half the feature
    # dimension, between the paper's 1000 of 2048 and 512 of 768).
    cfg.MODEL.VOS.POST_HOC.VIM = CN({"DIM": 0})
    # ReAct (Sun et al. 2021): features clipped at this percentile of the training boxes'
    # activations above their minimum, the units that fire (paper: 90).
    cfg.MODEL.VOS.POST_HOC.REACT = CN({"PERCENTILE": 90.0})
    # Multi-layer Mahalanobis: the feature maps each box is ROI-pooled from ([] = those of
    # ROI_HEADS.IN_FEATURES), and whether the penultimate box feature is appended.
    cfg.MODEL.VOS.POST_HOC.MULTILAYER = CN({"IN_FEATURES": [], "INCLUDE_BOX_FEATURES": True})
    # SAFE (Wilson et al. 2023), as released (vos_det/modeling/ood_scores/safe.py): an MLP
    # tells the 1x1 ROI-aligned outputs of the backbone modules named by LAYER_PATTERNS
    # (regular expressions; default the ResNet projection shortcuts and RegNetX's b1.bn) on
    # the boxes predicted on training images from the same boxes after one FGSM step of eps
    # pixels (0-255) on the detector's training loss. eps is FGSM_EPSILON, or chosen among
    # EPSILON_CANDIDATES when the fit tool gets --val-id / --val-ood. The MLP's SGD schedule:
    # EPOCHS, LEARNING_RATE, IMAGES_PER_BATCH (the release's 5, 1e-3, 32). MAX_IMAGES bounds
    # the training images used (evenly spread; 0 = all).
    cfg.MODEL.VOS.POST_HOC.SAFE = CN(
        {
            "LAYER_PATTERNS": [
                r"backbone\.(bottom_up\.)?res\d+\.\d+\.shortcut",
                r"backbone\.(bottom_up\.)?s\d+\.b1\.bn",
            ],
            "FGSM_EPSILON": 8.0,
            "EPSILON_CANDIDATES": [2.0, 4.0, 8.0, 16.0],
            "EPOCHS": 5,
            "LEARNING_RATE": 1e-3,
            "IMAGES_PER_BATCH": 32,
            "MAX_IMAGES": 0,
        }
    )
    # Fused: a logit part (LOGIT_PARTS) and a feature part (FEATURE_PARTS), each
    # scaled by its ID validation boxes (SCALINGS: "zscore", "percentile"), combined by a rule
    # (RULES: "max", "sum", "logistic" on ID validation boxes against OUTLIERS_PER_CLASS VOS
    # virtual outliers per class); tools/fit_ood_scores.py picks the candidate of lowest FPR95
    # on --val-id vs --val-ood.
    cfg.MODEL.VOS.POST_HOC.FUSED = CN(
        {
            "LOGIT_PARTS": ["energy", "gen"],
            "FEATURE_PARTS": ["knn", "mahalanobis_multilayer"],
            "SCALINGS": ["zscore", "percentile"],
            "RULES": ["max", "sum", "logistic"],
            "OUTLIERS_PER_CLASS": 200,
        }
    )
    # > 0: a Linear + ReLU bottleneck of this width before the class layer (cls_score),
    # whose outputs are queued and synthesised (box predictor and classification head); 0 = none.
    cfg.MODEL.VOS.BOTTLENECK_DIM = 0

    # Regularisers of the box-head embedding, with or without VOS (MODEL.VOS.ENABLED).
    cfg.MODEL.EMBEDDING = CN()
    # The box classifier (cls_score), a name in CLASSIFIER_REGISTRY: "LinearClassifier"
    # (Fast R-CNN's), "L2SoftmaxClassifier", "CosFaceClassifier", "ArcFaceClassifier" or
    # "SphereFaceClassifier" (formulas in vos_det/modeling/regularizers/margin_classifiers.py).
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
    # "CenterLoss", "CIDERLoss" (vos_det/modeling/regularizers/center_loss.py, cider.py).
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

    # RegNet of build_regnet_fpn_backbone (detectron2's RegNet, Radosavovic et al. 2020); the
    # defaults are RegNetX-4.0GF, the VOS paper's second backbone (pycls's RegNetX-4.0GF).
    cfg.MODEL.REGNET = CN()
    # Number of blocks in all stages together.
    cfg.MODEL.REGNET.DEPTH = 23
    # Slope of the linear block widths before quantisation (w_a).
    cfg.MODEL.REGNET.W_A = 38.65
    # Width of the first block (w_0).
    cfg.MODEL.REGNET.W_0 = 96
    # Width multiplier between stages of the quantised widths (w_m).
    cfg.MODEL.REGNET.W_M = 2.43
    # Channels per group of the grouped 3x3 convolutions.
    cfg.MODEL.REGNET.GROUP_WIDTH = 40
    # Output channels of the stem.
    cfg.MODEL.REGNET.STEM_WIDTH = 32
    # Squeeze-and-excitation ratio (0 = none: RegNetX; RegNetY uses 0.25).
    cfg.MODEL.REGNET.SE_RATIO = 0.0
    # Normalisation of every conv ("FrozenBN" for ImageNet-initialised detection training).
    cfg.MODEL.REGNET.NORM = "FrozenBN"
    # Stages returned to the FPN (strides 4, 8, 16, 32).
    cfg.MODEL.REGNET.OUT_FEATURES = ["s1", "s2", "s3", "s4"]

    # Out-of-distribution test sets, evaluated against the ID sets of DATASETS.TEST.
    cfg.DATASETS.OOD_TEST = ()
    cfg.TEST.OOD = CN()
    # OOD evaluation protocol; every report and ood_results.json names it:
    # "vos_official": the released VOS evaluation, exactly: threshold = the optimal F1 read off
    #   COCOeval's precision averaged over IoU .50:.95 on the ID test set (per class the score
    #   of highest F1, averaged over classes); a detection, ID or OOD set, is kept when its
    #   PROPOSAL's maximum foreground probability reaches it (so a confident proposal's
    #   secondary-class detections are kept too); FPR95 at the ROC point whose ID recall is
    #   closest to 95%. As the release: the threshold is rounded to 4 decimals, VOC ground truth
    #   is in its raw XML corners, a class without ground truth enters the mean as -1, no class
    #   threshold keeps every box, and the model runs NMS before clipping its boxes.
    #   BOX_SELECTION and FPR95_METHOD are not used;
    # "vos_det": a detection is kept by its own class score (BOX_SELECTION), FPR95 read by
    #   FPR95_METHOD. The paper's recipes (configs/VOC-Detection, BDD-Detection) set
    #   "vos_official"; docs/evaluation.md, "The two protocols (TEST.OOD.PROTOCOL)", says why
    #   the default differs.
    cfg.TEST.OOD.PROTOCOL = "vos_det"
    # With BOX_SELECTION "fixed": detections whose class score is below this are not scored
    # for OOD (also the fallback of either protocol when no optimal-F1 threshold exists).
    cfg.TEST.OOD.SCORE_THRESHOLD = 0.5
    # Protocol "vos_det": which detections are scored for OOD (ID and OOD sets alike, no
    # ground-truth matching):
    # "optimal_f1": class score >= the ID test set's optimal-F1 threshold (per class, the
    #               score maximising F1, exact VOC matching at IoU 0.5, averaged over classes);
    # "fixed": class score >= TEST.OOD.SCORE_THRESHOLD.
    cfg.TEST.OOD.BOX_SELECTION = "optimal_f1"
    # ID validation set on which the OOD threshold of is_ood is calibrated and saved with
    # the model (model_calibrated.pth, ood_threshold.json); "" = no calibration.
    cfg.TEST.OOD.CALIBRATION_DATASET = ""
    # Fraction of the selected ID validation boxes the calibrated threshold keeps as ID.
    cfg.TEST.OOD.CALIBRATION_ID_KEEP = 0.95
    # Protocol "vos_det": how FPR95 reads the ROC curve: "first_at_least" (first point
    # keeping >= 95% of ID) or "official_closest" (ID recall closest to 95%, the VOS code's).
    cfg.TEST.OOD.FPR95_METHOD = "first_at_least"
    # Draw the ROC curves and ID-vs-OOD score histograms (PNG) under OUTPUT_DIR/ood_plots.
    cfg.TEST.OOD.PLOTS = True

    # The image classifier's keys (MODEL.VOS_CLASSIFIER, INPUT.CLASSIFICATION,
    # TEST.CLASSIFICATION, DATASETS.IMAGE_FOLDERS).
    add_classification_config(cfg)


def add_classification_config(cfg):
    """Add the keys of the VOS image classifier to a detectron2 config.

    The classifier (:class:`vos_det.classification.VOSImageClassifier`) treats the whole image
    as one box: it reuses the backbone keys (``MODEL.BACKBONE``, ``MODEL.FPN``,
    ``MODEL.TINY_NET``), the box pooler and box head keys (``MODEL.ROI_BOX_HEAD``) and every
    VOS key (``MODEL.VOS``) of the detector. Its own keys are under
    ``cfg.MODEL.VOS_CLASSIFIER``; the fixed input size under ``cfg.INPUT.CLASSIFICATION``;
    the evaluation batch size under ``cfg.TEST.CLASSIFICATION``; ImageFolder datasets named
    in the config under ``cfg.DATASETS.IMAGE_FOLDERS``.

    :func:`add_vos_config` calls it; adding the keys twice leaves the config unchanged.
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


def default_config():
    """detectron2's default config with every vos_det key at its default (not frozen)."""
    cfg = get_cfg()
    add_vos_config(cfg)
    return cfg
