"""officina.hub.data: federated data through a cache, on the hub's side.

The sites, their exports and read rules are declared once in the platform configuration
(`data:`); the embedded platform runs them as a real XRootD federation (origins, a redirector,
an XCache) that authorizes reads with the user's IAM access token.
"""

from .client import DataReadError, read_file, reader_environment
from .federation import DataError, XRootDFederation, host_can_run_federation
from .sample import SAMPLE_DATASETS
from .sites import DataSite, Federation, ReadRule, check_data_settings, federation_from_settings
from .stats import DatasetStats, StatsError, cache_stats

__all__ = [
    "DataError", "DataReadError", "DataSite", "DatasetStats", "Federation", "ReadRule", "SAMPLE_DATASETS",
    "StatsError", "XRootDFederation", "cache_stats", "check_data_settings", "federation_from_settings",
    "host_can_run_federation", "read_file", "reader_environment",
]
