"""The former import path of the Open-i (IU X-ray) reader, now :mod:`convirt_hf.data.sources.openi`."""

from .sources.openi import *  # noqa: F403
from .sources.openi import __all__  # noqa: F401
