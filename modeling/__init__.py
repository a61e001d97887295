"""Self-contained ConVIRT model code (also shipped to the Hub as remote code, so files stay flat)."""

from .configuration_convirt import ConvirtConfig
from .modeling_convirt import ConvirtModel, ConvirtOutput, ConvirtPreTrainedModel
from .processing_convirt import ConvirtProcessor

__all__ = ["ConvirtConfig", "ConvirtModel", "ConvirtOutput", "ConvirtPreTrainedModel", "ConvirtProcessor"]
