"""``mlip export -o NAME.nequip.pt2``: the AOTInductor package gives the same energies, forces and
virial as the TorchScript export on pair_style nequip's inputs, with and without the fused CPU
kernel, on structures of sizes other than the traced one. Compiling takes ~20 s per package:
the packages are built once per module and the equality tests are marked slow."""
import numpy as np
import pytest
import torch

from test_deploy_common import (TINY_CONFIG, TINY_MACE_CONFIG, TYPE_NAMES, lammps_emulated_inputs, make_checkpoint,
                                molecule, triclinic)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    from mlip.cli import main
    from mlip.ops.cpu_message import cpu_kernel_available

    if not cpu_kernel_available():
        pytest.skip("no C++ compiler for the fused CPU kernel")
    d = tmp_path_factory.mktemp("aot")
    ckpt = make_checkpoint(d / "m.pth", dtype="float64", seed=7)
    paths = {"torchscript": str(d / "m.nequip.pth"), "fused": str(d / "fused.nequip.pt2"),
             "plain": str(d / "plain.nequip.pt2")}
    assert main(["export", ckpt, "-o", paths["torchscript"]]) == 0
    assert main(["export", ckpt, "-o", paths["fused"]]) == 0
    assert main(["export", ckpt, "-o", paths["plain"], "--no-kernels"]) == 0
    return paths


def _structures():
    big = triclinic(seed=2, a=5.0).repeat((2, 2, 1))
    return {"small-triclinic": triclinic(seed=1), "triclinic-2x2": big, "molecule": molecule(seed=3, n=9)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fused", "plain"])
def test_package_equals_torchscript_export(packages, kind):
    from mlip.deploy.aot import INPUTS, OUTPUTS, load_aot

    package, meta = load_aot(packages[kind])
    assert meta["nequip_aoti_inputs"].split() == INPUTS and meta["nequip_aoti_outputs"].split() == OUTPUTS
    assert float(meta["r_max"]) == TINY_CONFIG["r_max"] and meta["type_names"] == " ".join(TYPE_NAMES)
    assert meta["mlip_kernels"] == ("mlip_cpu" if kind == "fused" else "")
    scripted = torch.jit.load(packages["torchscript"])
    for name, atoms in _structures().items():
        inputs, _ = lammps_emulated_inputs(atoms, TINY_CONFIG["r_max"], ["Si", "C"], TYPE_NAMES, seed=2)
        ref = scripted(dict(inputs))
        got = dict(zip(OUTPUTS, package(*[inputs[k] for k in INPUTS])))
        for key in OUTPUTS:
            assert got[key].dtype == torch.float64, key
            scale = float(ref[key].abs().max())
            np.testing.assert_allclose(got[key].numpy(), ref[key].numpy(), rtol=0, atol=1e-12 * max(scale, 1.0),
                                       err_msg=f"{name} {key}")


@pytest.mark.slow
def test_fused_package_calls_the_fused_kernel(packages):
    """The package holds the two opaque kernel calls (what libmlip_ops.so must provide in LAMMPS)."""
    import zipfile

    with zipfile.ZipFile(packages["fused"]) as z:
        text = "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith((".json", ".cpp")))
    assert "mlip_cpu::contract" in text and "mlip_cpu::grads" in text
    with zipfile.ZipFile(packages["plain"]) as z:
        text = "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith((".json", ".cpp")))
    assert "mlip_cpu" not in text


def test_untraceable_architecture_and_bad_names_are_refused(tmp_path):
    from mlip.deploy.aot import export_aot
    from mlip.errors import InputError

    ckpt = make_checkpoint(tmp_path / "mace.pth", dtype="float64", config=TINY_MACE_CONFIG)
    with pytest.raises(InputError, match="mace architecture does not trace"):
        export_aot(ckpt, str(tmp_path / "m.nequip.pt2"))
    with pytest.raises(InputError, match="must end in '.nequip.pt2'"):
        export_aot(ckpt, str(tmp_path / "m.pt2"))
