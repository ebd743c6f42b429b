"""officina.widgets: ipywidgets for notebooks and Voila apps (clusters, data, models).

The widgets arrive with the capabilities they drive; each is generated from the same
declaration the server validates against.
"""

from .clusters import Clusters, CondorJobs, CondorWorkers, SparkClusters
from .data import DataBrowser
from .dask_clusters import DaskClusters
from .models import PredictPanel, TrainPanel
from .session_status import SessionStatus

__all__ = ["Clusters", "CondorJobs", "CondorWorkers", "DaskClusters", "DataBrowser", "PredictPanel", "SessionStatus", "SparkClusters", "TrainPanel"]
