"""Cache statistics per dataset, from the cache's own records.

XCache keeps, beside each cached file, a `.cinfo` file: which blocks it holds and a record
per access (open to close) with the bytes served from the cache (hit), fetched from the origin
(miss) and passed through uncached (bypass). `xrdpfc_print`, XRootD's own reader of that
format, prints them; this module adds them up per dataset, a dataset being the folder that
holds the files (/store/data/open/dimuon-2026).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

XRDPFC_PRINT = "/usr/bin/xrdpfc_print"
_SIZE = re.compile(r"file_size (\d+) kB, buffer_size (\d+) kB, n_blocks (\d+), n_downloaded (\d+)")
# Record  Attach  Detach  Duration  N_ios  N_mrg  B_hit[kB]  B_miss[kB]  B_bypass[kB]
_RECORD = re.compile(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")
KB = 1024


class StatsError(Exception):
    """The cache's records cannot be read; the message says which and why."""


@dataclass
class FileRecord:
    path: str
    size: int
    cached_bytes: int
    complete: bool
    accesses: int
    hit_bytes: int
    miss_bytes: int
    bypass_bytes: int


@dataclass
class DatasetStats:
    dataset: str
    files: int = 0
    size: int = 0
    cached_bytes: int = 0
    accesses: int = 0
    hits: int = 0  # accesses served wholly from the cache
    misses: int = 0  # accesses that fetched at least one block from the origin
    hit_bytes: int = 0
    miss_bytes: int = 0
    bypass_bytes: int = 0
    file_records: list[FileRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def read_cinfo(cinfo: Path, namespace_path: str) -> tuple[FileRecord, list[tuple[int, int, int]]]:
    """One cached file's record and its accesses as (hit, miss, bypass) bytes."""
    result = subprocess.run([XRDPFC_PRINT, "-v", str(cinfo)], capture_output=True, text=True, timeout=30)
    size_line = _SIZE.search(result.stdout)
    if result.returncode != 0 or not size_line:
        raise StatsError(f"cannot read the cache record {cinfo}: {(result.stderr or result.stdout).strip()[:200]}")
    size_kb, block_kb, n_blocks, n_downloaded = map(int, size_line.groups())
    accesses = []
    for line in result.stdout.splitlines():
        m = _RECORD.match(line)
        if m:
            _ios, _merged, hit, miss, bypass = map(int, m.groups())
            accesses.append((hit * KB, miss * KB, bypass * KB))
    # xrdpfc_print rounds sizes down to kB; the cached data file beside the record has the
    # exact size (it is sparse: only downloaded blocks take space).
    data_file = cinfo.with_name(cinfo.name[: -len(".cinfo")])
    size = data_file.stat().st_size if data_file.exists() else size_kb * KB
    record = FileRecord(
        path=namespace_path,
        size=size,
        cached_bytes=min(size, n_downloaded * block_kb * KB),
        complete=n_blocks > 0 and n_downloaded == n_blocks,
        accesses=len(accesses),
        hit_bytes=sum(a[0] for a in accesses),
        miss_bytes=sum(a[1] for a in accesses),
        bypass_bytes=sum(a[2] for a in accesses),
    )
    return record, accesses


def cache_stats(cache_dir: str | Path, prefix: str = "/") -> dict[str, DatasetStats]:
    """Per dataset (folder in the federation's namespace) under `prefix`: files, bytes held,
    accesses, hits and misses (counts and bytes), from every `.cinfo` in `cache_dir`."""
    root = Path(cache_dir)
    if not root.is_dir():
        raise StatsError(f"the cache folder {root} does not exist (is the federation started?)")
    stats: dict[str, DatasetStats] = {}
    for cinfo in sorted(root.rglob("*.cinfo")):
        namespace_path = "/" + str(cinfo.relative_to(root))[: -len(".cinfo")]
        if not (prefix == "/" or namespace_path == prefix or namespace_path.startswith(prefix.rstrip("/") + "/")):
            continue
        record, accesses = read_cinfo(cinfo, namespace_path)
        dataset = namespace_path.rsplit("/", 1)[0] or "/"
        entry = stats.setdefault(dataset, DatasetStats(dataset))
        entry.files += 1
        entry.size += record.size
        entry.cached_bytes += record.cached_bytes
        entry.accesses += record.accesses
        entry.hits += sum(1 for hit, miss, _ in accesses if miss == 0 and hit > 0)
        entry.misses += sum(1 for _, miss, _ in accesses if miss > 0)
        entry.hit_bytes += record.hit_bytes
        entry.miss_bytes += record.miss_bytes
        entry.bypass_bytes += record.bypass_bytes
        entry.file_records.append(record)
    return stats
