"""The symmetric contraction and its generalised Clebsch-Gordan (U) tensors.

Formulation under test (see mlip/nn/cg_coupling.py): for order nu and output irrep (L, P),
U^nu[M, i_1, ..., i_nu, k] is a basis of the symmetric equivariant nu-linear maps from the
A-basis (one channel, irreps ``irreps_in``) to (L, P). "Symmetric in its inputs" means: the
order-nu term, viewed as a multilinear map of nu *different* inputs,
    T(x_1, ..., x_nu)[M, c] = sum_k W[z, k, c] sum_i U[M, i_1..i_nu, k] x_1[i_1, c] ... x_nu[i_nu, c],
is unchanged by every permutation of (x_1, ..., x_nu) (equivalently, U is invariant under
permutations of its nu input axes), and the module's output is sum_nu T(A, ..., A).
"""
import itertools
import math

import numpy as np
import pytest
import torch
from e3nn.util.test import assert_equivariant
from scipy.spatial.transform import Rotation

from mlip.nn.cg_coupling import coupling_basis
from mlip.irreps import from_e3nn, hidden_irreps, irreps_dim, irreps_slices, sh_irreps, to_e3nn, wigner_D
from mlip.nn.symmetric_contraction import SymmetricContraction, reachable_outputs

C = 3


pytestmark = pytest.mark.usefixtures("float64_default")


def _random_o3(seed, improper):
    R = torch.as_tensor(Rotation.random(random_state=seed).as_matrix())
    return -R if improper else R


# ---- the U tensors themselves --------------------------------------------------------------

CASES = [(sh_irreps(1, True), 3), (sh_irreps(2, True), 3), (sh_irreps(3, True), 2), (sh_irreps(3, True), 3),
         (sh_irreps(2, False), 3), (hidden_irreps(1, True), 2)]  # last: both parities of 0 and 1


def _apply_input_rotation(u, d_in, nu):
    """(U o D(g)^{x nu})[M, j_1..j_nu, k] = sum_i U[M, i_1..i_nu, k] D[i_1, j_1] ... D[i_nu, j_nu]."""
    for axis in range(1, nu + 1):
        u = torch.movedim(torch.tensordot(u, d_in, dims=([axis], [0])), -1, axis)
    return u


@pytest.mark.parametrize("irreps_in,nu", CASES)
def test_u_tensors_are_equivariant_symmetric_orthogonal(irreps_in, nu):
    parity = any(p == -1 for _, p in irreps_in)
    for L in range(4):
        for P in ((1, -1) if parity else (1,)):
            u = coupling_basis(irreps_in, nu, (L, P))
            k = u.shape[-1]
            if k == 0:
                continue
            # equivariance: D_L(g) U = U (D(g) x ... x D(g)), for rotations and improper rotations
            for seed, improper in ((1, False), (2, True)):
                if improper and not parity:
                    continue
                g = _random_o3(seed, improper)
                d_in, d_out = wigner_D(irreps_in, g), wigner_D([(L, P)], g)
                lhs = torch.tensordot(d_out, u, dims=([1], [0]))
                rhs = _apply_input_rotation(u, d_in, nu)
                torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
            # symmetric in the nu input axes
            for perm in itertools.permutations(range(1, nu + 1)):
                torch.testing.assert_close(u.permute(0, *perm, nu + 1), u, rtol=0, atol=1e-14)
            # orthogonal paths, each of squared norm 2L + 1 (linearly independent)
            flat = u.reshape(-1, k)
            torch.testing.assert_close(flat.T @ flat, (2 * L + 1) * torch.eye(k), rtol=0, atol=1e-12)


def _haar_dimension(irreps_in, nu, ir_out, parity):
    """dim Hom_G(Sym^nu V, V_L) by character integration (independent of the construction).

    Class function of a rotation by theta (Haar weight (1 - cos theta) / pi on [0, pi]);
    chi_l = sin((2l+1) theta / 2) / sin(theta / 2). For an improper g = -R, chi_{l,p}(g) = p chi_l(R),
    g^2 = R^2 (proper) and g^3 = -R^3. chi_{Sym^nu} from the power sums (Newton's identities).
    """
    n = 4000  # midpoint rule: exact to rounding for these trigonometric polynomials
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n

    def chi_l(l, t):
        return torch.sin((2 * l + 1) * t / 2) / torch.sin(t / 2)

    def chi_v(t, sign_power):
        return sum((p ** sign_power) * chi_l(l, t) for l, p in irreps_in)

    def sym(improper):
        s = 1 if improper else 0
        p1, p2, p3 = chi_v(theta, s), chi_v(2 * theta, 0), chi_v(3 * theta, s)
        return {1: p1, 2: (p1 ** 2 + p2) / 2, 3: (p1 ** 3 + 3 * p1 * p2 + 2 * p3) / 6}[nu]

    weight = (1 - torch.cos(theta)) / math.pi * (math.pi / n)
    L, P = ir_out
    proper = float((sym(False) * chi_l(L, theta) * weight).sum())
    if not parity:
        return proper
    improper = float((sym(True) * P * chi_l(L, theta) * weight).sum())
    return 0.5 * (proper + improper)


@pytest.mark.parametrize("irreps_in,nu", CASES + [(sh_irreps(3, False), 3)])
def test_u_basis_is_complete(irreps_in, nu):
    """K equals the dimension of the space of symmetric equivariant maps: together with the
    previous test (each path is one, and they are independent) the paths span all of it."""
    parity = any(p == -1 for _, p in irreps_in)
    for L in range(4):
        for P in ((1, -1) if parity else (1,)):
            k = coupling_basis(irreps_in, nu, (L, P)).shape[-1]
            dim = _haar_dimension(irreps_in, nu, (L, P), parity)
            assert abs(dim - round(dim)) < 1e-6, dim
            assert k == round(dim), (irreps_in, nu, L, P, k, dim)


def test_known_path_counts():
    # A = 0e + 1o: order 2 invariants are a0^2 and a1.a1; order 3 vectors: a0^2 a1 and (a1.a1) a1
    a = sh_irreps(1, True)
    assert coupling_basis(a, 2, (0, 1)).shape[-1] == 2
    assert coupling_basis(a, 2, (1, 1)).shape[-1] == 0  # a1 x a1 is antisymmetric: gone
    assert coupling_basis(a, 2, (1, -1)).shape[-1] == 1
    assert coupling_basis(a, 3, (1, -1)).shape[-1] == 2
    assert reachable_outputs(a, [(0, 1), (1, -1), (2, 1), (3, -1)], 1) == [(0, 1), (1, -1)]
    assert reachable_outputs(a, [(0, 1), (1, -1), (2, 1), (3, -1)], 3) == [(0, 1), (1, -1), (2, 1), (3, -1)]


# ---- the module --------------------------------------------------------------------------

MODULE_CASES = [(sh_irreps(3, True), sh_irreps(3, True), 3), (sh_irreps(3, True), sh_irreps(2, True), 2),
                (sh_irreps(2, True), sh_irreps(3, True), 1), (sh_irreps(3, False), sh_irreps(3, False), 3)]


@pytest.mark.parametrize("irreps_in,irreps_out,correlation", MODULE_CASES)
def test_symmetric_contraction_equivariant(irreps_in, irreps_out, correlation):
    irreps_out = reachable_outputs(irreps_in, irreps_out, correlation)
    sc = SymmetricContraction(irreps_in, irreps_out, C, correlation, num_types=3)
    types = torch.tensor([0, 2, 1, 2, 0, 0, 2])
    x = torch.randn(len(types), sc.irreps_in.dim)
    f = lambda x: to_e3nn(sc(from_e3nn(x, irreps_in, C), types), irreps_out)  # noqa: E731
    # e3nn's tolerance is absolute; a degree-3 polynomial of unit inputs reaches |out| ~ 1e2-1e3,
    # so scale it with the output (relative 1e-10: float64 round-off of sums of cubes is ~1e-12,
    # a real equivariance bug is O(1))
    scale = float(f(x).abs().max())
    assert_equivariant(f, args_in=[x], irreps_in=[sc.irreps_in], irreps_out=[sc.irreps_out],
                       tolerance=1e-10 * max(scale, 1.0))
    # and explicitly with Wigner D matrices, an improper rotation included
    a = from_e3nn(x, irreps_in, C)
    out = sc(a, types).detach()
    assert float(out.abs().max()) > 1e-3
    for seed, improper in ((5, False), (6, True)):
        g = _random_o3(seed, improper)
        d_in, d_out = wigner_D(irreps_in, g), wigner_D(irreps_out, g)
        rotated = sc(torch.einsum("ij,njc->nic", d_in, a), types).detach()
        torch.testing.assert_close(rotated, torch.einsum("ij,njc->nic", d_out, out), rtol=0, atol=1e-11)


@pytest.mark.parametrize("nu", [2, 3])
@torch.no_grad()
def test_symmetric_in_its_inputs(nu):
    irreps_in, irreps_out = sh_irreps(2, True), sh_irreps(2, True)
    sc = SymmetricContraction(irreps_in, irreps_out, C, nu, num_types=2)
    types = torch.tensor([0, 1, 1, 0, 1])
    d = irreps_dim(irreps_in)
    xs = [torch.randn(len(types), d, C) for _ in range(nu)]
    ref = sc.multilinear(xs, types, nu)
    for a, b in irreps_slices(irreps_out):
        assert float(ref[:, a:b].abs().max()) > 1e-3  # every output irrep has an order-nu path here
    for perm in itertools.permutations(range(nu)):
        torch.testing.assert_close(sc.multilinear([xs[p] for p in perm], types, nu), ref, rtol=0, atol=1e-12)
    # not a permutation of the inputs: must differ (the comparison can fail)
    y = [xs[0] + xs[1]] + xs[1:]
    assert float((sc.multilinear(y, types, nu) - ref).abs().max()) > 1e-6


@torch.no_grad()
@pytest.mark.parametrize("irreps_in,irreps_out,correlation", MODULE_CASES)
def test_forward_equals_dense_definition(irreps_in, irreps_out, correlation):
    """The compressed evaluation (sorted monomials, per-species matmuls) equals
    sum_nu T(A, ..., A) computed with the dense U and each node's own species weights."""
    irreps_out = reachable_outputs(irreps_in, irreps_out, correlation)
    sc = SymmetricContraction(irreps_in, irreps_out, C, correlation, num_types=3)
    types = torch.tensor([2, 0, 1, 2, 2, 0])
    a = torch.randn(len(types), irreps_dim(irreps_in), C)
    terms = [sc.multilinear([a] * nu, types, nu) for nu in range(1, correlation + 1)]
    out = sc(a, types)
    torch.testing.assert_close(out, sum(terms), rtol=1e-12, atol=1e-12)
    # homogeneity: A -> s A scales the order-nu term by s^nu (every order contributes)
    s = 1.7
    torch.testing.assert_close(sc(s * a, types), sum(s ** (nu + 1) * t for nu, t in enumerate(terms)),
                               rtol=1e-12, atol=1e-12)
    assert all(float(t.abs().max()) > 1e-6 for t in terms)
    # a node's output depends only on its own species' weights and its own A
    single = torch.cat([sc(a[i:i + 1], types[i:i + 1]) for i in range(len(types))])
    torch.testing.assert_close(single, out, rtol=1e-12, atol=1e-12)
    # and the weights of a species really matter
    sc.weight[2] += 1.0
    changed = sc(a, types)
    assert float((changed[types == 2] - out[types == 2]).abs().max()) > 1e-6
    torch.testing.assert_close(changed[types != 2], out[types != 2], rtol=0, atol=0)


def test_symmetric_contraction_scripts_and_matches_eager():
    irreps_in = sh_irreps(3, True)
    sc = SymmetricContraction(irreps_in, sh_irreps(1, True), C, 3, num_types=2)
    scripted = torch.jit.script(sc)
    types = torch.tensor([1, 0, 1])
    a = torch.randn(3, irreps_dim(irreps_in), C)
    torch.testing.assert_close(scripted(a, types), sc(a, types), rtol=0, atol=0)
    with pytest.raises(ValueError):
        SymmetricContraction(sh_irreps(1, True), [(3, -1)], C, 1, num_types=1)  # unreachable output
