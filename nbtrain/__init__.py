"""nbtrain: train image classifiers in a few lines, and clean their datasets safely.

The public names follow fastai's, so code from the fastai course runs with little or no change.
"""

# What the course's `from fastai.vision import *` also gives: its lessons use them from their first cell.
from functools import partial

import numpy as np
import pandas as pd
import torch

from . import fileops, models
from .app import ImageClassifierApp
from .audit import audit
from .augmentation import (
    Normalize,
    PadMode,
    Pipeline,
    RandomResizedCrop,
    Resize,
    ResizeMethod,
    TensorImage,
    aug_transforms,
    setup_aug_tfms,
)
from .callbacks import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    CSVLogger,
    CutMix,
    EarlyStoppingCallback,
    GradientAccumulation,
    MixUp,
    SaveModelCallback,
    ShowGraphCallback,
    TrackerCallback,
    TrainingInterrupted,
)
from .cleaner import ImageClassifierCleaner
from .data import CategoryMap, DataError, DataLoader, DataLoaders, ImageDataLoaders, get_image_files, load_image
from .datablock import (
    CategoryBlock,
    ColReader,
    ColSplitter,
    DataBlock,
    Datasets,
    EndSplitter,
    FuncSplitter,
    GrandparentSplitter,
    ImageBlock,
    IndexSplitter,
    MaskBlock,
    MaskSplitter,
    MultiCategoryBlock,
    PointBlock,
    RandomSplitter,
    RegexLabeller,
    RegressionBlock,
    SegmentationDataLoaders,
    TrainTestSplitter,
    TransformBlock,
    parent_label,
    using_attr,
)
from .downloads import URLs, untar_data
from .dynamics import TrainingDynamics
from .embeddings import find_duplicates
from .environment import default_device
from .fileops import copy_to_working
from .housekeeping import clear_housekeeping, housekeeping_report
from .image import PILImage
from .image_downloads import download_images, image_sources
from .image_resize import resize_image, resize_images
from .image_search import RateLimitError, SearchError, search_images, search_images_bing, search_images_ddg
from .interpretation import ClassificationInterpretation
from .label_issues import find_label_issues, rank_labels
from .label_table import LabelTableError, cleaned_copy, read_label_table
from .learner import Learner, TrainingState, unet_learner, vision_learner
from .locations import is_colab, is_kaggle
from .lr_suggestions import minimum, slide, steep, valley
from .metrics import (
    AccuracyMulti,
    F1Score,
    F1ScoreMulti,
    FBeta,
    FBetaMulti,
    Precision,
    PrecisionMulti,
    Recall,
    RecallMulti,
    TopKAccuracy,
    accuracy,
    accuracy_multi,
    accuracy_thresh,
    error_rate,
    fbeta,
    find_best_threshold,
    top_k_accuracy,
)
from .models import (
    WeightsUnavailableError,
    convnext_small,
    convnext_tiny,
    densenet121,
    efficientnet_b0,
    efficientnet_b1,
    efficientnet_b2,
    efficientnet_b3,
    efficientnet_b4,
    efficientnet_b5,
    efficientnet_b6,
    efficientnet_b7,
    efficientnet_v2_s,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
    regnet_y_400mf,
    regnet_y_800mf,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    vgg16_bn,
    wide_resnet50_2,
)
from .paths import Path
from .predictions import DatasetType
from .v1 import (
    DatasetFormatter,
    ImageCleaner,
    ImageDataBunch,
    ImageList,
    cnn_learner,
    create_cnn,
    defaults,
    doc,
    get_transforms,
    imagenet_stats,
    load_learner,
    open_image,
    verify_images,
)

__version__ = "0.1.0"

__all__ = [
    "AccuracyMulti",
    "audit",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CancelTrainException",
    "CancelValidException",
    "ClassificationInterpretation",
    "DataError",
    "copy_to_working",
    "cleaned_copy",
    "read_label_table",
    "LabelTableError",
    "DataLoader",
    "DataLoaders",
    "F1Score",
    "F1ScoreMulti",
    "FBeta",
    "FBetaMulti",
    "ImageClassifierCleaner",
    "ImageDataLoaders",
    "Learner",
    "Normalize",
    "Precision",
    "PrecisionMulti",
    "RandomResizedCrop",
    "Recall",
    "RecallMulti",
    "Resize",
    "TopKAccuracy",
    "TrainingInterrupted",
    "TrainingState",
    "WeightsUnavailableError",
    "accuracy",
    "accuracy_multi",
    "accuracy_thresh",
    "aug_transforms",
    "create_cnn",
    "clear_housekeeping",
    "default_device",
    "error_rate",
    "fileops",
    "find_best_threshold",
    "get_image_files",
    "housekeeping_report",
    "is_colab",
    "is_kaggle",
    "load_image",
    "load_learner",
    "top_k_accuracy",
    "untar_data",
    "URLs",
    "verify_images",
    "vision_learner",
    # fastai's DataBlock API
    "CategoryBlock",
    "CategoryMap",
    "ColReader",
    "ColSplitter",
    "DataBlock",
    "Datasets",
    "EndSplitter",
    "FuncSplitter",
    "GrandparentSplitter",
    "ImageBlock",
    "IndexSplitter",
    "MaskSplitter",
    "MultiCategoryBlock",
    "PILImage",
    "RandomSplitter",
    "RegexLabeller",
    "TrainTestSplitter",
    "TransformBlock",
    "parent_label",
    "using_attr",
    "PadMode",
    "ResizeMethod",
    "fbeta",
    "find_duplicates",
    "find_label_issues",
    "rank_labels",
    "TrainingDynamics",
    # lr_find's suggestion functions, fastai's Path with ls(), and fastai names nbtrain refuses with advice
    "minimum",
    "slide",
    "steep",
    "valley",
    "Path",
    "PointBlock",
    "RegressionBlock",
    "TensorImage",
    "setup_aug_tfms",
    "Pipeline",
    "MaskBlock",
    "SegmentationDataLoaders",
    "unet_learner",
    # fastai's `models` and the architecture names vision_learner takes
    "models",
    "convnext_small",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_s",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "vgg16_bn",
    "wide_resnet50_2",
    # callbacks, the predict widget
    "CSVLogger",
    "CutMix",
    "EarlyStoppingCallback",
    "GradientAccumulation",
    "ImageClassifierApp",
    "MixUp",
    "SaveModelCallback",
    "ShowGraphCallback",
    "TrackerCallback",
    # getting data: downloads, resizing, image search
    "download_images",
    "image_sources",
    "resize_image",
    "resize_images",
    "RateLimitError",
    "SearchError",
    "search_images",
    "search_images_bing",
    "search_images_ddg",
    # fastai v1's names, as the 2019 course types them
    "DatasetFormatter",
    "DatasetType",
    "ImageCleaner",
    "ImageDataBunch",
    "ImageList",
    "cnn_learner",
    "defaults",
    "doc",
    "get_transforms",
    "imagenet_stats",
    "open_image",
    # what the course's star import also gives
    "np",
    "partial",
    "pd",
    "plt",
    "torch",
]


def __getattr__(name: str):
    """`plt` on first use (the star import asks for it): pyplot is slow to import, and scripts that
    never draw should not pay for it."""
    if name == "plt":
        import matplotlib.pyplot as plt

        return plt
    raise AttributeError(f"module 'nbtrain' has no attribute {name!r}")
