"""nbtrain: train image classifiers in a few lines, and clean their datasets safely.

The public names follow fastai's, so code from the fastai course runs with little or no change.
"""
from . import fileops, models
from .app import ImageClassifierApp
from .augmentation import (Normalize, PadMode, Pipeline, RandomResizedCrop, Resize, ResizeMethod, TensorImage,
                           aug_transforms, setup_aug_tfms)
from .audit import audit
from .callbacks import (Callback, CancelBatchException, CancelEpochException, CancelFitException, CancelStepException,
                        CancelTrainException, CancelValidException, CSVLogger, CutMix, EarlyStoppingCallback,
                        GradientAccumulation, MixUp, SaveModelCallback, ShowGraphCallback, TrackerCallback)
from .cleaner import ImageClassifierCleaner
from .downloads import URLs, untar_data
from .data import (CategoryMap, DataError, DataLoader, DataLoaders, ImageDataLoaders, get_image_files, load_image,
                   verify_images)
from .datablock import (CategoryBlock, ColReader, ColSplitter, DataBlock, Datasets, EndSplitter, FuncSplitter,
                        GrandparentSplitter, ImageBlock, IndexSplitter, MaskBlock, MaskSplitter, MultiCategoryBlock,
                        PointBlock, RandomSplitter, RegexLabeller, RegressionBlock, SegmentationDataLoaders, TrainTestSplitter, TransformBlock, parent_label,
                        using_attr)
from .environment import default_device
from .locations import is_kaggle
from .lr_suggestions import minimum, slide, steep, valley
from .paths import Path
from .fileops import copy_to_working
from .image import PILImage
from .interpretation import ClassificationInterpretation
from .label_issues import find_duplicates, find_label_issues
from .learner import Learner, TrainingInterrupted, TrainingState, create_cnn, load_learner, unet_learner, vision_learner
from .metrics import (AccuracyMulti, F1Score, F1ScoreMulti, FBeta, FBetaMulti, Precision, PrecisionMulti, Recall,
                      RecallMulti, TopKAccuracy, accuracy, accuracy_multi, accuracy_thresh, error_rate, fbeta,
                      find_best_threshold, top_k_accuracy)
from .models import (WeightsUnavailableError, convnext_small, convnext_tiny, densenet121, efficientnet_b0,
                     efficientnet_b1, efficientnet_b2, efficientnet_b3, efficientnet_b4, efficientnet_b5, efficientnet_b6,
                     efficientnet_b7, efficientnet_v2_s, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small,
                     regnet_y_400mf, regnet_y_800mf, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                     vgg16_bn, wide_resnet50_2)

__version__ = "0.1.0"

__all__ = [
    "AccuracyMulti", "audit", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException",
    "CancelStepException", "CancelTrainException", "CancelValidException", "ClassificationInterpretation", "DataError", "copy_to_working", "DataLoader", "DataLoaders", "F1Score",
    "F1ScoreMulti", "FBeta", "FBetaMulti", "ImageClassifierCleaner", "ImageDataLoaders", "Learner", "Normalize",
    "Precision", "PrecisionMulti", "RandomResizedCrop", "Recall", "RecallMulti", "Resize", "TopKAccuracy", "TrainingInterrupted", "TrainingState",
    "WeightsUnavailableError", "accuracy", "accuracy_multi", "accuracy_thresh", "aug_transforms", "create_cnn",
    "default_device", "error_rate", "fileops", "find_best_threshold", "get_image_files", "is_kaggle", "load_image",
    "load_learner", "top_k_accuracy", "untar_data", "URLs", "verify_images", "vision_learner",
    # fastai's DataBlock API
    "CategoryBlock", "CategoryMap", "ColReader", "ColSplitter", "DataBlock", "Datasets", "EndSplitter", "FuncSplitter",
    "GrandparentSplitter", "ImageBlock", "IndexSplitter", "MaskSplitter", "MultiCategoryBlock", "PILImage",
    "RandomSplitter", "RegexLabeller", "TrainTestSplitter", "TransformBlock", "parent_label", "using_attr",
    "PadMode", "ResizeMethod", "fbeta", "find_duplicates", "find_label_issues",
    # lr_find's suggestion functions, fastai's Path with ls(), and fastai names nbtrain refuses with advice
    "minimum", "slide", "steep", "valley", "Path", "PointBlock", "RegressionBlock", "TensorImage", "setup_aug_tfms",
    "Pipeline", "MaskBlock", "SegmentationDataLoaders", "unet_learner",
    # fastai's `models` and the architecture names vision_learner takes
    "models", "convnext_small", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_y_400mf", "regnet_y_800mf", "resnet18",
    "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "vgg16_bn", "wide_resnet50_2",
    # callbacks, the predict widget
    "CSVLogger", "CutMix", "EarlyStoppingCallback",
    "GradientAccumulation", "ImageClassifierApp", "MixUp", "SaveModelCallback", "ShowGraphCallback",
    "TrackerCallback",
]
