"""Deployment: TorchScript export (LAMMPS pair_style nequip contract), ASE calculator, model checks."""
