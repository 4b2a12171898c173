"""Model and checkpoint files: written atomically, read without unpickling code.

A file is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it. Its ``model`` entry holds everything needed to
rebuild the network: the architecture config with the statistics already filled in
(E0 shifts, scales, average neighbour count), ``type_names`` and ``dtype``. Training adds
optimiser, scheduler, EMA and RNG states next to it (see :mod:`mlip.train`).
"""
import contextlib
import os
import tempfile
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional

import torch

from mlip.errors import InputError, StorageError, describe_os_error, os_error_text

FORMAT = "mlip-1"


def model_record(model_config: Mapping[str, Any], type_names: List[str], dtype: str,
                 state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """What is needed to rebuild a model: config (JSON-able), species, dtype, weights, and the
    version of the hyperparameters' defaults that the config's missing keys mean."""
    from mlip.nn.build import MODEL_DEFAULTS_VERSION

    return {"config": dict(model_config), "type_names": list(type_names), "dtype": dtype,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "defaults_version": MODEL_DEFAULTS_VERSION}


def current_record(record: Mapping[str, Any]) -> Dict[str, Any]:
    """``record`` read under today's defaults: a record written before a default changed gets
    that key's former value written into its config (records without a ``defaults_version``
    predate the versioning: version 1)."""
    from mlip.nn.build import MODEL_DEFAULTS_VERSION, config_under_current_defaults

    out = dict(record)
    out["config"] = config_under_current_defaults(record["config"], int(record.get("defaults_version", 1)))
    out["defaults_version"] = MODEL_DEFAULTS_VERSION
    return out


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator[IO]:
    """A handle on a temporary file in ``path``'s folder; on leaving the block it is flushed,
    fsynced and renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one. If the
    write fails (disk full, quota, read-only), the temporary file is removed and a
    :class:`~mlip.errors.StorageError` names ``path``; the old file is unchanged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp: Optional[str] = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=folder)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        os_error = describe_os_error(exc)
        if os_error is None or isinstance(exc, StorageError):
            raise
        raise StorageError(f"{path}: not written ({os_error_text(os_error)}); its previous version, if any, "
                           "is unchanged") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_file`: the old file or the new one, never a torn one."""
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def ensure_writable_dir(path: str, key: str = "output_dir") -> None:
    """Create the folder ``path`` if needed and prove that a file can be written in it, so that
    a wrong or read-only ``output_dir`` is reported before any data is read."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"is a file, not a folder; set {key} to a folder (new or existing)", path, key=key)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write there ({os_error_text(exc)}); set {key} to a folder you can write to",
                         path, key=key) from None


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
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not the user's business
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"not a readable mlip checkpoint: {_what_the_file_is(path, exc)}", path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "model" not in obj:
        raise InputError(f"not an mlip checkpoint (expected format '{FORMAT}' with a 'model' entry)", path)
    try:  # every reader (evaluation, export, resume, fine-tuning) sees the config as meant
        obj["model"] = current_record(obj["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a usable mlip checkpoint: its model record is damaged ({exc})", path) from None
    return obj


def _what_the_file_is(path: str, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in the user's terms.

    torch's own message advises ``weights_only=False``, which would run any code a malicious
    file carries: it is never repeated. mlip files hold only tensors and plain values.
    """
    import re
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as err:
        return f"cannot read it ({os_error_text(err)})"
    blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if blocked:
        return (f"it holds the Python object {blocked.group(1)}, and loading it would run code from the file; "
                "refused (an mlip checkpoint holds only tensors, numbers, strings, lists and dicts)")
    if not head:
        return "the file is empty (0 bytes)"
    if zipfile.is_zipfile(path):
        if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
            return ("it holds Python objects other than tensors, numbers, strings, lists and dicts; refused, "
                    "since loading them could run code from the file")
        return f"a zip archive that is not a torch checkpoint, or a damaged one ({type(exc).__name__})"
    if head.startswith(b"PK\x03\x04"):
        return "a truncated or damaged checkpoint (the zip archive is cut off: a write that did not finish?)"
    if head[:1] == b"\x80":
        return ("a Python pickle, not a torch zip archive; refused, since unpickling it could run code from "
                "the file")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file; a checkpoint is the .pt file that `mlip train` writes (best_model.pt, checkpoints/)"
    return "neither a torch zip archive nor a pickle (random or foreign bytes)"


def record_of(obj: Mapping[str, Any], ema: bool = True) -> Dict[str, Any]:
    """The model record of a loaded file (:func:`load_file`): config, type_names, dtype and
    state_dict, the EMA weights as state_dict when ``ema`` and the file has them."""
    record = dict(obj["model"])
    record["config"] = dict(record["config"])
    if ema and obj.get("ema_state_dict") is not None:
        record["state_dict"] = obj["ema_state_dict"]
    return record


def load_record(path: str, ema: bool = True) -> Dict[str, Any]:
    """The model record of a model file or training checkpoint (see :func:`record_of`)."""
    return record_of(load_file(path), ema)


def save_model_file(path: str, record: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> None:
    """Save a model record (plus any training state in ``extra``) atomically."""
    obj = {"format": FORMAT, "model": record}
    if extra:
        obj.update(extra)
    atomic_save(obj, path)


def build_from_record(record: Mapping[str, Any], dtype: Optional[str] = None, device: str = "cpu",
                      message_backend: Optional[str] = None):
    """Rebuild the :class:`~mlip.nn.Potential` of a model record, optionally in another dtype."""
    from mlip.nn.build import DEFAULT_ARCHITECTURE, build_model, get_architecture

    config = current_record(record)["config"]
    architecture = get_architecture(config.get("architecture", DEFAULT_ARCHITECTURE))
    if message_backend is not None and "message_backend" in architecture.hyperparameters():
        config["message_backend"] = message_backend
    model = build_model(config, record["type_names"], dtype or record["dtype"])
    model.load_state_dict(record["state_dict"])
    return model.to(device)


def load_model(path: str, device: str = "cpu", dtype: Optional[str] = None, use_ema: bool = True):
    """Load the model of a checkpoint or model file; EMA weights are preferred when present."""
    return build_from_record(load_record(path, use_ema), dtype=dtype, device=device)
