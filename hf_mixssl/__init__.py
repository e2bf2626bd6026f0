"""hf_mixssl: mixup-based and self-supervised visual representation learning on the Hugging Face stack.

Importing the package registers every method's config and model with the transformers Auto classes,
so ``AutoModel.from_pretrained(run_dir_or_repo)`` returns the right model. ``register_for_auto_class``
also makes ``save_pretrained`` ship the modeling code with the weights (``trust_remote_code=True``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_automix import AutoMixConfig
from .configuration_emp_ssl import EMPSSLConfig
from .configuration_mae import MAEConfig
from .configuration_mixup import MixupClassifierConfig
from .configuration_moco import MoCoConfig
from .modeling_automix import AutoMixModel, AutoMixOutput, AutoMixPreTrainedModel, MixBlock
from .modeling_emp_ssl import EMPSSLModel, EMPSSLOutput, EMPSSLPreTrainedModel
from .modeling_mae import MAEModel, MAEOutput, MAEPreTrainedModel
from .modeling_mixup import MixupClassifierOutput, MixupForImageClassification, MixupPreTrainedModel
from .modeling_moco import MoCoModel, MoCoOutput, MoCoPreTrainedModel

__version__ = "0.1.0"

# (config class, {Auto class name: model class})
_REGISTRY = [
    (MoCoConfig, {"AutoModel": MoCoModel}),
    (MixupClassifierConfig, {"AutoModel": MixupForImageClassification,
                             "AutoModelForImageClassification": MixupForImageClassification}),
    (AutoMixConfig, {"AutoModelForImageClassification": AutoMixModel, "AutoModel": AutoMixModel}),
    (MAEConfig, {"AutoModel": MAEModel}),
    (EMPSSLConfig, {"AutoModel": EMPSSLModel}),
]

_AUTO = {"AutoModel": AutoModel, "AutoModelForImageClassification": AutoModelForImageClassification}

for _config_cls, _models in _REGISTRY:
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    _config_cls.register_for_auto_class()
    for _auto_name, _model_cls in _models.items():
        _AUTO[_auto_name].register(_config_cls, _model_cls, exist_ok=True)
        _model_cls.register_for_auto_class(_auto_name)

__all__ = [
    "AutoMixConfig", "AutoMixModel", "AutoMixOutput", "AutoMixPreTrainedModel", "MixBlock",
    "EMPSSLConfig", "EMPSSLModel", "EMPSSLOutput", "EMPSSLPreTrainedModel",
    "MAEConfig", "MAEModel", "MAEOutput", "MAEPreTrainedModel",
    "MixupClassifierConfig", "MixupClassifierOutput", "MixupForImageClassification", "MixupPreTrainedModel",
    "MoCoConfig", "MoCoModel", "MoCoOutput", "MoCoPreTrainedModel", "__version__",
]
