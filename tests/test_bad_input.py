"""Every mistake a user can make ends in one line naming the culprit, a non-zero exit, no
traceback, and loses nothing.

The matrix below is one table of cases. Each case writes its inputs into a fresh folder and runs
one ``mlip`` command through :func:`mlip.cli.main` (the console script's code path, without the
interpreter start-up); a few also run as real subprocesses. For every case: the exit code, a
single stderr line holding the expected fragments (and none of the forbidden ones), no
traceback, and either a run directory whose checkpoints are byte for byte what they were, or
(for data errors) a fresh output folder in which no checkpoint was written.
Disk-full faults are simulated by pointing the writes of chosen files at ``/dev/full``, so the
real ``No space left on device`` travels through torch's writer.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from test_train_helpers import lj_frames, tiny_config, write_config

from mlip.cli import main


# --- data and run fixtures --------------------------------------------------------------------

def plain_frames(n: int = 8, seed: int = 3):
    """LJ frames with their labels in atoms.info/arrays (easy to delete one)."""
    out = []
    for atoms in lj_frames(n, seed):
        res = atoms.calc.results
        atoms.calc = None
        atoms.info["energy"] = float(res["energy"])
        atoms.arrays["forces"] = np.array(res["forces"])
        atoms.info["stress"] = np.array(res["stress"])
        out.append(atoms)
    return out


def write_xyz(path, frames) -> str:
    import ase.io

    ase.io.write(str(path), frames, format="extxyz")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run: its config, training file, run folder and best model."""
    base = tmp_path_factory.mktemp("trained")
    train_file = write_xyz(base / "train.extxyz", plain_frames(8, seed=1))
    raw = tiny_config(base, train_file, optim={"lr": 0.01, "max_epochs": 1}, data={"valid_fraction": 0.25})
    config = write_config(str(base / "config.yaml"), raw)
    assert main(["train", config]) == 0
    return {"base": base, "raw": raw, "config": config, "train_file": train_file, "run": raw["output_dir"],
            "model": os.path.join(raw["output_dir"], "best_model.pt")}


def snapshot(folder: str) -> Dict[str, str]:
    """name -> sha256 of every file under ``folder/checkpoints`` and the model files."""
    out = {}
    for sub in ("checkpoints", "."):
        d = os.path.join(folder, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.isfile(p) and (sub == "checkpoints" or name.endswith(".pt")):
                with open(p, "rb") as fh:
                    out[os.path.join(sub, name)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def leftovers(folder: str) -> List[str]:
    """Temporary files of interrupted writes anywhere under ``folder``."""
    return [os.path.join(r, f) for r, _, files in os.walk(folder) for f in files
            if f.startswith(".tmp-") or ".tmp" in f]


class Ctx:
    """What a case builds on: a fresh folder, the trained run, config helpers."""

    def __init__(self, tmp: str, trained: dict):
        self.tmp = tmp
        self.trained = trained
        self.run_dir: Optional[str] = None   # an existing run the command is pointed at
        self.fresh_dir = os.path.join(tmp, "fresh_run")

    def config(self, train_file: str, **sections) -> str:
        """A tiny config training ``train_file`` into a fresh output folder."""
        sections.setdefault("data", {})
        sections["data"] = {"valid_fraction": 0.0, **sections["data"]}
        raw = tiny_config(self.tmp, train_file, **sections)
        raw["output_dir"] = self.fresh_dir
        return write_config(os.path.join(self.tmp, "config.yaml"), raw)

    def existing_run(self, **changes) -> str:
        """A copy of the trained run, and its config (with ``changes`` one level deep)."""
        self.run_dir = os.path.join(self.tmp, "run")
        shutil.copytree(self.trained["run"], self.run_dir)
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.trained["raw"].items()}
        raw["output_dir"] = self.run_dir
        for section, values in changes.items():
            if isinstance(values, dict):
                raw[section].update(values)
            else:
                raw[section] = values
        return write_config(os.path.join(self.tmp, "config.yaml"), raw)

    def frames(self, **kw):
        return plain_frames(**kw)

    def xyz(self, name: str, frames) -> str:
        return write_xyz(os.path.join(self.tmp, name), frames)


@dataclass
class Case:
    name: str
    build: Callable[[Ctx], List[str]]       # -> mlip arguments
    fragments: Sequence[str]                 # all in the one stderr line
    code: int = 2
    forbidden: Sequence[str] = ()
    subprocess: bool = False                 # also run as `python -m mlip`
    patch: Optional[Callable] = None         # (monkeypatch) -> None, before the command
    stdout_lacks: Sequence[str] = field(default_factory=tuple)


# --- the cases --------------------------------------------------------------------------------

def _drop(key: str, frame: int, where: str = "info"):
    def build(ctx: Ctx) -> List[str]:
        frames = ctx.frames()
        getattr(frames[frame], where).pop(key)
        sections = {"loss": {"stress_weight": 1.0}} if key == "stress" else {}
        return ["train", ctx.config(ctx.xyz("data.extxyz", frames), **sections)]
    return build


def _energy_key_absent(e0s):
    def build(ctx: Ctx) -> List[str]:
        data = {"keys": {"energy": "dft_energy"}}
        if e0s is not None:
            data["E0s"] = e0s
        return ["train", ctx.config(ctx.xyz("data.extxyz", ctx.frames()), data=data)]
    return build


def _molecules_with_stress_weight(ctx: Ctx) -> List[str]:
    frames = ctx.frames()
    for a in frames:
        a.pbc = False
        a.info.pop("stress")
    return ["train", ctx.config(ctx.xyz("data.extxyz", frames), loss={"stress_weight": 1.0})]


def _duplicate_atom(command: str):
    def build(ctx: Ctx) -> List[str]:
        frames = ctx.frames()
        frames[2].positions[1] = frames[2].positions[0]
        path = ctx.xyz("dup.extxyz", frames)
        if command == "train":
            return ["train", ctx.config(path)]
        return ["evaluate", ctx.trained["model"], path, "-o", os.path.join(ctx.tmp, "eval")]
    return build


def _empty_frame(command: str):
    def build(ctx: Ctx) -> List[str]:
        import ase

        frames = ctx.frames()
        empty = ase.Atoms(cell=frames[0].cell, pbc=True)
        empty.info["energy"] = 0.0
        frames.insert(5, empty)
        path = ctx.xyz("empty.extxyz", frames)
        if command == "train":
            return ["train", ctx.config(path)]
        return ["evaluate", ctx.trained["model"], path, "-o", os.path.join(ctx.tmp, "eval")]
    return build


def _nan_position(ctx: Ctx) -> List[str]:
    frames = ctx.frames()
    frames[1].positions[0, 2] = np.nan
    return ["evaluate", ctx.trained["model"], ctx.xyz("nan.extxyz", frames)]


def _unknown_species(ctx: Ctx) -> List[str]:
    frames = ctx.frames()
    frames[4].symbols[0] = "O"
    return ["evaluate", ctx.trained["model"], ctx.xyz("oxygen.extxyz", frames)]


def _npz(kind: str, command: str):
    def build(ctx: Ctx) -> List[str]:
        rng = np.random.default_rng(0)
        coords = rng.uniform(0, 4, (5, 3, 3))
        arrays = {"coords": coords, "energies": np.zeros(5), "forces": np.zeros((5, 3, 3)),
                  "nuclear_charges": np.array([6, 6, 14])}
        if kind == "short_energies":
            arrays["energies"] = np.zeros(3)
        elif kind == "forces_shape":
            arrays["forces"] = np.zeros((5, 2, 3))
        elif kind == "no_numbers":
            arrays.pop("nuclear_charges")
        path = os.path.join(ctx.tmp, "md17.npz")
        np.savez(path, **arrays)
        if command == "train":
            return ["train", ctx.config(path)]
        return ["evaluate", ctx.trained["model"], path]
    return build


def _truncated_xyz(ctx: Ctx) -> List[str]:
    path = ctx.xyz("full.extxyz", ctx.frames())
    lines = open(path).read().splitlines()
    per_frame = 8 + 2
    cut = os.path.join(ctx.tmp, "cut.extxyz")
    with open(cut, "w") as fh:
        fh.write("\n".join(lines[:5 * per_frame + 4]) + "\n")  # frame 5 stops after 2 of its 8 atoms
    return ["train", ctx.config(cut)]


def _bad_stress_size(ctx: Ctx) -> List[str]:
    path = ctx.xyz("full.extxyz", ctx.frames())
    lines = open(path).read().split("\n")
    headers = [i for i, line in enumerate(lines) if line.startswith("Lattice")]
    line = lines[headers[4]]
    start = line.index('stress="')
    end = line.index('"', start + len('stress="'))
    lines[headers[4]] = line[:start] + 'stress="1.0 2.0 3.0 4.0"' + line[end + 1:]
    bad = os.path.join(ctx.tmp, "stress.extxyz")
    with open(bad, "w") as fh:
        fh.write("\n".join(lines))
    return ["train", ctx.config(bad, loss={"stress_weight": 1.0})]


def _broken_test_file(ctx: Ctx) -> List[str]:
    frames = ctx.frames()
    frames[6].positions[2, 0] = np.inf
    test_file = ctx.xyz("test.extxyz", frames)
    return ["train", ctx.config(ctx.xyz("d.extxyz", ctx.frames()), data={"test_files": [test_file]})]


def _folder_without_manifest(ctx: Ctx) -> List[str]:
    folder = os.path.join(ctx.tmp, "shards")
    os.makedirs(folder)
    with open(os.path.join(folder, "shard_00000.h5"), "wb") as fh:
        fh.write(b"\x89HDF\r\n\x1a\n")
    return ["train", ctx.config(folder)]


def _missing_train_file(ctx: Ctx) -> List[str]:
    return ["train", ctx.config(os.path.join(ctx.tmp, "nowhere.extxyz"))]


def _typo_key(ctx: Ctx) -> List[str]:
    return ["train", ctx.config(ctx.xyz("d.extxyz", ctx.frames()), optim={"max_epoch": 5})]


def _output_dir_is_file(ctx: Ctx) -> List[str]:
    config = ctx.config(ctx.xyz("d.extxyz", ctx.frames()))
    with open(ctx.fresh_dir, "w") as fh:
        fh.write("my notes\n")
    return ["train", config]


def _evaluate_into_a_file(ctx: Ctx) -> List[str]:
    target = os.path.join(ctx.tmp, "results")
    with open(target, "w") as fh:
        fh.write("keep me\n")
    return ["evaluate", ctx.trained["model"], ctx.trained["train_file"], "-o", target]


def _read_only(monkeypatch) -> None:
    real = tempfile.mkstemp

    def fake(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(".write-test-"):
            raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", fake)


def _output_dir_read_only(ctx: Ctx) -> List[str]:
    return ["train", ctx.config(ctx.xyz("d.extxyz", ctx.frames()))]


def _corrupt_all_checkpoints(resume: bool):
    def build(ctx: Ctx) -> List[str]:
        config = ctx.existing_run()
        for name in os.listdir(os.path.join(ctx.run_dir, "checkpoints")):
            path = os.path.join(ctx.run_dir, "checkpoints", name)
            data = open(path, "rb").read()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])  # a write cut short
        return ["train", config] + (["--resume"] if resume else [])
    return build


def _changed_config_on_resume(ctx: Ctx) -> List[str]:
    return ["train", ctx.existing_run(seed=99)]


def _resume_without_checkpoint(ctx: Ctx) -> List[str]:
    return ["train", ctx.config(ctx.xyz("d.extxyz", ctx.frames())), "--resume"]


MARKER = "pwned-by-checkpoint"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _not_a_checkpoint(kind: str, command: str = "evaluate"):
    def build(ctx: Ctx) -> List[str]:
        path = os.path.join(ctx.tmp, f"{kind}.pt")
        if kind == "random":
            with open(path, "wb") as fh:
                fh.write(bytes(range(1, 200)) * 3)
        elif kind == "text":
            with open(path, "w") as fh:
                fh.write("energy: -12.5\n")
        elif kind == "empty":
            open(path, "wb").close()
        elif kind == "pickle":
            with open(path, "wb") as fh:
                pickle.dump(_Evil(), fh)
        elif kind == "malicious_zip":
            torch.save({"format": "mlip-1", "model": _Evil()}, path)
        elif kind == "truncated":
            data = open(ctx.trained["model"], "rb").read()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 3])
        if command == "finetune":
            return ["train", ctx.config(ctx.xyz("d.extxyz", ctx.frames()), finetune={"from": path})]
        return ["evaluate", path, ctx.trained["train_file"]]
    return build


NOT_A_CHECKPOINT = ("not a readable mlip checkpoint",)

CASES = [
    # labels: a weighted label missing, in some frames or all (issue items 1, 2, 10)
    Case("energy-missing-in-one-frame", _drop("energy", 3),
         ["data.extxyz, frame 3, key 'energy'", "no energy label", "7 of 8", "data.allow_partial_labels"]),
    Case("forces-missing-in-one-frame", _drop("forces", 6, "arrays"),
         ["frame 6, key 'forces'", "no forces label", "loss.forces_weight is 10"]),
    Case("stress-missing-in-one-frame", _drop("stress", 2), ["frame 2, key 'stress'", "no stress label"]),
    Case("energy-key-absent-E0s-given", _energy_key_absent({"Si": -3.0, "C": -7.5}),
         ["key 'dft_energy'", "loss.energy_weight is 1", "none of the 8 train structures has an energy label",
          "data.keys.energy"]),
    Case("energy-key-absent-E0s-least-squares", _energy_key_absent(None),
         ["key 'dft_energy'", "loss.energy_weight is 1", "none of the 8"], forbidden=["data.E0s"]),
    Case("stress-weight-on-molecules", _molecules_with_stress_weight,
         ["loss.stress_weight is 1", "is periodic"]),
    # structures (items 3, 4 and ones handled before)
    Case("duplicate-atom-train", _duplicate_atom("train"),
         ["dup.extxyz, frame 2, key 'positions'", "atoms 0 and 1 are 0.000 A apart", "data.min_distance"]),
    Case("duplicate-atom-evaluate", _duplicate_atom("evaluate"), ["dup.extxyz, frame 2", "atoms 0 and 1"],
         subprocess=True),
    Case("empty-frame-train", _empty_frame("train"), ["empty.extxyz, frame 5", "no atoms"]),
    Case("empty-frame-evaluate", _empty_frame("evaluate"), ["empty.extxyz, frame 5", "no atoms"]),
    Case("nan-position", _nan_position, ["nan.extxyz, frame 1, key 'positions'", "NaN"]),
    Case("unknown-species", _unknown_species, ["oxygen.extxyz, frame 4", "['O'] not in type_names"]),
    # files (items 5, 8, 9 and ones handled before)
    Case("npz-energies-short-evaluate", _npz("short_energies", "evaluate"),
         ["md17.npz, key 'energies'", "shape (3,), expected (5,)"]),
    Case("npz-energies-short-train", _npz("short_energies", "train"), ["md17.npz, key 'energies'"]),
    Case("npz-forces-shape", _npz("forces_shape", "evaluate"), ["md17.npz, key 'forces'", "(5, 2, 3)"]),
    Case("npz-array-missing", _npz("no_numbers", "evaluate"), ["md17.npz, key 'nuclear_charges'", "not found"]),
    Case("extxyz-truncated-mid-frame", _truncated_xyz, ["cut.extxyz, frame 5", "cannot parse"]),
    Case("stress-of-wrong-size", _bad_stress_size, ["stress.extxyz, frame 4, key 'stress'"]),
    Case("broken-test-file-before-training", _broken_test_file, ["test.extxyz, frame 6, key 'positions'"],
         stdout_lacks=["epoch "]),
    Case("folder-without-manifest", _folder_without_manifest, ["shards", "manifest.json", "mlip preprocess"],
         forbidden=["BundleTrajectory"]),
    Case("missing-train-file", _missing_train_file, ["nowhere.extxyz", "not found"]),
    Case("typo-in-config-key", _typo_key, ["optim.max_epoch", "did you mean"]),
    # the output folder (item 6), checked before any data is read
    Case("output-dir-is-a-file", _output_dir_is_file, ["fresh_run, key 'output_dir'", "is a file"],
         subprocess=True, stdout_lacks=["labels:"]),
    Case("evaluate-output-is-a-file", _evaluate_into_a_file, ["results, key '--output-dir'", "is a file"],
         stdout_lacks=["labels"]),
    Case("output-dir-read-only", _output_dir_read_only, ["key 'output_dir'", "cannot write there",
                                                         "Read-only file system"],
         patch=_read_only, stdout_lacks=["labels:"]),
    # checkpoints of an existing run (item 11 and ones handled before)
    Case("resume-unreadable-checkpoints", _corrupt_all_checkpoints(resume=True),
         ["no readable checkpoint", "ckpt-", "truncated", "Nothing was changed", "delete"],
         forbidden=["no checkpoint found"]),
    Case("unreadable-checkpoints-without-resume", _corrupt_all_checkpoints(resume=False),
         ["no readable checkpoint", "Nothing was changed"]),
    Case("config-changed-on-resume", _changed_config_on_resume, ["config differs in seed"]),
    Case("resume-without-checkpoint", _resume_without_checkpoint, ["--resume given but no checkpoint found"]),
    # files that are not checkpoints (item 12): say what they are, never suggest unsafe loading
    Case("checkpoint-random-bytes", _not_a_checkpoint("random"), NOT_A_CHECKPOINT + ("random or foreign",)),
    Case("checkpoint-text-file", _not_a_checkpoint("text"), NOT_A_CHECKPOINT + ("a text file",)),
    Case("checkpoint-empty", _not_a_checkpoint("empty"), NOT_A_CHECKPOINT + ("empty (0 bytes)",)),
    Case("checkpoint-plain-pickle", _not_a_checkpoint("pickle"), NOT_A_CHECKPOINT + ("Python pickle", "refused")),
    Case("checkpoint-malicious", _not_a_checkpoint("malicious_zip"),
         NOT_A_CHECKPOINT + ("posix.system", "refused"), subprocess=True),
    Case("checkpoint-truncated", _not_a_checkpoint("truncated"), NOT_A_CHECKPOINT + ("truncated",)),
    Case("finetune-from-malicious", _not_a_checkpoint("malicious_zip", "finetune"), ("posix.system", "refused")),
]

ALWAYS_FORBIDDEN = ("Traceback", "weights_only")


def _check(case: Case, ctx: Ctx, code: int, out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, (code, err)
    assert len(lines) == 1, err
    for fragment in case.fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for fragment in tuple(case.forbidden) + ALWAYS_FORBIDDEN:
        assert fragment not in err, (fragment, err)
    for fragment in case.stdout_lacks:
        assert fragment not in out, (fragment, out)
    assert not os.path.exists(os.path.join(ctx.tmp, MARKER)) and not os.path.exists(MARKER)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_matrix(case, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a payload that ran would leave its marker here
    ctx = Ctx(str(tmp_path), trained)
    args = case.build(ctx)
    before = snapshot(ctx.run_dir) if ctx.run_dir else None
    if case.patch is not None:
        case.patch(monkeypatch)
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    _check(case, ctx, code, out, err)
    if before is not None:
        assert snapshot(ctx.run_dir) == before  # nothing renamed, replaced or removed
    else:  # a data error: reported before any training, so no checkpoint was written
        assert not os.path.isdir(os.path.join(ctx.fresh_dir, "checkpoints")) or not os.listdir(
            os.path.join(ctx.fresh_dir, "checkpoints"))


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.name for c in SUBPROCESS_CASES])
def test_bad_input_as_a_process(case, trained, tmp_path):
    """The real console path: the interpreter's exit status and stderr."""
    ctx = Ctx(str(tmp_path), trained)
    args = case.build(ctx)
    res = subprocess.run([sys.executable, "-m", "mlip", *args], capture_output=True, text=True, timeout=600,
                         cwd=str(tmp_path))
    _check(case, ctx, res.returncode, res.stdout, res.stderr)


# --- faults while a run writes (item 7): a full disk ------------------------------------------

def full_disk_for(monkeypatch, name_prefix: str) -> List[str]:
    """Writes through mlip's atomic files whose target name starts with ``name_prefix`` go to
    /dev/full (ENOSPC on the first flush). Returns the temporary paths that were handed out."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full not available")
    real = tempfile.mkstemp
    handed: List[str] = []

    def fake(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        if str(kwargs.get("prefix", "")).startswith(f".tmp-{name_prefix}"):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
            handed.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", fake)
    return handed


def _continue_config(trained, tmp_path, max_epochs: int) -> str:
    run = os.path.join(str(tmp_path), "run")
    shutil.copytree(trained["run"], run)
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in trained["raw"].items()}
    raw["output_dir"] = run
    raw["optim"]["max_epochs"] = max_epochs
    return write_config(str(tmp_path / "config.yaml"), raw)


def _final_weights(run: str) -> Dict[str, torch.Tensor]:
    ckpts = sorted(os.listdir(os.path.join(run, "checkpoints")))
    ckpts = [c for c in ckpts if c.endswith(".pt")]
    obj = torch.load(os.path.join(run, "checkpoints", ckpts[-1]), weights_only=True)
    return obj["model"]["state_dict"]


def test_disk_full_at_a_checkpoint_keeps_the_last_one_and_resumes_exactly(trained, tmp_path, monkeypatch, capsys):
    config = _continue_config(trained, tmp_path, max_epochs=3)
    run = os.path.join(str(tmp_path), "run")
    before = snapshot(run)
    last_good = sorted(os.listdir(os.path.join(run, "checkpoints")))[-1]
    with monkeypatch.context() as mp:
        handed = full_disk_for(mp, "ckpt-")
        capsys.readouterr()
        code = main(["train", config])
        out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "not written" in lines[0]
    assert f"the last good checkpoint {os.path.join(run, 'checkpoints', last_good)} is intact" in lines[0]
    assert "run the same `mlip train` command again" in lines[0]
    assert handed and not any(os.path.exists(p) for p in handed)
    assert leftovers(run) == []
    assert {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints")}
    # with room again the same command resumes, and ends where an uninterrupted run ends
    assert main(["train", config]) == 0
    (tmp_path / "ref").mkdir()
    assert main(["train", _continue_config(trained, tmp_path / "ref", max_epochs=3)]) == 0
    got, want = _final_weights(run), _final_weights(os.path.join(str(tmp_path / "ref"), "run"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_disk_full_at_best_model_keeps_the_previous_file(trained, tmp_path, monkeypatch, capsys):
    config = _continue_config(trained, tmp_path, max_epochs=3)
    run = os.path.join(str(tmp_path), "run")
    best = open(os.path.join(run, "best_model.pt"), "rb").read()
    handed = full_disk_for(monkeypatch, "best_model.pt")
    capsys.readouterr()
    code = main(["train", config])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "best_model.pt: not written (No space left on device" in lines[0]
    assert "last good checkpoint" in lines[0] and "is intact" in lines[0]
    assert handed and leftovers(run) == []
    assert open(os.path.join(run, "best_model.pt"), "rb").read() == best


def test_disk_full_at_a_plot_or_the_log_does_not_stop_the_run(trained, tmp_path, monkeypatch, capsys):
    """A learning curve that cannot be written costs a warning, never the run or a stray file."""
    config = _continue_config(trained, tmp_path, max_epochs=2)
    run = os.path.join(str(tmp_path), "run")
    os.unlink(os.path.join(run, "learning_curve.png"))
    handed = full_disk_for(monkeypatch, "learning_curve.png")
    capsys.readouterr()
    assert main(["train", config]) == 0
    out = capsys.readouterr().out
    assert "warning: learning curve not written" in out and "No space left on device" in out
    assert handed and leftovers(run) == [] and not os.path.exists(os.path.join(run, "learning_curve.png"))


def test_log_that_cannot_be_written_warns_once_and_training_goes_on(tmp_path, capsys):
    from mlip.train.run_log import Logger

    log = Logger("/dev/full", echo=False)
    log("first line")
    log("second line")
    err = capsys.readouterr().err
    assert err.count("warning: /dev/full: cannot write (No space left on device") == 1


# --- the ASE calculator: an exception, never NaN -----------------------------------------------

def test_calculator_refuses_overlapping_atoms_and_empty_structures(trained):
    import ase

    from mlip import MLIPCalculator
    from mlip.errors import InputError, NonFiniteError

    atoms = plain_frames(1)[0]
    atoms.positions[3] = atoms.positions[5]
    atoms.calc = MLIPCalculator(trained["model"])
    with pytest.raises(InputError, match="atoms 3 and 5 are 0.000 A apart"):
        atoms.get_potential_energy()
    # without the distance check the model's NaN is caught on the way out, not returned
    atoms.calc = MLIPCalculator(trained["model"], min_distance=0.0)
    with pytest.raises(NonFiniteError, match="non-finite energy or forces"):
        atoms.get_forces()
    empty = ase.Atoms()
    empty.calc = MLIPCalculator(trained["model"])
    with pytest.raises(InputError, match="no atoms"):
        empty.get_potential_energy()
    # a sound structure still works
    good = plain_frames(1)[0]
    good.calc = MLIPCalculator(trained["model"])
    assert np.isfinite(good.get_potential_energy())


def test_partial_labels_train_when_allowed_and_coverage_is_reported(tmp_path, capsys):
    frames = plain_frames(8)
    frames[3].info.pop("energy")
    data = write_xyz(tmp_path / "d.extxyz", frames)
    raw = tiny_config(tmp_path, data, optim={"max_epochs": 1}, data={"valid_fraction": 0.0,
                                                                      "allow_partial_labels": True})
    config = write_config(str(tmp_path / "c.yaml"), raw)
    capsys.readouterr()
    assert main(["train", config]) == 0
    out = capsys.readouterr().out
    assert "labels: train energy 7/8, forces 8/8, stress 8/8" in out


def test_cli_reports_an_unforeseen_storage_error_in_one_line(trained, tmp_path, monkeypatch, capsys):
    """A write that no code guarded (here: evaluate's outputs) still ends in one line, exit 1;
    a RuntimeError unrelated to storage is not disguised as one."""
    import mlip.train.evaluation as evaluation

    def disk_full(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "somewhere/metrics.json")
        except OSError:
            raise RuntimeError("writer failed")  # torch-style wrapping: the OSError is the context

    monkeypatch.setattr(evaluation, "write_outputs", disk_full)
    args = ["evaluate", trained["model"], trained["train_file"], "-o", str(tmp_path / "eval")]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip() == "mlip evaluate: error: somewhere/metrics.json: No space left on device (free disk space)"

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a disk")

    monkeypatch.setattr(evaluation, "write_outputs", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(args)


def test_error_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    """An HDF5 frame that fails in a DataLoader worker (atoms too close, allowed at preprocessing
    with --min-distance 0) is reported as the worker's one line, not the worker's traceback."""
    frames = plain_frames(6)
    frames[4].positions[1] = frames[4].positions[0]
    data = write_xyz(tmp_path / "d.extxyz", frames)
    folder, valid = str(tmp_path / "h5"), str(tmp_path / "valid_h5")
    # graphs stored at the model's cutoff and a separate validation folder: statistics come from
    # the manifests, so the first frame built is built in a worker
    r_max = str(tiny_config(tmp_path, data)["model"]["r_max"])
    assert main(["preprocess", data, "-o", folder, "--min-distance", "0", "--r-max", r_max]) == 0
    assert main(["preprocess", write_xyz(tmp_path / "v.extxyz", plain_frames(2, seed=9)), "-o", valid]) == 0
    raw = tiny_config(tmp_path, folder, optim={"max_epochs": 1},
                      data={"valid_file": valid, "num_workers": 2, "batch_size": 3})
    config = write_config(str(tmp_path / "c.yaml"), raw)
    capsys.readouterr()
    assert main(["train", config]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert "frame 4" in lines[0] and "atoms 0 and 1 are 0.000 A apart" in lines[0]
