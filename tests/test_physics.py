"""Physics of the potential, for every architecture: symmetries, exact derivatives, periodicity,
smoothness at the cutoff, batching. float64 with tight tolerances, float32 loosely."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
from mlip.data import keys as K
from mlip.nn import build_model
from mlip.nn.build import ARCHITECTURES, load_architectures

TYPES = ["H", "C", "O"]
R_MAX = 3.0

load_architectures()
CONFIGS = {
    "nequip-o3": dict(architecture="nequip", num_layers=2, channels=6, l_max=2, parity=True, r_max=R_MAX),
    "nequip-so3-l3": dict(architecture="nequip", num_layers=2, channels=4, l_max=3, parity=False, r_max=R_MAX),
    # NequIP's self-connection (bilinear in features and species embedding), three blocks
    "nequip-embedding-sc": dict(architecture="nequip", num_layers=3, channels=4, l_max=1, parity=False,
                                r_max=R_MAX, self_connection="embedding"),
    # NequIP 0.19's blocks and normalisations; without parity NequIP keeps natural parity
    # (0e, 1o, 2e), which makes that model O(3)-invariant too
    "nequip-compat-o3": dict(architecture="nequip", num_layers=3, channels=4, l_max=2, parity=True, r_max=R_MAX,
                             nequip_compat=True),
    "nequip-compat-natural": dict(architecture="nequip", num_layers=3, channels=4, l_max=2, parity=False,
                                  r_max=R_MAX, nequip_compat=True),
}
if "mace" in ARCHITECTURES:
    _MACE_VARIANTS = {
        "mace-c1-L1": dict(correlation=1, max_L=1, l_max=1, num_interactions=2),
        "mace-c2-L2-l3": dict(correlation=2, max_L=2, l_max=3, num_interactions=2),
        "mace-c3-L0-3layers": dict(correlation=3, max_L=0, l_max=2, num_interactions=3),
        "mace-c3-so3": dict(correlation=3, max_L=1, l_max=2, num_interactions=2, parity=False),
        # mace-torch's blocks: first-layer per-species map, redundant product-basis paths
        "mace-compat-c3-L1": dict(correlation=3, max_L=1, l_max=2, num_interactions=2, mace_compat=True),
    }
    for _name, _cfg in _MACE_VARIANTS.items():
        CONFIGS[_name] = dict(architecture="mace", channels=6, r_max=R_MAX, **_cfg)


def _model(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = dict(CONFIGS[name], avg_num_neighbors=4.0, atomic_energy_shifts=[-13.6, -1029.0, -2041.0],
               atomic_energy_scales=[0.7, 1.1, 0.9])
    return build_model(cfg, TYPES, dtype)


def _molecule(rng, n=7):
    pos = rng.normal(size=(n, 3)) * 1.2
    return Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=pos)


def _crystal(rng):
    cell = np.eye(3) * 3.3 + rng.uniform(-0.3, 0.3, (3, 3))
    frac = rng.uniform(0, 1, (5, 3))
    return Atoms(numbers=rng.choice([1, 6, 8], size=5), scaled_positions=frac, cell=cell, pbc=True)


def _predict(model, atoms_list, dtype=torch.float64, stress=True):
    tm = TypeMapper(TYPES)
    graphs = [frame_to_graph(f, tm, R_MAX, dtype) for f in frames_from_atoms_list(atoms_list)]
    out = model(collate(graphs), compute_forces=True, compute_stress=stress)
    return {k: out[k].detach() for k in (K.TOTAL_ENERGY, K.FORCES, K.STRESS, K.ATOMIC_ENERGY) if k in out}


def _transform(atoms, R, t=np.zeros(3), perm=None):
    out = atoms.copy()
    out.positions = atoms.positions @ R.T + t
    if atoms.pbc.any():
        out.cell = atoms.cell.array @ R.T
    if perm is not None:
        out = out[perm]
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_invariance_and_equivariance_float64(name, kind, rng):
    model = _model(name)
    atoms = _molecule(rng) if kind == "molecule" else _crystal(rng)
    ref = _predict(model, [atoms])
    e_scale = float(ref[K.TOTAL_ENERGY].abs().max())
    f_scale = float(ref[K.FORCES].abs().max())
    s_scale = float(ref[K.STRESS].abs().max()) + 1e-30
    for trial in range(3):
        R = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        if trial == 2 and (CONFIGS[name].get("parity", True) or CONFIGS[name].get("nequip_compat", False)):
            R = -R  # improper: rotation times inversion (O(3) models must be invariant)
        perm = rng.permutation(len(atoms))
        t = rng.normal(size=3) * 3
        out = _predict(model, [_transform(atoms, R, t, perm)])
        torch.testing.assert_close(out[K.TOTAL_ENERGY], ref[K.TOTAL_ENERGY], rtol=1e-10, atol=1e-10 * e_scale)
        rotated_forces = ref[K.FORCES].numpy()[perm] @ R.T
        np.testing.assert_allclose(out[K.FORCES].numpy(), rotated_forces, rtol=0, atol=1e-10 * f_scale)
        if kind == "crystal":
            rs = R @ ref[K.STRESS][0].numpy() @ R.T
            np.testing.assert_allclose(out[K.STRESS][0].numpy(), rs, rtol=0, atol=1e-10 * s_scale)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_invariance_float32_loose(name, rng):
    model = _model(name, torch.float32)
    atoms = _crystal(rng)
    ref = _predict(model, [atoms], torch.float32)
    R = Rotation.random(random_state=3).as_matrix()
    out = _predict(model, [_transform(atoms, R, rng.normal(size=3))], torch.float32)
    torch.testing.assert_close(out[K.TOTAL_ENERGY], ref[K.TOTAL_ENERGY], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[K.FORCES].numpy(), ref[K.FORCES].numpy() @ R.T, atol=1e-4)


def test_o3_model_is_mirror_invariant_so3_model_is_not(rng):
    atoms = _molecule(rng, 6)
    mirror = np.diag([1.0, 1.0, -1.0])
    e_o3 = [_predict(_model("nequip-o3"), [a])[K.TOTAL_ENERGY] for a in (atoms, _transform(atoms, mirror))]
    torch.testing.assert_close(e_o3[0], e_o3[1], rtol=1e-10, atol=1e-9)
    # an SO(3) model can tell a chiral structure from its mirror image once it has the depth to
    # form a triple product (r1 x r2) . r3: layer 2 makes the cross product, layer 3 the dot
    torch.manual_seed(0)
    so3 = build_model(dict(CONFIGS["nequip-so3-l3"], num_layers=3, avg_num_neighbors=4.0), TYPES, torch.float64)
    e_so3 = [_predict(so3, [a])[K.TOTAL_ENERGY] for a in (atoms, _transform(atoms, mirror))]
    assert abs(float(e_so3[0] - e_so3[1])) > 1e-8


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forces_and_stress_equal_finite_differences(name, rng):
    model = _model(name)
    atoms = _crystal(rng)
    out = _predict(model, [atoms])
    h = 1e-5

    def energy(a):
        return float(_predict(model, [a], stress=False)[K.TOTAL_ENERGY][0])

    fd_forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for d in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, d] += h
            minus.positions[i, d] -= h
            fd_forces[i, d] = -(energy(plus) - energy(minus)) / (2 * h)
    np.testing.assert_allclose(out[K.FORCES].numpy(), fd_forces, atol=1e-7)

    volume = atoms.get_volume()
    fd_stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = h / 2 if a != b else h
            strained = []
            for sign in (1, -1):
                s = atoms.copy()
                s.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
                strained.append(energy(s))
            # symmetric strain with eps_ab = eps_ba = h/2 moves E by h * sigma_ab * V
            fd_stress[a, b] = (strained[0] - strained[1]) / (2 * h) / volume
    np.testing.assert_allclose(out[K.STRESS][0].numpy(), fd_stress, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_supercell_is_extensive(name, rng):
    model = _model(name)
    atoms = _crystal(rng)  # cell ~3.3 A is about r_max: atoms see their own images
    sc = atoms.repeat((2, 2, 2))
    one, eight = _predict(model, [atoms]), _predict(model, [sc])
    torch.testing.assert_close(eight[K.TOTAL_ENERGY], 8 * one[K.TOTAL_ENERGY], rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(eight[K.FORCES].numpy()[: len(atoms)], one[K.FORCES].numpy(), atol=1e-9)
    np.testing.assert_allclose(eight[K.STRESS].numpy(), one[K.STRESS].numpy(), atol=1e-10)


def test_cell_smaller_than_cutoff():
    atoms = bulk("C", "diamond", a=2.0)  # 2 atoms, cell vectors ~1.4 A, r_max 3 A
    atoms.rattle(0.01, seed=2)
    out = _predict(_model("nequip-o3"), [atoms])
    out8 = _predict(_model("nequip-o3"), [atoms.repeat(2)])
    torch.testing.assert_close(out8[K.TOTAL_ENERGY], 8 * out[K.TOTAL_ENERGY], rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_energy_and_forces_continuous_at_cutoff(name):
    """An atom crossing atom 0's cutoff sphere (and nobody else's): the envelope and the Bessel
    basis vanish at r_max with two zero derivatives, so E approaches its far value as
    (r_max - r)^3 and the force on the crossing atom goes to zero."""
    model = _model(name)
    base = np.array([[0.0, 0, 0], [-1.1, 0, 0], [-0.5, -1.0, 0]])

    def at(x):
        atoms = Atoms("CHOH", positions=np.vstack([base, [[x, 0, 0]]]))
        out = _predict(model, [atoms], stress=False)
        return float(out[K.TOTAL_ENERGY][0]), out[K.FORCES].numpy()

    e_out, f_out = at(R_MAX + 1e-3)
    e_far, _ = at(R_MAX + 5.0)
    assert e_out == pytest.approx(e_far, abs=1e-12)
    assert np.all(f_out[3] == 0)
    gaps = []
    for delta in (1e-2, 1e-3):
        e_in, f_in = at(R_MAX - delta)
        gaps.append(abs(e_in - e_out))
        assert np.abs(f_in[3]).max() < 50 * delta ** 2  # force ~ (r_max - r)^2
    assert gaps[0] > 0  # the neighbour does interact inside the cutoff
    assert gaps[1] < 2e-3 * gaps[0] + 1e-13  # cubic: 10x closer -> ~1000x smaller


def test_atom_without_neighbours_gets_species_energy():
    model = _model("nequip-o3")
    alone = _predict(model, [Atoms("O", positions=[[0, 0, 0]])], stress=False)
    pair_far = _predict(model, [Atoms("OO", positions=[[0, 0, 0], [20, 0, 0]])], stress=False)
    torch.testing.assert_close(pair_far[K.TOTAL_ENERGY], 2 * alone[K.TOTAL_ENERGY])
    assert torch.all(pair_far[K.FORCES] == 0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_equals_individual(name, rng):
    model = _model(name)
    structures = [_molecule(rng, 5), _crystal(rng), _molecule(rng, 8), _crystal(rng)]
    batched = _predict(model, structures)
    offset = 0
    for b, atoms in enumerate(structures):
        alone = _predict(model, [atoms])
        torch.testing.assert_close(batched[K.TOTAL_ENERGY][b], alone[K.TOTAL_ENERGY][0], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(batched[K.FORCES][offset:offset + len(atoms)], alone[K.FORCES], rtol=0, atol=1e-10)
        torch.testing.assert_close(batched[K.STRESS][b], alone[K.STRESS][0], rtol=0, atol=1e-12)
        offset += len(atoms)


def test_training_mode_keeps_force_graph():
    model = _model("nequip-o3")
    tm = TypeMapper(TYPES)
    g = frame_to_graph(frames_from_atoms_list([_crystal(np.random.default_rng(0))])[0], tm, R_MAX)
    out = model(g, compute_forces=True, compute_stress=True, training=True)
    loss = out[K.FORCES].pow(2).sum() + out[K.STRESS].pow(2).sum()
    loss.backward()
    # every parameter but the per-species energy offset (a constant: no force) gets a gradient
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.pop("energy_model.scale_shift.correction") is None
    assert all(g is not None for g in grads.values()) and any(float(g.abs().sum()) > 0 for g in grads.values())


def test_stress_alone_and_inputs_untouched(rng):
    model = _model("nequip-o3")
    tm = TypeMapper(TYPES)
    g = frame_to_graph(frames_from_atoms_list([_crystal(rng)])[0], tm, R_MAX)
    both = model(g, compute_forces=True, compute_stress=True)
    only = model(g, compute_forces=False, compute_stress=True)
    torch.testing.assert_close(only[K.STRESS], both[K.STRESS], rtol=0, atol=0)
    assert not g[K.POSITIONS].requires_grad  # the caller's positions were not turned into a graph leaf
