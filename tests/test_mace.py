"""The MACE architecture end to end through the shared Potential: the physics suite (symmetries,
exact derivatives, periodicity, cutoff smoothness, batching) for several MACE variants, the body
order of the product basis, TorchScript, and state-dict round trips.

tests/test_physics.py also runs its suite on one MACE config; the variants here cover
correlation 1-3, hidden max_L 0-2, harmonics up to l = 3 and an SO(3)-only model."""
import itertools

import numpy as np
import pytest
import torch
from ase import Atoms

from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
from mlip.data import keys as K
from mlip.nn import build_model
from mlip.nn.mace import MACEModel

TYPES = ["H", "C", "O"]
R_MAX = 3.0
SHIFTS = [-13.6, -1029.0, -2041.0]

VARIANTS = {
    "c1-L1": dict(correlation=1, max_L=1, l_max=1, num_interactions=2),
    "c2-L2-l3": dict(correlation=2, max_L=2, l_max=3, num_interactions=2),
    "c3-L0-3layers": dict(correlation=3, max_L=0, l_max=2, num_interactions=3),
    "c3-so3": dict(correlation=3, max_L=1, l_max=2, num_interactions=2, parity=False),
    "compat-c3-L1": dict(correlation=3, max_L=1, l_max=2, num_interactions=2, mace_compat=True),
}


def _model(name_or_cfg, dtype=torch.float64, seed=0, **over):
    torch.manual_seed(seed)
    cfg = VARIANTS[name_or_cfg] if isinstance(name_or_cfg, str) else name_or_cfg
    cfg = {**dict(architecture="mace", channels=4, r_max=R_MAX, radial_hidden=8, radial_depth=2,
                  avg_num_neighbors=4.0, atomic_energy_shifts=SHIFTS, atomic_energy_scales=[0.7, 1.1, 0.9]),
           **cfg, **over}
    return build_model(cfg, TYPES, dtype)


def _graph(atoms_list, dtype=torch.float64):
    tm = TypeMapper(TYPES)
    return collate([frame_to_graph(f, tm, R_MAX, dtype) for f in frames_from_atoms_list(atoms_list)])


def _predict(model, atoms_list, dtype=torch.float64, stress=True):
    out = model(_graph(atoms_list, dtype), compute_forces=True, compute_stress=stress)
    return {k: out[k].detach() for k in (K.TOTAL_ENERGY, K.FORCES, K.STRESS, K.ATOMIC_ENERGY) if k in out}


def _molecule(rng, n=6):
    """A compact random cluster: every atom has at least two neighbours within r_max."""
    while True:
        atoms = Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=rng.normal(size=(n, 3)) * 0.9)
        d = atoms.get_all_distances()
        if n < 3 or (d.min(initial=9, where=~np.eye(n, dtype=bool)) > 0.5 and ((d < R_MAX).sum(1) - 1 >= 2).all()):
            return atoms


def _crystal(rng, n=4):
    cell = np.eye(3) * 3.3 + rng.uniform(-0.3, 0.3, (3, 3))
    return Atoms(numbers=rng.choice([1, 6, 8], size=n), scaled_positions=rng.uniform(0, 1, (n, 3)), cell=cell,
                 pbc=True)


# ---- physics suite ------------------------------------------------------------------------

# The physics suite (symmetries, finite differences, supercell, cutoff, batching) runs for these
# variants in tests/test_physics.py, which covers every architecture.


def test_isolated_atom_energy_is_its_shift():
    """No neighbours -> A = 0 -> every product, residual and readout is zero: E = E0 exactly."""
    model = _model("c2-L2-l3")
    out = _predict(model, [Atoms("HCO", positions=[[0, 0, 0], [10, 0, 0], [0, 10, 0]])], stress=False)
    torch.testing.assert_close(out[K.ATOMIC_ENERGY].squeeze(-1), torch.tensor(SHIFTS, dtype=torch.float64),
                               rtol=0, atol=0)
    assert torch.all(out[K.FORCES] == 0)


# ---- body order ---------------------------------------------------------------------------

def _centre_energy(model, neighbours, present):
    """Atomic energy of a C atom at the origin with the neighbours listed in ``present``."""
    numbers = [6] + [neighbours[i][0] for i in present]
    positions = [[0.0, 0.0, 0.0]] + [neighbours[i][1] for i in present]
    return float(_predict(model, [Atoms(numbers=numbers, positions=positions)], stress=False)[K.ATOMIC_ENERGY][0, 0])


def _inclusion_exclusion(model, neighbours):
    """sum over subsets S of the neighbours of (-1)^(n - |S|) E_centre(S): the part of the centre's
    energy that needs all n neighbours at once. Zero when E_centre has body order <= n (centre + n-1)."""
    n = len(neighbours)
    return sum((-1) ** (n - len(s)) * _centre_energy(model, neighbours, s)
               for k in range(n + 1) for s in itertools.combinations(range(n), k))


NEIGHBOURS = [(1, [1.1, 0.2, -0.1]), (8, [-0.3, 1.3, 0.4]), (1, [0.2, -0.5, -1.2]), (6, [-1.0, -0.7, 0.6])]


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_single_layer_has_body_order_correlation_plus_one(correlation):
    """One layer, linear readout: E_centre = linear(B), B a polynomial of degree <= correlation in
    A = sum_j phi(r_cj, z_j). So the inclusion-exclusion over correlation + 1 neighbours vanishes
    (body order correlation + 1), while over correlation neighbours it does not.
    correlation = 1: E(c+{a,b}) - E(c+{a}) - E(c+{b}) + E(c) == 0, a pair potential."""
    model = _model(dict(correlation=correlation, max_L=1, l_max=2, num_interactions=1, nonlinear_readout=False,
                        channels=6))
    scale = abs(_centre_energy(model, NEIGHBOURS, [0]) - _centre_energy(model, NEIGHBOURS, []))
    assert scale > 1e-3
    full = _inclusion_exclusion(model, NEIGHBOURS[:correlation + 1])
    assert abs(full) < 1e-12 * max(scale, 1.0), full
    assert abs(_inclusion_exclusion(model, NEIGHBOURS[:correlation])) > 1e-6 * scale


def test_correlation_one_single_layer_total_energy_is_a_pair_potential(rng):
    """E(S) = sum_{i<j} E({i, j}) - (n - 2) sum_i E({i}) for any structure S of n atoms."""
    model = _model(dict(correlation=1, max_L=1, l_max=2, num_interactions=1, nonlinear_readout=False))
    atoms = _molecule(rng, 5)

    def energy(idx):
        return float(_predict(model, [atoms[list(idx)]], stress=False)[K.TOTAL_ENERGY][0])

    n = len(atoms)
    pairs = sum(energy(p) for p in itertools.combinations(range(n), 2))
    singles = sum(energy([i]) for i in range(n))
    total = energy(range(n))
    assert total == pytest.approx(pairs - (n - 2) * singles, rel=0, abs=1e-10)
    # the same identity fails for correlation 2 (a genuine 3-body term), so the test can fail
    model2 = _model(dict(correlation=2, max_L=1, l_max=2, num_interactions=1, nonlinear_readout=False))
    e2 = lambda idx: float(_predict(model2, [atoms[list(idx)]], stress=False)[K.TOTAL_ENERGY][0])  # noqa: E731
    gap = e2(range(n)) - (sum(e2(p) for p in itertools.combinations(range(n), 2)) - (n - 2) * sum(e2([i]) for i in range(n)))
    assert abs(gap) > 1e-6


def test_nonlinear_readout_or_second_layer_raise_body_order():
    """Controls: correlation 1 but a nonlinear readout, or two layers, are not pair potentials."""
    for over in (dict(num_interactions=1, nonlinear_readout=True), dict(num_interactions=2, nonlinear_readout=False)):
        model = _model(dict(correlation=1, max_L=1, l_max=2, channels=6, **over))
        assert abs(_inclusion_exclusion(model, NEIGHBOURS[:2])) > 1e-8


# ---- deployment ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["c2-L2-l3", "compat-c3-L1"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torchscript_matches_eager(dtype, variant, rng, tmp_path):
    model = _model(variant, dtype)
    scripted = torch.jit.script(model)
    path = tmp_path / "mace.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    graph = _graph([_crystal(rng), _molecule(rng)], dtype)
    ref = model(dict(graph), compute_forces=True, compute_stress=True)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for m in (scripted, loaded):
        out = m(dict(graph), compute_forces=True, compute_stress=True)
        for key in (K.TOTAL_ENERGY, K.ATOMIC_ENERGY, K.FORCES, K.STRESS):
            torch.testing.assert_close(out[key], ref[key], **tol)


def test_state_dict_round_trip_rebuilds_identical_model(rng):
    """The U tensors are rebuilt at construction (not stored): a model built with another seed
    and loaded from the state dict is identical, strict loading included."""
    a, b = _model("c3-L0-3layers", seed=0), _model("c3-L0-3layers", seed=1)
    atoms = [_molecule(rng)]
    assert float((_predict(a, atoms)[K.TOTAL_ENERGY] - _predict(b, atoms)[K.TOTAL_ENERGY]).abs()) > 1e-6
    b.load_state_dict(a.state_dict(), strict=True)
    torch.testing.assert_close(_predict(b, atoms)[K.FORCES], _predict(a, atoms)[K.FORCES], rtol=0, atol=0)


def test_training_mode_backpropagates_force_loss(rng):
    model = _model("c2-L2-l3")
    out = model(_graph([_crystal(rng)]), compute_forces=True, compute_stress=True, training=True)
    (out[K.FORCES].pow(2).sum() + out[K.STRESS].pow(2).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.pop("energy_model.scale_shift.correction") is None  # a constant offset feels no force
    assert all(g is not None for g in grads.values())
    assert sum(float(g.abs().sum()) > 0 for g in grads.values()) > 0.9 * len(grads)


def test_config_validation():
    with pytest.raises(ValueError):
        MACEModel(num_types=2, correlation=4)
    with pytest.raises(ValueError):
        MACEModel(num_types=2, max_L=3, l_max=2)
    with pytest.raises(ValueError):
        MACEModel(num_types=2, num_interactions=0)
