"""nbtrain: train image classifiers in a few lines, and clean their datasets safely.

The public names follow fastai's, so code from the fastai course runs with little or no change.
"""
from . import fileops
from .augmentation import Normalize, RandomResizedCrop, Resize, aug_transforms
from .audit import audit
from .cleaner import ImageClassifierCleaner
from .datasets import URLs, untar_data
from .data import DataError, DataLoader, DataLoaders, ImageDataLoaders, get_image_files, load_image, verify_images
from .environment import copy_to_working, default_device, is_kaggle
from .interpretation import ClassificationInterpretation
from .learner import Learner, create_cnn, load_learner, vision_learner
from .metrics import (AccuracyMulti, F1Score, F1ScoreMulti, FBeta, FBetaMulti, Precision, PrecisionMulti, Recall,
                      RecallMulti, TopKAccuracy, accuracy, accuracy_multi, accuracy_thresh, error_rate,
                      find_best_threshold, top_k_accuracy)
from .models import WeightsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "AccuracyMulti", "audit", "ClassificationInterpretation", "DataError", "copy_to_working", "DataLoader", "DataLoaders", "F1Score",
    "F1ScoreMulti", "FBeta", "FBetaMulti", "ImageClassifierCleaner", "ImageDataLoaders", "Learner", "Normalize",
    "Precision", "PrecisionMulti", "RandomResizedCrop", "Recall", "RecallMulti", "Resize", "TopKAccuracy",
    "WeightsUnavailableError", "accuracy", "accuracy_multi", "accuracy_thresh", "aug_transforms", "create_cnn",
    "default_device", "error_rate", "fileops", "find_best_threshold", "get_image_files", "is_kaggle", "load_image",
    "load_learner", "top_k_accuracy", "untar_data", "URLs", "verify_images", "vision_learner",
]
