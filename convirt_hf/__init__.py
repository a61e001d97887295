"""convirt-hf: ConVIRT (Zhang et al., 2020) as a Hugging Face model package.

Importing the package registers the classes with the transformers Auto classes, so `AutoModel.from_pretrained` and
`pipeline(...)` work on ConVIRT folders without `trust_remote_code` while it is installed. Saved folders also carry
the model code, so they load with `trust_remote_code=True` where it is not.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .modeling import ConvirtConfig, ConvirtModel, ConvirtOutput, ConvirtProcessor

__version__ = "0.1.0.dev0"

AutoConfig.register(ConvirtConfig.model_type, ConvirtConfig, exist_ok=True)
AutoModel.register(ConvirtConfig, ConvirtModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(ConvirtConfig, ConvirtModel, exist_ok=True)
AutoProcessor.register(ConvirtConfig, ConvirtProcessor, exist_ok=True)

# save_pretrained copies the code files next to the weights for the classes registered here.
ConvirtConfig.register_for_auto_class("AutoConfig")
ConvirtModel.register_for_auto_class("AutoModel")
ConvirtProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["ConvirtConfig", "ConvirtModel", "ConvirtOutput", "ConvirtProcessor", "__version__"]
