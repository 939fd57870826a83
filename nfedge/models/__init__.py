"""Model registries: base classifiers and NeuralFuse generators (timm-style create/list).

    create_base_model("resnet18", in_channels=3, num_classes=10)
    create_generator("ConvL", in_channels=3)
Adding a model is one `@BASE_MODELS.register(name)` (or GENERATORS) function in a module of this package,
imported below (the registries themselves live in nfedge.models.registry).
"""

from nfedge.models import generators, small, tiny, zoo  # noqa: F401 - registration side effects
from nfedge.models.registry import (
                                    BASE_MODELS,
                                    GENERATORS,
                                    create_base_model,
                                    create_generator,
                                    list_base_models,
                                    list_generators,
)

__all__ = ["BASE_MODELS", "GENERATORS", "create_base_model", "create_generator", "list_base_models", "list_generators"]
