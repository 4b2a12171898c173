"""``nequip_compat``: NequIP 0.19's ``NequIPGNNModel`` block for block, normalisation for
normalisation. The physics suite (tests/test_physics.py) runs a compat variant too; the slow
tests compare with NequIP itself when its environment is installed
(../shared/bench/setup_peers.sh)."""
import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
from mlip.data import keys as K
from mlip.nn import build_model
from peer_weights import copy_radial_mlp

TYPES = ["H", "C", "N", "O"]


def _config(compat, **kw):
    cfg = dict(architecture="nequip", r_max=4.0, num_layers=3, channels=4, l_max=1, parity=True, num_bessel=8,
               cutoff_p=6, radial_hidden=16, radial_depth=1, readout_hidden=8, avg_num_neighbors=3.0,
               atomic_energy_scales=1.3, atomic_energy_shifts=[-13.6, -1029.0, -1484.0, -2041.0],
               self_connection="embedding", nequip_compat=compat)
    cfg.update(kw)
    return cfg


def _count(module):
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _graph(atoms, r_max=4.0, dtype=torch.float64):
    return collate([frame_to_graph(f, TypeMapper(TYPES), r_max, dtype) for f in frames_from_atoms_list([atoms])])


def _molecule(seed=0, n=7):
    from ase import Atoms

    rng = np.random.default_rng(seed)
    return Atoms(numbers=rng.choice([1, 6, 7, 8], size=n), positions=rng.normal(size=(n, 3)) * 1.1)


def test_compat_has_exactly_nequips_blocks():
    """Against mlip's NequIP with the embedding self-connection: no self-connection in the first
    block, and the Bessel frequencies and energy offset are buffers (NequIP's are fixed), under
    the same state-dict keys."""
    torch.manual_seed(0)
    default = build_model(_config(False), TYPES, torch.float64)
    torch.manual_seed(0)
    compat = build_model(_config(True), TYPES, torch.float64)
    first = default.energy_model.layers[0]
    assert compat.energy_model.layers[0].self_connection is None
    assert _count(default) - _count(compat) == _count(first.self_connection) + 8 + len(TYPES)
    assert set(default.state_dict()) - set(compat.state_dict()) == {
        k for k in default.state_dict() if k.startswith("energy_model.layers.0.self_connection.")}
    assert set(compat.state_dict()) <= set(default.state_dict())
    for layer in compat.energy_model.layers[1:]:
        assert type(layer.self_connection).__name__ == "EmbeddingSelfConnection"
    # self_connection: species is overridden: NequIP has only the bilinear one
    torch.manual_seed(0)
    species = build_model(_config(True, self_connection="species"), TYPES, torch.float64)
    assert list(species.state_dict()) == list(compat.state_dict())


def test_compat_initialisation_is_nequips():
    """NequIP draws its MLPs (radial and readout) uniform on [-sqrt 3, sqrt 3] and everything
    else (species embedding, linear maps, self-connection) normal(0, 1)."""
    torch.manual_seed(0)
    model = build_model(_config(True, channels=16, radial_hidden=64), TYPES, torch.float64).energy_model
    uniform = [p for layer in model.layers for p in layer.radial_mlp.weights] + [model.readout.w1, model.readout.w2]
    normal = [model.embedding.weight] + [p for layer in model.layers for m in (layer.linear_up, layer.linear_down)
                                         for p in m.weights]
    normal += [p for layer in model.layers[1:] for p in layer.self_connection.weights]
    for p in uniform:
        assert float(p.detach().abs().max()) <= math.sqrt(3.0)
    big = torch.cat([p.detach().reshape(-1) for p in uniform])
    assert abs(float(big.var()) - 1.0) < 0.05 and float(big.abs().max()) > 1.7
    big = torch.cat([p.detach().reshape(-1) for p in normal])
    assert abs(float(big.var()) - 1.0) < 0.05 and float(big.abs().max()) > 3.0


def test_compat_without_parity_has_natural_parity():
    torch.manual_seed(0)
    model = build_model(_config(True, parity=False, l_max=2), TYPES, torch.float64).energy_model
    assert model.layers[0].out_irreps_list == [(0, 1), (1, -1), (2, 1)]
    assert model.layers[1].out_irreps_list == [(0, 1), (1, -1), (2, 1)]


def test_compat_round_trips_through_a_model_file(tmp_path):
    """A trained compat model (buffers and parameters) is rebuilt from its file exactly."""
    from mlip.checkpoint import load_model, model_record, save_model_file

    torch.manual_seed(0)
    config = _config(True)
    model = build_model(config, TYPES, torch.float64)
    with torch.no_grad():  # move every parameter off its initial value
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = str(tmp_path / "model.pt")
    save_model_file(path, model_record(config, TYPES, "float64", model.state_dict()))
    loaded = load_model(path)
    graph = _graph(_molecule(2))
    e0 = model(dict(graph), compute_forces=True)
    e1 = loaded(dict(graph), compute_forces=True)
    assert torch.equal(e0[K.TOTAL_ENERGY], e1[K.TOTAL_ENERGY])
    assert torch.allclose(e0[K.FORCES], e1[K.FORCES], atol=1e-14, rtol=0)


@pytest.mark.parametrize("parity", [True, False])
def test_compat_is_scriptable_and_traceable(parity):
    """TorchScript (export, load_any(script=True)) and the traced graph (train.compile) take the
    compat model as they take the default one."""
    from mlip.deploy.calculator import load_any
    from mlip.nn.compiled import CompiledPotential

    torch.manual_seed(0)
    pot = build_model(_config(True, parity=parity), TYPES, torch.float64)
    atoms = _molecule(1)
    ref = pot(_graph(atoms), compute_forces=True)
    scripted = load_any(pot, script=True)
    assert isinstance(scripted.module, torch.jit.ScriptModule)
    traced = CompiledPotential(pot, backend=None)
    out = traced(_graph(atoms), compute_forces=True)
    torch.testing.assert_close(out[K.TOTAL_ENERGY], ref[K.TOTAL_ENERGY], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out[K.FORCES], ref[K.FORCES], rtol=1e-10, atol=1e-12)


PEER_PYTHON = os.path.join(os.environ.get("MLIP_PEERS", os.path.expanduser("~/.cache/mlip-peers")), "nequip", "bin",
                           "python")


def _units(rows, channels):
    """e3nn irreps ([mul, l, p] rows) as mlip's irreps of ``channels`` channels each."""
    out = []
    for mul, l, p in rows:
        assert mul % channels == 0
        out += [(int(l), int(p))] * (mul // channels)
    return out


def _keyed(irreps):
    """(irrep, how many equal irreps come before it): names the same block on both sides, since
    NequIP and mlip order the copies of one irrep alike (their layouts differ only in how
    different irreps are ordered)."""
    seen, out = {}, []
    for ir in irreps:
        out.append((ir, seen.get(ir, 0)))
        seen[ir] = seen.get(ir, 0) + 1
    return out


def _linear_blocks(flat, rows_in, rows_out, channels, extra=1):
    """e3nn's o3.Linear (``extra`` 1) or FullyConnectedTensorProduct with ``extra`` scalars as
    second input: {(in key, out key): [C, extra, C] block}."""
    blocks, k, C = {}, 0, channels
    in_keys = _keyed(_units(rows_in, C))
    out_keys = _keyed(_units(rows_out, C))
    u_in = 0
    for mul_in, l_in, p_in in rows_in:
        u_out = 0
        for mul_out, l_out, p_out in rows_out:
            if (l_in, p_in) == (l_out, p_out):
                w = flat[k:k + mul_in * extra * mul_out].reshape(mul_in, extra, mul_out)
                k += mul_in * extra * mul_out
                for a in range(mul_in // C):
                    for b in range(mul_out // C):
                        blocks[(in_keys[u_in + a], out_keys[u_out + b])] = w[a * C:(a + 1) * C, :, b * C:(b + 1) * C]
            u_out += mul_out // C
        u_in += mul_in // C
    assert k == flat.numel()
    return blocks


def _set_linear(weights, blocks, irreps_in, irreps_out):
    """mlip's IrrepsLinear weights (per output irrep: its input copies stacked, [C*k, C]; or the
    embedding self-connection's [D, C*k, C]) from the blocks of :func:`_linear_blocks`."""
    in_keys, out_keys = _keyed(irreps_in), _keyed(irreps_out)
    present = [o for o in out_keys if any(i[0] == o[0] for i in in_keys)]
    assert len(present) == len(weights)
    for p, o in zip(weights, present):
        # [C, extra, C] per input copy -> [extra, C*k, C]
        w = torch.cat([blocks[(i, o)] for i in in_keys if i[0] == o[0]], 0).permute(1, 0, 2)
        p.copy_(w.reshape(p.shape))


def _load_nequip_weights(model, ref, channels):
    """Copy a NequIPGNNModel's weights (``ref``: the arrays of tests/data/nequip_model.py) into
    mlip's ``nequip_compat`` model of the same settings."""
    from mlip.nn.gate import gate_input_irreps

    state = {k[len("state/"):]: torch.tensor(ref[k]) for k in ref.files if k.startswith("state/")}
    C, D = channels, model.embedding.weight.shape[1]
    model.embedding.weight.copy_(state["type_embed.embed_module.weight"])
    for t, layer in enumerate(model.layers):
        pre = f"layer{t}_convnet.conv."
        feat_in, conv_out = ref[f"feature_in_{t}"], ref[f"conv_out_{t}"]
        irreps_in = _units(feat_in, C)
        assert irreps_in == layer.message.spec.irreps_in
        pre_gate = gate_input_irreps(layer.out_irreps_list)
        assert sorted(_units(conv_out, C)) == sorted(pre_gate)
        _set_linear(layer.linear_up.weights, _linear_blocks(state[pre + "linear_1.weight"], feat_in, feat_in, C),
                    irreps_in, irreps_in)
        # radial MLP: the last layer's columns go from NequIP's path order to mlip's
        mid = [tuple(int(v) for v in row[1:]) for row in ref[f"mid_{t}"]]
        copy_radial_mlp(layer, [state[pre + f"edge_mlp.mlp.{2 * k}.weight"]
                                for k in range(len(layer.radial_mlp.weights))],
                        [(int(i1), int(i2), mid[io][0]) for i1, i2, io in ref[f"instructions_{t}"]], C)
        _set_linear(layer.linear_down.weights,
                    _linear_blocks(state[pre + "linear_2.weight"], ref[f"linear2_in_{t}"], conv_out, C),
                    layer.message.spec.irreps_out, pre_gate)
        assert bool(ref[f"has_sc_{t}"]) == (layer.self_connection is not None)
        if layer.self_connection is not None:
            _set_linear(layer.self_connection.weights,
                        _linear_blocks(state[pre + "sc.weight"], feat_in, conv_out, C, extra=D), irreps_in, pre_gate)
    model.readout.w1.copy_(state["per_atom_energy_readout.mlp_module.mlp.0.weight"])
    model.readout.w2.copy_(state["per_atom_energy_readout.mlp_module.mlp.2.weight"])


PEER_CASES = {
    # NequIPSettings of scripts/compare_peers.py, smaller: O(3), l_max 1, one radial hidden layer; more
    # blocks (six: the odd scalars the third makes reach the energy via 1e and 1o in the next three)
    "o3-l1": dict(num_layers=6, num_features=4, l_max=1, parity=True, radial_mlp_width=16, radial_mlp_depth=1,
                  readout_hidden=8),
    # parity-free (natural parity), l_max 2, two radial hidden layers, four blocks
    "so3-l2": dict(num_layers=4, num_features=3, l_max=2, parity=False, radial_mlp_width=8, radial_mlp_depth=2,
                   readout_hidden=5),
}


def _run_peer(tmp_path, case, seed=0):
    settings = dict(PEER_CASES[case], num_bessels=8, polynomial_cutoff_p=6, r_max=4.0, avg_num_neighbors=3.0,
                    scale=1.3, shifts=[-13.6, -1029.0, -1484.0, -2041.0], seed=seed)
    out = tmp_path / f"nequip_{case}.npz"
    script = os.path.join(os.path.dirname(__file__), "data", "nequip_model.py")
    run = subprocess.run([PEER_PYTHON, script, str(out), json.dumps(settings)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    s = settings
    pot = build_model(dict(architecture="nequip", r_max=s["r_max"], num_layers=s["num_layers"],
                           channels=s["num_features"], l_max=s["l_max"], parity=s["parity"],
                           num_bessel=s["num_bessels"], cutoff_p=s["polynomial_cutoff_p"],
                           radial_hidden=s["radial_mlp_width"], radial_depth=s["radial_mlp_depth"],
                           readout_hidden=s["readout_hidden"], avg_num_neighbors=s["avg_num_neighbors"],
                           atomic_energy_scales=s["scale"], atomic_energy_shifts=s["shifts"], nequip_compat=True),
                      TYPES, torch.float64)
    return np.load(out), pot


def _blocks(model):
    mine = {"type_embed": model.embedding, "per_atom_energy_readout": model.readout}
    for t, layer in enumerate(model.layers):
        pre = f"layer{t}_convnet.conv."
        mine.update({pre + "linear_1": layer.linear_up, pre + "edge_mlp": layer.radial_mlp,
                     pre + "linear_2": layer.linear_down, pre + "sc": layer.self_connection})
    return mine


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PEER_PYTHON), reason="no NequIP environment (../shared/bench/setup_peers.sh)")
@pytest.mark.parametrize("case", sorted(PEER_CASES))
def test_computes_what_nequip_computes(tmp_path, case):
    """NequIP's weights, loaded into mlip's compat model block by block, give NequIP's energy
    and forces: the same blocks, parameter counts, normalisations and paths."""
    ref, pot = _run_peer(tmp_path, case)
    model = pot.energy_model
    mine = _blocks(model)
    numel = {k[len("numel/"):]: int(ref[k]) for k in ref.files if k.startswith("numel/")}
    peer_blocks = {prefix: sum(n for name, n in numel.items() if name.startswith(prefix + ".")) for prefix in mine}
    assert peer_blocks == {prefix: _count(m) for prefix, m in mine.items()}
    assert sum(numel.values()) == _count(pot)

    with torch.no_grad():
        _load_nequip_weights(model, ref, PEER_CASES[case]["num_features"])
    from ase import Atoms

    atoms = Atoms(numbers=ref["numbers"], positions=ref["positions"])
    result = pot(_graph(atoms), compute_forces=True)
    energy, forces = float(result[K.TOTAL_ENERGY].detach()), result[K.FORCES].detach().numpy()
    # of about -1e4 eV: the last digits (e3nn's tanh constant instead of mlip's, 0.08 % apart,
    # moves the six-block model's energy by 2e-7 eV and its forces by 5e-6 eV/A)
    assert abs(energy - float(ref["energy"][0])) < 1e-10
    f_max = float(np.abs(ref["forces"]).max())  # the perturbed weights give large forces
    assert f_max > 1.0
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-13 * f_max)
