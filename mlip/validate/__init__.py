"""``mlip validate``: physical properties of a model against reference values.

The property functions take any ASE calculator, so they serve analytic potentials (the tests)
as well as :class:`mlip.MLIPCalculator`:

=========================================  =================================================
:mod:`mlip.validate.eos`                   Birch-Murnaghan equation of state: V0, B0 (GPa), B0', lattice constants
:mod:`mlip.validate.elastic`               Voigt elastic constants (GPa) from +/- strains, ions relaxed
:mod:`mlip.validate.phonons`               phonon bands and DOS (THz), imaginary modes (phonopy or numpy)
:mod:`mlip.validate.defects`               vacancy formation energy (eV), surface energy (J/m^2)
:mod:`mlip.validate.molecule`              relaxed bonds (A) and angles (deg), harmonic frequencies
:mod:`mlip.validate.md`                    NVT stability: first failing step, trajectory excerpt
:mod:`mlip.validate.reference`             the YAML reference format and its parser
:mod:`mlip.validate.report`                the table of model, reference and relative error
:mod:`mlip.validate.runner`                which checks run for which system
:mod:`mlip.validate.cli`                   the ``mlip validate`` command
:mod:`mlip.validate.common`                relaxation and supercell helpers
:mod:`mlip.validate.units`                 unit conversions (GPa, J/m^2, THz, cm^-1)
=========================================  =================================================

Shipped references live in ``mlip/validate/references`` (``si_pbe.yaml``: bulk Si, PBE, the
values of the mlearn benchmark). Nothing here is imported by ``import mlip``.
"""
