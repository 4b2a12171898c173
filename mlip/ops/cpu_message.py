"""Fused message step on CPU: C++ kernels of the 4-linear form (``csrc/message_cpu.cpp``).

The torch reference (:func:`mlip.ops.message.message_grouped`) writes every per-edge tensor
([E, D, C] gathered features, messages, and in force training their first and second
derivatives) to memory and reads it back several times; on a CPU with a few cores that memory
traffic, not arithmetic, is most of the message step. The C++ kernels form each edge's products
in a few cache-resident rows of C channels and write only node-sized results (scatters) or the
per-edge result of the slot being differentiated. Backward and double backward are the same
kernels with another free slot (:class:`mlip.ops.fourlinear.Contract`).

The extension is compiled on first use with the C++ compiler torch's ``cpp_extension`` finds
(about 10 s, cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``),
for the CPU it runs on (``-march=native``; the CPU's feature flags are part of the cache name,
so a shared home directory on a mixed cluster keeps one build per CPU kind). Without a compiler
the model falls back to the torch reference with one warning. ``MLIP_CPU_KERNEL=0`` disables it.

torch serialises builds with a ``lock`` file in the build folder and waits for it without a
limit; a build that was killed (a job's wall time, Ctrl-C) leaves the lock behind, and every
later process would wait forever at 0 % CPU. :func:`wait_for_build_lock` waits for a lock at
most ``STALE_LOCK_S`` after its creation (a build takes about 10-60 s) and then removes it.
"""

import hashlib
import logging
import os
import platform
import sys
import time
import warnings
from typing import Dict, Optional, Tuple

import torch

from mlip.ops.fourlinear import SLOTS, Plan, check_message_inputs, contract, outside_tracing, plan_for
from mlip.ops.tensor_product import TensorProductSpec

log = logging.getLogger("mlip")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "message_cpu.cpp")
_STATE: Dict[str, object] = {}
STALE_LOCK_S = 300.0  # seconds after its creation that a build lock counts as left by a killed build


def _cpu_signature() -> str:
    """What the compiled code depends on besides its source: the CPU's instruction-set flags,
    the machine type and the torch version."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}|{torch.__version__}"


def _ninja_dir() -> str:
    try:
        import ninja

        return ninja.BIN_DIR
    except (ImportError, AttributeError):
        return ""


def build_directory(name: str) -> str:
    """Where torch's ``cpp_extension.load`` builds ``name`` (its own rule: TORCH_EXTENSIONS_DIR,
    else the user cache's torch_extensions/py<version>_<accelerator>)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip is not None else
                       f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda is not None else "cpu")
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{python}_{accelerator}")
    return os.path.join(root, name)


def wait_for_build_lock(folder: str, stale_after: float = STALE_LOCK_S, poll: float = 1.0) -> None:
    """Wait while another process holds the build lock of ``folder``; a lock older than
    ``stale_after`` seconds was left by a build that died, and is removed (with a warning)."""
    lock = os.path.join(folder, "lock")
    told = False
    while True:
        try:
            age = time.time() - os.path.getmtime(lock)
        except OSError:
            return  # no lock (or it went away): torch's own lock takes over from here
        if age > stale_after:
            log.warning("mlip: removing the CPU kernel's build lock %s (%.0f s old, left by a build that was "
                        "killed); building again", lock, age)
            try:
                os.remove(lock)
            except FileNotFoundError:
                pass
            return
        if not told:
            log.info("mlip: waiting for another process's CPU kernel build (lock %s, %.0f s old; one older than "
                     "%.0f s is taken as stale and removed)", lock, age, stale_after)
            told = True
        time.sleep(poll)


def load_cpu_kernel() -> Optional[str]:
    """Build (first time) and load the extension; returns None when it is usable, else why not."""
    if "error" in _STATE:
        return _STATE["error"]  # type: ignore[return-value]
    error: Optional[str] = None
    if os.environ.get("MLIP_CPU_KERNEL", "1") == "0":
        error = "disabled by MLIP_CPU_KERNEL=0"
    else:
        with open(SOURCE, "rb") as f:
            digest = hashlib.sha1(f.read() + _cpu_signature().encode()).hexdigest()[:12]
        from torch.utils.cpp_extension import load

        attempts = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3"])
        path = os.environ.get("PATH", "")
        # torch runs `ninja` from PATH; the pip-installed one sits next to this interpreter
        os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), _ninja_dir(), path])
        try:
            for cflags in attempts:
                name = f"mlip_cpu_{digest}_{len(cflags)}"
                try:
                    log.info("loading the CPU message kernel (built once per machine kind, ~10 s)")
                    folder = build_directory(name)
                    os.makedirs(folder, exist_ok=True)
                    wait_for_build_lock(folder)
                    load(name=name, sources=[SOURCE], extra_cflags=cflags, build_directory=folder,
                         is_python_module=False, verbose=False)
                    error = None
                    break
                except Exception as exc:  # no compiler, no ninja, unsupported flag, ...
                    lines = str(exc).strip().splitlines()
                    error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
        finally:
            os.environ["PATH"] = path
        if error is not None:
            warnings.warn(f"mlip: the fused CPU message kernel could not be built ({error}); using the slower "
                          "torch path. Install a C++ compiler (g++) and ninja, or set MLIP_CPU_KERNEL=0 to "
                          "silence this.", stacklevel=2)
    _STATE["error"] = error
    return error


def cpu_kernel_available() -> bool:
    return load_cpu_kernel() is None


def _fake_contract(free, idx, val, x, y, w, z, receiver, sender, w_rows, num_w_rows, num_nodes, dim_free):
    ref = x if free == 2 else w
    channels = ref.shape[2]
    if free == 1:
        return ref.new_empty((receiver.shape[0], dim_free))
    if free == 2:
        return ref.new_empty((num_w_rows, dim_free, channels))
    return ref.new_empty((num_nodes, dim_free, channels))


def _fake_grads(idx, val, x, y, w, z, receiver, sender, w_rows, num_nodes, need_x, need_y, need_w, need_z):
    return [t.new_empty(t.shape) if need else t.new_empty((0,))
            for t, need in ((x, need_x), (y, need_y), (w, need_w), (z, need_z))]


def _contract_setup(ctx, inputs, output):
    free, idx, val, x, y, w, z, receiver, sender, w_rows, num_w_rows, num_nodes, _ = inputs
    ctx.free, ctx.num_w_rows, ctx.num_nodes = free, num_w_rows, num_nodes
    ctx.save_for_backward(idx, val, x, y, w, z, receiver, sender, w_rows)


def _contract_backward(ctx, grad):
    """The op's derivative for graphs that hold it (torch.compile of a traced force computation):
    the same contraction with the cotangent in the free slot and another slot free, as
    :class:`mlip.ops.fourlinear.Contract` does in eager mode."""
    idx, val, *slots, receiver, sender, w_rows = ctx.saved_tensors
    slots[ctx.free] = grad
    need = [s != ctx.free and ctx.needs_input_grad[3 + s] for s in range(4)]
    if not torch.is_grad_enabled():  # not differentiated again (the loss backward): one pass for all
        out = torch.ops.mlip_cpu.grads(idx, val, *slots, receiver, sender, w_rows, ctx.num_nodes, *need)
        return (None, None, None, *(t if n else None for t, n in zip(out, need)), None, None, None, None, None, None)
    out = [_contract_op(s, idx, val, slots, receiver, sender, w_rows, ctx.num_w_rows, ctx.num_nodes,
                        slots[s].shape[1]) if need[s] else None for s in range(4)]
    return (None, None, None, *out, None, None, None, None, None, None)


def _contract_op(free: int, idx, val, slots, receiver, sender, w_rows, num_w_rows, num_nodes, dim_free):
    """``mlip_cpu::contract`` with ``slots`` (x, y, w, z) given; the free one is not read (an empty
    placeholder is passed in its place)."""
    ref = slots[1] if free != 1 else slots[0]
    args = [t.contiguous() if i != free else ref.new_empty((0,)) for i, t in enumerate(slots)]
    return torch.ops.mlip_cpu.contract(free, idx, val, *args, receiver, sender, w_rows, num_w_rows, num_nodes,
                                       dim_free)


def traced_ops_version() -> str:
    """A digest of the code that defines the kernel's ops and their registered shape and
    derivative formulas (this file and the C++ source). torch.compile's caches key a compiled
    graph by its operators' names, not by the Python formulas registered for them, so this goes
    into the cache key (:func:`mlip.nn.compiled.trace_and_compile`): a backward compiled from an
    older formula is never reused."""
    if "version" not in _STATE:
        h = hashlib.sha1()
        for path in (os.path.abspath(__file__), SOURCE):
            with open(path, "rb") as f:
                h.update(f.read())
        _STATE["version"] = h.hexdigest()[:12]
    return str(_STATE["version"])


def cpu_kernel_traceable() -> bool:
    """The kernel is loaded and its ops carry shape (fake) and derivative formulas, so make_fx and
    torch.compile keep them in a graph as opaque calls (:mod:`mlip.nn.compiled`)."""
    if "traceable" not in _STATE:
        ok = cpu_kernel_available()
        if ok:
            try:
                torch.library.register_fake("mlip_cpu::contract", _fake_contract)
                torch.library.register_fake("mlip_cpu::grads", _fake_grads)
                torch.library.register_autograd("mlip_cpu::contract", _contract_backward,
                                                setup_context=_contract_setup)
            except Exception as exc:  # an older torch without these registration APIs
                log.info(f"the CPU message kernel stays out of traced graphs: {exc}")
                ok = False
        _STATE["traceable"] = ok
    return bool(_STATE["traceable"])


class CpuGraph:
    """Edge endpoints as the kernels want them (contiguous int64), and the row of the weights
    each edge reads: ``edge_pair`` [E] when opposite edges share one row (``num_weight_rows``
    rows), else row = edge."""

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, edge_pair: Optional[torch.Tensor] = None,
                 num_weight_rows: int = 0):
        self.receiver = edge_index[0].contiguous().long()
        self.sender = edge_index[1].contiguous().long()
        # sizes stay symbolic (torch.SymInt) while a graph is traced
        self.num_nodes = num_nodes
        self.w_rows = edge_pair.contiguous().long() if edge_pair is not None else torch.empty(0, dtype=torch.long)
        self.num_w_rows = num_weight_rows if edge_pair is not None else self.receiver.shape[0]


_TERMS: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}


def _terms(plan: Plan) -> Tuple[torch.Tensor, torch.Tensor]:
    """The plan's entries as an int64 [nnz, 4] (a, b, k, p) and a float64 [nnz] value tensor."""
    t = _TERMS.get(plan.key)
    if t is None:
        with outside_tracing():  # cached: must be real tensors (a traced graph holds them as constants)
            t = _TERMS[plan.key] = _term_tensors(plan)
    return t


def _term_tensors(plan: Plan) -> Tuple[torch.Tensor, torch.Tensor]:
    idx = torch.tensor([e[:4] for e in plan.entries], dtype=torch.long).view(-1, 4)
    val = torch.tensor([e[4] for e in plan.entries], dtype=torch.float64)
    return idx, val


class _CpuLaunch:
    """The C++ kernels as a :mod:`mlip.ops.fourlinear` backend."""

    def __call__(self, free: str, plan: Plan, graph: CpuGraph, vals: Dict[str, torch.Tensor]) -> torch.Tensor:
        """One contraction (dL/d free)."""
        idx, val = _terms(plan)
        slots = [vals.get(s) for s in SLOTS]
        return _contract_op(SLOTS.index(free), idx, val, slots, graph.receiver, graph.sender, graph.w_rows,
                            graph.num_w_rows, graph.num_nodes, plan.dims()[free])

    def grads(self, plan: Plan, graph: CpuGraph, vals: Dict[str, torch.Tensor], slots) -> Dict[str, torch.Tensor]:
        """dL/d slot for every slot in ``slots``, in one pass over the edges (all four slots given)."""
        idx, val = _terms(plan)
        out = torch.ops.mlip_cpu.grads(idx, val, *(vals[s].contiguous() for s in SLOTS), graph.receiver,
                                       graph.sender, graph.w_rows, graph.num_nodes, *(s in slots for s in SLOTS))
        return {s: t for s, t in zip(SLOTS, out) if s in slots}


launch_cpu = _CpuLaunch()


def fused_message_cpu(node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                      edge_index: torch.Tensor, spec: TensorProductSpec, num_nodes: int,
                      edge_pair: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused equivalent of :func:`mlip.ops.message.message_reference` on CPU tensors (same
    arguments, with the spec instead of the dense CG tensor). Differentiable to any order.

    With ``edge_pair`` [E], ``edge_weights`` holds one row per pair of opposite edges and edge e
    reads row ``edge_pair[e]`` (no per-edge copy of the weights; their gradient is summed per
    pair inside the kernel)."""
    error = load_cpu_kernel()
    if error is not None:
        raise RuntimeError(f"the fused CPU message kernel is not available: {error}")
    plan = plan_for(spec)
    dtype = check_message_inputs(plan, node_feats, edge_sh, edge_weights, edge_index, edge_pair is not None)
    vals = {"x": node_feats.to(dtype), "y": edge_sh.to(dtype), "w": edge_weights.to(dtype)}
    graph = CpuGraph(edge_index, num_nodes, edge_pair, edge_weights.shape[0])
    return contract(launch_cpu, "z", plan, graph, vals)


__all__ = ["fused_message_cpu", "cpu_kernel_available", "cpu_kernel_traceable", "load_cpu_kernel", "launch_cpu",
           "CpuGraph", "traced_ops_version"]
