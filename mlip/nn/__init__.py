"""Equivariant neural-network modules and model assembly."""
from mlip.nn.build import ARCHITECTURES, build_model, register_architecture
from mlip.nn.potential import Potential

__all__ = ["ARCHITECTURES", "build_model", "register_architecture", "Potential"]
