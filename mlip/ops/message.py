"""The message step as one operation: gather, tensor product, radial weights, scatter-sum.

    out[i] = sum over edges e = (i, j) of  W[e] * TP(h[j], Y[e])

This module is the torch reference (and the CPU path). It is the only place the model
touches per-edge messages, so a fused kernel can replace it without changing the model:
:class:`MessagePassing` runs the kernel that :mod:`mlip.ops.policy` chooses for its ``backend``
("auto", "torch", "cpu" or "triton"), the tensors' device and the context.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from mlip.ops import cpu_message
from mlip.ops.policy import MESSAGE_BACKENDS, current_policy
from mlip.ops.tensor_product import TensorProductSpec


def message_reference(node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                      edge_index: torch.Tensor, cg: torch.Tensor, path_of_output: torch.Tensor,
                      num_nodes: int) -> torch.Tensor:
    """Plain-torch message step.

    node_feats [N, Din, C]; edge_sh [E, Dsh]; edge_weights [E, P, C]; edge_index [2, E] (row 0
    receiver, row 1 sender); cg [Din, Dsh, Dout]; path_of_output [Dout]. Returns [N, Dout, C].
    """
    receiver, sender = edge_index[0], edge_index[1]
    d_in, d_sh, d_out = cg.shape
    # A[e] = sum_j Y[e, j] CG[:, j, :]  -> [E, Dout, Din]; one matmul for all paths
    coupling = (edge_sh @ cg.transpose(0, 1).reshape(d_sh, d_in * d_out)).view(-1, d_in, d_out)
    messages = torch.bmm(coupling.transpose(1, 2), node_feats.index_select(0, sender))  # [E, Dout, C]
    messages = messages * edge_weights.index_select(1, path_of_output)
    out = torch.zeros(num_nodes, d_out, node_feats.shape[2], dtype=messages.dtype, device=messages.device)
    return out.index_add_(0, receiver, messages)


def message_grouped(node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                    edge_index: torch.Tensor, cg: torch.Tensor, weight_groups: List[Tuple[int, int, int, int]],
                    num_nodes: int) -> torch.Tensor:
    """Same result as :func:`message_reference`, faster: weights broadcast over each block of
    paths that share an output irrep (paths ordered by output irrep, see
    ``TensorProductSpec.weight_groups``) instead of being gathered per output component, which
    saves a [E, Dout, C] copy and, in the backward, a scatter of the same size.

    Each block's messages come from their own slice of the (small) coupling tensor, so no
    [E, Dout, C] tensor is ever sliced: the backward of a slice would zero-fill and add
    full-size gradients. With one input component (the first layer: scalars in) the
    per-edge product is an outer product, done as a broadcast multiply (a batched matmul
    with an inner dimension of 1 is several times slower on CPU)."""
    receiver, sender = edge_index[0], edge_index[1]
    d_in, d_sh, d_out = cg.shape
    channels = node_feats.shape[2]
    n_edges = edge_sh.shape[0]
    coupling = (edge_sh @ cg.transpose(0, 1).reshape(d_sh, d_in * d_out)).view(-1, d_in, d_out)
    gathered = node_feats.index_select(0, sender)  # [E, Din, C]
    outs: List[torch.Tensor] = []
    for first, count, comp, m in weight_groups:
        a = coupling[:, :, comp:comp + count * m]  # [E, Din, count * m]
        w = edge_weights[:, first:first + count].unsqueeze(2)  # [E, count, 1, C]
        if d_in == 1:
            # weights times features first ([E, count, 1, C]), then the 2l+1 components
            block = a.reshape(n_edges, count, m, 1) * (gathered.unsqueeze(1) * w)
        else:
            block = torch.bmm(a.transpose(1, 2), gathered).view(n_edges, count, m, channels) * w
        # scatter each block on its own (no [E, Dout, C] concatenation, whose backward of
        # the backward would zero-fill and add full-size tensors); concatenate per node
        out = torch.zeros(num_nodes, count * m, channels, dtype=block.dtype, device=block.device)
        outs.append(out.index_add_(0, receiver, block.reshape(n_edges, count * m, channels)))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class MessagePassing(nn.Module):
    """Channel-wise tensor-product convolution over a graph; declares its irreps like e3nn.

    ``backend``: "torch" always uses the plain-torch path (:func:`message_grouped`); "triton"
    requires the fused GPU kernel, "cpu" the fused C++ kernel; "auto" uses the fused kernel
    that fits the tensors' device when it is available (Triton on CUDA, C++ on CPU), else torch.
    TorchScript (exported models, LAMMPS) always runs the torch path. The full rules, contexts
    included: :mod:`mlip.ops.policy`.
    """

    def __init__(self, spec: TensorProductSpec, channels: int, backend: str = "auto"):
        super().__init__()
        if backend not in MESSAGE_BACKENDS:
            raise ValueError(f"backend must be 'auto', 'torch', 'triton' or 'cpu', got '{backend}'")
        self.spec = spec
        self.channels = channels
        self.backend = backend
        self.num_paths = spec.num_paths
        self.register_buffer("cg", spec.cg_tensor(torch.get_default_dtype()))
        self.weight_groups: List[Tuple[int, int, int, int]] = spec.weight_groups()
        from mlip.irreps import e3nn_irreps
        self.irreps_in = e3nn_irreps(spec.irreps_in, channels)
        self.irreps_sh = e3nn_irreps(spec.irreps_sh, 1)
        self.irreps_out = e3nn_irreps(spec.irreps_out, channels)

    def forward(self, node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                edge_index: torch.Tensor, edge_pair: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``edge_weights`` [E, P, C], or [pairs, P, C] with ``edge_pair`` [E] (the row of each edge:
        opposite edges have the same length, hence the same radial weights)."""
        if not torch.jit.is_scripting():  # not compiled by TorchScript, see mlip.ops.policy
            kernel = current_policy().message_kernel(self.backend, node_feats.device.type)
            if kernel != "torch":
                return self._fused(kernel, node_feats, edge_sh, edge_weights, edge_index, edge_pair)
        if edge_pair is not None:
            edge_weights = edge_weights.index_select(0, edge_pair)
        return message_grouped(node_feats, edge_sh, edge_weights, edge_index, self.cg.to(node_feats.dtype),
                               self.weight_groups, node_feats.shape[0])

    def _fused(self, kernel: str, node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
               edge_index: torch.Tensor, edge_pair: Optional[torch.Tensor]) -> torch.Tensor:
        """The message step by the fused ``kernel`` ("cpu" or "triton"); eager calls only."""
        if kernel == "cpu":  # reads the shared rows itself
            return cpu_message.fused_message_cpu(node_feats, edge_sh, edge_weights, edge_index, self.spec,
                                                 node_feats.shape[0], edge_pair)
        if edge_pair is not None:
            edge_weights = edge_weights.index_select(0, edge_pair)
        # imported at the call: Triton takes seconds to import, and where it is missing an explicit
        # backend="triton" fails here, with the import's own error
        from mlip.ops.triton_message import fused_message
        return fused_message(node_feats, edge_sh, edge_weights, edge_index, self.spec, node_feats.shape[0])
