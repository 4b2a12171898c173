"""Output heads (issue 19): dipole with charges, polarizability, generic irreps outputs.

Physics in float64 to ~1e-10: the dipole rotates as R mu and is odd under inversion, the
polarizability transforms as R alpha R^T and stays symmetric, charges sum to the total charge,
a translation leaves a neutral structure's dipole alone and moves a charged one's by Q t, a
pseudoscalar output changes sign for the mirror image (and is exactly zero with a parity-free
model), permutations and batching change nothing. Then: energy-only models are untouched by
the new keywords, and a parity model learns a pseudoscalar target (the signed volume of a
chiral centre) that an invariant output provably cannot fit.
"""
import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.spatial.transform import Rotation

from mlip.data import TypeMapper, collate, frame_to_graph, frames_from_atoms_list
from mlip.data import keys as K
from mlip.nn import build_model
from mlip.nn.build import ARCHITECTURES, load_architectures

TYPES = ["H", "C", "O"]
R_MAX = 3.0
HEADS = dict(dipole=True, polarizability=True)

load_architectures()
CONFIGS = {
    "nequip-o3": dict(architecture="nequip", num_layers=3, channels=4, l_max=2, parity=True, r_max=R_MAX,
                      structure_output="1x0o+1x1o", atom_output="1x0e+1x2e"),
    "nequip-so3": dict(architecture="nequip", num_layers=2, channels=4, l_max=2, parity=False, r_max=R_MAX,
                       structure_output="1x1o", atom_output="1x2e"),
}
if "mace" in ARCHITECTURES:
    CONFIGS["mace-o3"] = dict(architecture="mace", channels=4, max_L=2, l_max=2, correlation=2, num_interactions=2,
                              parity=True, r_max=R_MAX, structure_output="1x1o", atom_output="1x2e")
    CONFIGS["mace-so3"] = dict(architecture="mace", channels=4, max_L=1, l_max=2, correlation=2,
                               num_interactions=2, parity=False, r_max=R_MAX)


def _model(name, seed=0, dtype=torch.float64, **extra):
    torch.manual_seed(seed)
    cfg = dict(CONFIGS[name], avg_num_neighbors=4.0, atomic_energy_shifts=[-13.6, -1029.0, -2041.0], **HEADS)
    cfg.update(extra)
    return build_model(cfg, TYPES, dtype)


def _molecule(rng, n=7, charge=None):
    atoms = Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=rng.normal(size=(n, 3)) * 1.2)
    if charge is not None:
        atoms.info["charge"] = charge
    return atoms


def _crystal(rng, charge=None):
    cell = np.eye(3) * 3.3 + rng.uniform(-0.3, 0.3, (3, 3))
    atoms = Atoms(numbers=rng.choice([1, 6, 8], size=5), scaled_positions=rng.uniform(0, 1, (5, 3)), cell=cell,
                  pbc=True)
    if charge is not None:
        atoms.info["charge"] = charge
    return atoms


def _predict(model, atoms_list):
    tm = TypeMapper(TYPES)
    graphs = [frame_to_graph(f, tm, R_MAX, torch.float64) for f in frames_from_atoms_list(atoms_list)]
    out = model(collate(graphs), compute_forces=True)
    return {k: v.detach() for k, v in out.items() if k in model.output_fields + [K.TOTAL_ENERGY, K.FORCES]}


def _transform(atoms, R, t=np.zeros(3), perm=None):
    out = atoms.copy()
    out.positions = atoms.positions @ R.T + t
    if atoms.pbc.any():
        out.cell = atoms.cell.array @ R.T
    if perm is not None:
        out = out[perm]
    return out


def _parity(name):
    return CONFIGS[name].get("parity", True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_dipole_and_polarizability_are_equivariant(name, kind, rng):
    """mu -> R mu (odd under inversion: a polar vector), alpha -> R alpha R^T (symmetric), charges
    permute with the atoms; O(3) models for improper R too, SO(3) models for rotations."""
    model = _model(name)
    atoms = _molecule(rng, charge=1.0) if kind == "molecule" else _crystal(rng, charge=-1.0)
    ref = _predict(model, [atoms])
    mu, alpha, q = ref[K.DIPOLE][0].numpy(), ref[K.POLARIZABILITY][0].numpy(), ref[K.CHARGES].numpy()
    assert np.abs(mu).max() > 1e-3 and np.abs(alpha - np.trace(alpha) / 3 * np.eye(3)).max() > 1e-4
    np.testing.assert_allclose(alpha, alpha.T, rtol=0, atol=1e-14 * np.abs(alpha).max())
    for trial in range(3):
        R = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        if trial == 2 and _parity(name):
            R = -R  # rotation times inversion
        perm = rng.permutation(len(atoms))
        out = _predict(model, [_transform(atoms, R, np.zeros(3), perm)])
        np.testing.assert_allclose(out[K.DIPOLE][0].numpy(), R @ mu, rtol=0, atol=1e-10 * np.abs(mu).max())
        np.testing.assert_allclose(out[K.POLARIZABILITY][0].numpy(), R @ alpha @ R.T, rtol=0,
                                   atol=1e-10 * np.abs(alpha).max())
        np.testing.assert_allclose(out[K.CHARGES].numpy(), q[perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_inversion_flips_the_dipole_keeps_the_polarizability(name, rng):
    if not _parity(name):
        pytest.skip("an SO(3) model is not symmetric under inversion")
    model = _model(name)
    atoms = _molecule(rng)
    ref = _predict(model, [atoms])
    out = _predict(model, [_transform(atoms, -np.eye(3))])
    scale = float(ref[K.DIPOLE].abs().max())
    torch.testing.assert_close(out[K.DIPOLE], -ref[K.DIPOLE], rtol=0, atol=1e-10 * scale)
    torch.testing.assert_close(out[K.POLARIZABILITY], ref[K.POLARIZABILITY], rtol=0,
                               atol=1e-10 * float(ref[K.POLARIZABILITY].abs().max()))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_charges_sum_to_the_total_charge_and_translation_moves_the_dipole_by_q_t(name, rng):
    model = _model(name)
    t = rng.normal(size=3) * 4.0
    for charge in (None, 0.0, 2.0, -1.0):
        atoms = _molecule(rng, charge=charge)
        q_total = charge or 0.0
        ref = _predict(model, [atoms])
        assert abs(float(ref[K.CHARGES].sum()) - q_total) < 1e-12
        moved = _predict(model, [_transform(atoms, np.eye(3), t)])
        assert abs(float(moved[K.CHARGES].sum()) - q_total) < 1e-12
        scale = float(ref[K.DIPOLE].abs().max()) + abs(q_total) * float(np.abs(t).max())
        np.testing.assert_allclose(moved[K.DIPOLE][0].numpy(), ref[K.DIPOLE][0].numpy() + q_total * t, rtol=0,
                                   atol=1e-10 * scale)
        # the polarizability does not move at all
        torch.testing.assert_close(moved[K.POLARIZABILITY], ref[K.POLARIZABILITY], rtol=0,
                                   atol=1e-10 * float(ref[K.POLARIZABILITY].abs().max()))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_heads_equal_one_by_one(name, rng):
    model = _model(name)
    structures = [_molecule(rng, 5, charge=1.0), _crystal(rng), _molecule(rng, 6)]
    together = _predict(model, structures)
    alone = [_predict(model, [a]) for a in structures]
    for key in (K.DIPOLE, K.POLARIZABILITY, K.STRUCTURE_OUTPUT):
        if key in together:
            torch.testing.assert_close(together[key], torch.cat([a[key] for a in alone]), rtol=1e-10, atol=1e-12)
    for key in (K.CHARGES, K.ATOM_OUTPUT):
        if key in together:
            torch.testing.assert_close(together[key], torch.cat([a[key] for a in alone]), rtol=1e-10, atol=1e-12)


def test_generic_outputs_transform_with_their_irreps(rng, float64_default):
    """structure_output 1x0o+1x1o: the pseudoscalar changes sign under a mirror and is invariant
    under rotations; the 1o part rotates (e3nn's basis); per-atom 1x0e+1x2e with the Wigner D."""
    from mlip.irreps import parse_irreps, wigner_D

    model = _model("nequip-o3")
    atoms = _molecule(rng, 8)
    atoms.positions *= 0.7  # dense enough for the three-body chains a pseudoscalar needs
    ref = _predict(model, [atoms])
    for R in (Rotation.random(random_state=5).as_matrix(), np.diag([1.0, 1.0, -1.0]), -np.eye(3)):
        out = _predict(model, [_transform(atoms, R)])
        Rt = torch.as_tensor(R)
        D_s = wigner_D(parse_irreps("1x0o+1x1o"), Rt)
        D_a = wigner_D(parse_irreps("1x0e+1x2e"), Rt)
        torch.testing.assert_close(out[K.STRUCTURE_OUTPUT], ref[K.STRUCTURE_OUTPUT] @ D_s.T, rtol=0, atol=1e-10)
        torch.testing.assert_close(out[K.ATOM_OUTPUT], ref[K.ATOM_OUTPUT] @ D_a.T, rtol=0, atol=1e-10)
        if np.linalg.det(R) < 0:
            assert abs(float(ref[K.STRUCTURE_OUTPUT][0, 0])) > 1e-6  # a pseudoscalar that does flip
            torch.testing.assert_close(out[K.STRUCTURE_OUTPUT][:, 0], -ref[K.STRUCTURE_OUTPUT][:, 0], rtol=0,
                                       atol=1e-10)


def test_pseudoscalar_is_exactly_zero_with_a_parity_free_model(rng):
    model = _model("nequip-so3", structure_output="1x0o+1x1o", atom_output="1x0o")
    out = _predict(model, [_molecule(rng), _crystal(rng)])
    assert torch.equal(out[K.STRUCTURE_OUTPUT][:, 0], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(out[K.ATOM_OUTPUT], torch.zeros_like(out[K.ATOM_OUTPUT]))
    assert out[K.STRUCTURE_OUTPUT][:, 1:].abs().max() > 1e-6  # the vector part is there


def test_heads_need_the_irreps_they_read():
    with pytest.raises(ValueError, match="2e features"):
        build_model(dict(architecture="nequip", num_layers=1, l_max=0, channels=4, polarizability=True), TYPES)
    with pytest.raises(ValueError, match="atomic_dipoles: false"):
        build_model(dict(architecture="nequip", num_layers=1, l_max=0, channels=4, dipole=True), TYPES)
    # a pseudoscalar needs three NequIP blocks of both parities
    with pytest.raises(ValueError, match="pseudo-tensor"):
        build_model(dict(architecture="nequip", num_layers=2, l_max=1, channels=4, structure_output="1x0o"), TYPES)
    if "mace" in ARCHITECTURES:
        with pytest.raises(ValueError, match="natural parity only"):
            build_model(dict(architecture="mace", channels=4, max_L=2, l_max=3, correlation=3,
                             structure_output="1x0o"), TYPES)
    # charges only need scalars
    model = build_model(dict(architecture="nequip", num_layers=1, l_max=0, channels=4, dipole=True,
                             atomic_dipoles=False), TYPES)
    assert model.output_fields == [K.CHARGES, K.DIPOLE]


@pytest.mark.parametrize("architecture", sorted(a for a in ("nequip", "mace") if a in ARCHITECTURES))
def test_head_keywords_at_their_defaults_change_nothing(architecture):
    """Same parameters, buffers and values (same random draws) with the head keywords given at
    their defaults as without them; no heads, no extra outputs."""
    base = dict(architecture=architecture, r_max=R_MAX, channels=4)
    torch.manual_seed(3)
    plain = build_model(base, TYPES, torch.float64)
    torch.manual_seed(3)
    explicit = build_model(dict(base, dipole=False, atomic_dipoles=True, polarizability=False, structure_output="",
                                atom_output=""), TYPES, torch.float64)
    a, b = plain.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [n for n, _ in plain.named_buffers()] == [n for n, _ in explicit.named_buffers()]
    assert plain.output_fields == [] and plain.energy_model.heads is None
    assert not any("heads" in k for k in a)


# --- a pseudoscalar target: the signed volume of a chiral centre ----------------------------------

def _chiral_centres(n, rng):
    """C with H, O and C substituents at jittered tetrahedral directions, and each one's mirror
    image; target: the signed volume (r_H - r_C) . ((r_O - r_C) x (r_C' - r_C)) in A^3."""
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / np.sqrt(3)
    out = []
    for _ in range(n):
        dirs = tet[rng.permutation(4)[:3]] + rng.normal(0, 0.15, (3, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        pos = np.vstack([np.zeros(3), dirs * rng.uniform(1.0, 1.4, (3, 1))])
        R = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        for mirror in (np.eye(3), np.diag([1.0, 1.0, -1.0])):
            p = pos @ (R @ mirror).T
            atoms = Atoms("CHOC", positions=p)
            atoms.info["structure_output"] = np.array([np.dot(p[1] - p[0], np.cross(p[2] - p[0], p[3] - p[0]))])
            out.append(atoms)
    return out


def _fit(model, graphs, steps, lr=0.02):
    from mlip.train.loss import LossWeights, compute_loss

    batch = collate(graphs)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    weights = LossWeights(0.0, 0.0, 0.0, structure_output=1.0)
    for _ in range(steps):
        out = model(batch, compute_forces=False)
        loss, _ = compute_loss(out, batch, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(batch, compute_forces=False)
    return float((out[K.STRUCTURE_OUTPUT].detach() - batch[K.REF_STRUCTURE_OUTPUT]).square().mean().sqrt())


def test_parity_model_fits_a_pseudoscalar_an_invariant_output_cannot(rng):
    tm = TypeMapper(TYPES)
    graphs = [frame_to_graph(f, tm, R_MAX, torch.float64) for f in frames_from_atoms_list(_chiral_centres(6, rng))]
    target = torch.cat([g[K.REF_STRUCTURE_OUTPUT] for g in graphs])
    rms = float(target.square().mean().sqrt())
    assert rms > 0.3
    common = dict(architecture="nequip", r_max=R_MAX, num_layers=3, channels=8, l_max=1, avg_num_neighbors=3.0)
    torch.manual_seed(0)
    pseudo = build_model(dict(common, parity=True, structure_output="1x0o"), TYPES, torch.float64)
    torch.manual_seed(0)
    invariant = build_model(dict(common, parity=True, structure_output="1x0e"), TYPES, torch.float64)
    rmse_pseudo = _fit(pseudo, graphs, 150)
    rmse_invariant = _fit(invariant, graphs, 150)
    # the invariant output is the same for a structure and its mirror image, whose targets are
    # opposite: its error is at least the targets' RMS, whatever the weights
    assert rmse_invariant >= rms * (1 - 1e-9)
    assert rmse_pseudo < 0.2 * rms, (rmse_pseudo, rms)
    # and it has learnt the signed volume, not the structures: new chiral centres
    held_out = collate([frame_to_graph(f, tm, R_MAX, torch.float64)
                        for f in frames_from_atoms_list(_chiral_centres(4, np.random.default_rng(99)))])
    err = pseudo(held_out, compute_forces=False)[K.STRUCTURE_OUTPUT].detach() - held_out[K.REF_STRUCTURE_OUTPUT]
    assert float(err.square().mean().sqrt()) < 0.5 * rms


@pytest.mark.slow
def test_compiled_potential_returns_the_heads(rng):
    """train.compile (a traced graph) keeps the heads' outputs; traced without a compiler here."""
    from mlip.nn.compiled import CompiledPotential

    model = _model("nequip-o3")
    tm = TypeMapper(TYPES)
    batch = collate([frame_to_graph(f, tm, R_MAX, torch.float64)
                     for f in frames_from_atoms_list([_molecule(rng, charge=1.0), _crystal(rng)])])
    ref = model(batch, compute_forces=True)
    out = CompiledPotential(model, backend=None)(batch, compute_forces=True)
    for key in model.output_fields + [K.FORCES]:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12)
