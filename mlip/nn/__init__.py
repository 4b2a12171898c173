"""Equivariant neural-network modules and model assembly."""
from mlip.nn.build import ARCHITECTURES, Architecture, build_model, get_architecture, register_architecture
from mlip.nn.potential import Potential

__all__ = ["ARCHITECTURES", "Architecture", "build_model", "get_architecture", "register_architecture", "Potential"]
