"""The former import path of the CheXpert-Plus reader, now :mod:`convirt_hf.data.sources.chexpert_plus`."""

from .sources.chexpert_plus import *  # noqa: F403
from .sources.chexpert_plus import __all__  # noqa: F401
