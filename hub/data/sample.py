"""The sample dataset the embedded federation serves, generated at first start.

scikit-hep-testdata was the first choice, but its current releases ship no ROOT files (they
are fetched from GitHub at first use), and nothing may be downloaded here. So the files are
written by uproot (a real ROOT file: TTree with flat and jagged branches, read back by ROOT,
uproot and XRootD clients alike) and pyarrow (Parquet), from a fixed random seed: every
platform gets the same bytes-for-content dataset, and a restart does not rewrite it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SampleDataset:
    path: str  # where it appears in the federation's namespace
    title: str
    seed: int
    files: int
    events_per_file: int


SAMPLE_DATASETS = (
    SampleDataset("/store/data/open/dimuon-2026", "Dimuon events (collision-like, generated)", 2026, 2, 200_000),
    SampleDataset("/store/mc/zmumu", "Z to mu mu simulation (generated)", 91, 2, 100_000),
)


def _events(rng: np.random.Generator, n: int) -> dict:
    import awkward as ak

    counts = rng.poisson(2.0, n)
    total = int(counts.sum())
    pt = rng.exponential(20.0, total) + 3.0
    eta = rng.uniform(-2.4, 2.4, total)
    phi = rng.uniform(-np.pi, np.pi, total)
    charge = rng.choice(np.array([-1, 1], dtype=np.int32), total)
    # A Z peak in half the events, a falling continuum in the rest: a histogram shows both.
    mass = np.where(rng.random(n) < 0.5, rng.normal(91.19, 2.5, n), rng.exponential(30.0, n) + 10.0)
    return {
        "run": np.full(n, 1, dtype=np.int32),
        "event": np.arange(n, dtype=np.int64),
        "nMuon": counts.astype(np.int32),
        "Muon_pt": ak.unflatten(pt.astype(np.float32), counts),
        "Muon_eta": ak.unflatten(eta.astype(np.float32), counts),
        "Muon_phi": ak.unflatten(phi.astype(np.float32), counts),
        "Muon_charge": ak.unflatten(charge, counts),
        "Dimuon_mass": mass.astype(np.float32),
    }


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset(folder: Path, dataset: SampleDataset) -> list[Path]:
    """ROOT files and one Parquet summary of `dataset` in `folder`; files already there are
    kept (idempotent, and an interrupted start finishes the rest next time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import uproot

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    written = []
    rng = np.random.default_rng(dataset.seed)
    summary = {"file": [], "event": [], "nMuon": [], "Dimuon_mass": []}
    for i in range(dataset.files):
        events = _events(rng, dataset.events_per_file)
        name = f"events-{i:03d}.root"
        target = folder / name

        def write_root(tmp, events=events):
            with uproot.recreate(tmp) as f:
                f["Events"] = events

        if not target.exists():
            _atomic_write(target, write_root)
        written.append(target)
        summary["file"].extend([name] * dataset.events_per_file)
        summary["event"].extend(events["event"].tolist())
        summary["nMuon"].extend(events["nMuon"].tolist())
        summary["Dimuon_mass"].extend(events["Dimuon_mass"].tolist())
    target = folder / "summary.parquet"
    if not target.exists():
        _atomic_write(target, lambda tmp: pq.write_table(pa.table(summary), tmp))
    written.append(target)
    return written


def place_sample_data(site_roots: dict[str, tuple[Path, tuple[str, ...]]]) -> dict[str, list[Path]]:
    """Put each sample dataset into the root of the site whose exports cover it.
    `site_roots`: site name -> (its oss.localroot, its exported paths)."""
    from .sites import path_within

    placed: dict[str, list[Path]] = {}
    for dataset in SAMPLE_DATASETS:
        for root, paths in site_roots.values():
            if any(path_within(dataset.path, p) for p in paths):
                placed[dataset.path] = write_dataset(root / dataset.path.lstrip("/"), dataset)
                break
    return placed
