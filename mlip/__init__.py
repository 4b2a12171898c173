"""mlip: E(3)-equivariant machine-learned interatomic potentials (NequIP and MACE families).

Units everywhere: eV, Angstrom, eV/A, eV/A^3 (ASE stress sign).
"""
__version__ = "0.1.0"


def __getattr__(name):
    # imported lazily so `import mlip` stays light and works before the calculator's deps load
    if name == "MLIPCalculator":
        from mlip.deploy.calculator import MLIPCalculator
        return MLIPCalculator
    raise AttributeError(f"module 'mlip' has no attribute '{name}'")
