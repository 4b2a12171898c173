"""Shared by the compat tests (test_mace_compat.py, test_nequip_compat.py): copying a peer
program's weights into mlip's compat model where both programs lay them out alike."""
from typing import Sequence, Tuple

import torch


def copy_radial_mlp(layer, peer_weights: Sequence[torch.Tensor], peer_paths: Sequence[Tuple[int, int, int]],
                    channels: int) -> None:
    """The radial MLP of ``layer`` (a block with ``radial_mlp`` and ``message.spec``) from the
    peer's layer weights [fan_in, fan_out]; the last layer's output columns (``channels`` per
    path) go from the peer's path order, ``peer_paths`` = (input irrep, harmonic, l_out) per
    path, to mlip's."""
    weights = layer.radial_mlp.weights
    assert len(weights) == len(peer_weights)
    for k, (w, src) in enumerate(zip(weights, peer_weights)):
        if k == len(weights) - 1:
            order = [list(peer_paths).index((p.i_in, p.i_sh, p.l_out)) for p in layer.message.spec.paths]
            src = torch.cat([src[:, j * channels:(j + 1) * channels] for j in order], 1)
        w.copy_(src)
