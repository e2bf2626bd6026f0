"""hf_mixssl: mixup-based and self-supervised visual representation learning on the Hugging Face stack.

Importing the package registers every method of the registry (``hf_mixssl.methods``) with the transformers Auto
classes, so ``AutoModel.from_pretrained(run_dir_or_repo)`` returns the right model. ``register_for_auto_class``
also makes ``save_pretrained`` ship the modeling code with the weights (``trust_remote_code=True``).

Layout: ``models/`` holds everything that travels with the weights (configs, modeling files and the role modules
they import, all siblings); ``train/``, ``data/``, ``evaluation/``, ``sharing/`` and ``cli/`` never travel.
"""

from .methods import Method, Paper, get_method, list_methods, method_of_config, register_auto_classes, register_method
from .models.configuration_automix import AutoMixConfig
from .models.configuration_emp_ssl import EMPSSLConfig
from .models.configuration_mae import MAEConfig
from .models.configuration_mixup import MixupClassifierConfig
from .models.configuration_moco import MoCoConfig
from .models.modeling_automix import AutoMixModel, AutoMixOutput, AutoMixPreTrainedModel, MixBlock
from .models.modeling_emp_ssl import EMPSSLModel, EMPSSLOutput, EMPSSLPreTrainedModel
from .models.modeling_mae import MAEModel, MAEOutput, MAEPreTrainedModel
from .models.modeling_mixup import MixupClassifierOutput, MixupForImageClassification, MixupPreTrainedModel
from .models.modeling_moco import MoCoModel, MoCoOutput, MoCoPreTrainedModel
from .models.pretrained import VisionPreTrainedModel

__version__ = "0.1.0"


def __getattr__(name: str):
    # The training entry points import accelerate/datasets; load them on first use only.
    if name in ("pretrain", "parse_args", "resolve"):
        from .train import arguments, loop

        return {"pretrain": loop.pretrain, "parse_args": arguments.parse_args, "resolve": arguments.resolve}[name]
    raise AttributeError(f"module 'hf_mixssl' has no attribute {name!r}")


__all__ = [
    "AutoMixConfig", "AutoMixModel", "AutoMixOutput", "AutoMixPreTrainedModel", "MixBlock",
    "EMPSSLConfig", "EMPSSLModel", "EMPSSLOutput", "EMPSSLPreTrainedModel",
    "MAEConfig", "MAEModel", "MAEOutput", "MAEPreTrainedModel",
    "Method", "MixupClassifierConfig", "MixupClassifierOutput", "MixupForImageClassification",
    "MixupPreTrainedModel", "MoCoConfig", "MoCoModel", "MoCoOutput", "MoCoPreTrainedModel", "Paper",
    "VisionPreTrainedModel", "__version__", "get_method", "list_methods", "method_of_config", "parse_args",
    "pretrain", "register_auto_classes", "register_method", "resolve",
]
