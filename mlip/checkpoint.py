"""Model and checkpoint files: written atomically, read without unpickling code.

A file is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it. Its ``model`` entry holds everything needed to
rebuild the network: the architecture config with the statistics already filled in
(E0 shifts, scales, average neighbour count), ``type_names`` and ``dtype``. Training adds
optimiser, scheduler, EMA and RNG states next to it (see :mod:`mlip.train`).
"""
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional

import torch

from mlip.errors import InputError

FORMAT = "mlip-1"


def model_record(model_config: Mapping[str, Any], type_names: List[str], dtype: str,
                 state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """What is needed to rebuild a model: config (JSON-able), species, dtype, weights."""
    return {"config": dict(model_config), "type_names": list(type_names), "dtype": dtype,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}


def atomic_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_torchscript_file(path: str) -> bool:
    """True for a TorchScript archive (``torch.jit.save``), False for anything else."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except OSError:
        return False
    return any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names)


def load_file(path: str, map_location: str = "cpu") -> Dict[str, Any]:
    """Load an mlip checkpoint or model file safely (no pickled code is executed)."""
    if not os.path.exists(path):
        raise InputError("file not found", path)
    if is_torchscript_file(path):
        # torch.load would hand a TorchScript archive to torch.jit.load, which runs its code
        raise InputError("this is an exported TorchScript model, not a checkpoint; use it with "
                         "MLIPCalculator or LAMMPS, or export again from the checkpoint", path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"not a readable mlip checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})", path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "model" not in obj:
        raise InputError(f"not an mlip checkpoint (expected format '{FORMAT}' with a 'model' entry)", path)
    return obj


def save_model_file(path: str, record: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> None:
    """Save a model record (plus any training state in ``extra``) atomically."""
    obj = {"format": FORMAT, "model": record}
    if extra:
        obj.update(extra)
    atomic_save(obj, path)


def build_from_record(record: Mapping[str, Any], dtype: Optional[str] = None, device: str = "cpu",
                      message_backend: Optional[str] = None):
    """Rebuild the :class:`~mlip.nn.Potential` of a model record, optionally in another dtype."""
    from mlip.nn import build_model

    config = dict(record["config"])
    if message_backend is not None and config.get("architecture", "nequip") in ("nequip", "mace"):
        config["message_backend"] = message_backend
    model = build_model(config, record["type_names"], dtype or record["dtype"])
    model.load_state_dict(record["state_dict"])
    return model.to(device)


def load_model(path: str, device: str = "cpu", dtype: Optional[str] = None, use_ema: bool = True):
    """Load the model of a checkpoint or model file; EMA weights are preferred when present."""
    obj = load_file(path)
    record = dict(obj["model"])
    if use_ema and obj.get("ema_state_dict") is not None:
        record["state_dict"] = obj["ema_state_dict"]
    return build_from_record(record, dtype=dtype, device=device)
