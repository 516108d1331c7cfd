"""The model zoo: L2X, discrete VAE, NRI with a spanning-tree latent, grid shortest paths.

Every model is a :class:`ZooModel` (an ``nn.Module`` with the Hugging Face Hub mixin) built on
:class:`~aimle_zoo.estimators.DifferentiableSolver`; ``create_model(name, **kwargs)`` builds one
from the registry, ``Model.from_pretrained(folder_or_repo)`` restores a saved one.
"""

from ._base import (
    CheckpointMismatchError as CheckpointMismatchError,
    ModelInputError as ModelInputError,
    ZooModel as ZooModel,
)
from ._registry import (
    UnknownModelError as UnknownModelError,
    create_model as create_model,
    get_model_class as get_model_class,
    list_models as list_models,
    model_registry as model_registry,
    register_model as register_model,
)
from .dvae import DiscreteVAE as DiscreteVAE
from .grid_path import GridShortestPath as GridShortestPath
from .l2x import L2XImage as L2XImage, L2XTabular as L2XTabular, L2XText as L2XText
from .nri import NRITree as NRITree
