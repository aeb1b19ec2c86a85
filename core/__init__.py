"""What both backends share: the label schema, the Classifier contract, data loading and settings."""

from core.data import DataError, label_names, leak_report, load_tweets, stratified_indices, stratified_sample
from core.settings import SourceError, resolve
from core.types import LABELS, Classifier, Prediction, check_labels

__all__ = [
    "LABELS",
    "Classifier",
    "DataError",
    "Prediction",
    "SourceError",
    "check_labels",
    "label_names",
    "leak_report",
    "load_tweets",
    "resolve",
    "stratified_indices",
    "stratified_sample",
]
