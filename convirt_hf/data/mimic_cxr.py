"""The former import path of the MIMIC-CXR-JPG reader, now :mod:`convirt_hf.data.sources.mimic_cxr`."""

from .sources.mimic_cxr import *  # noqa: F403
from .sources.mimic_cxr import __all__  # noqa: F401
