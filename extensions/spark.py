"""Spark from a notebook: `spark = spark_session(master, secret=..., ui=...)` on one of the
user's Spark clusters (the resource manager's `spark` kind).

The driver runs in the kernel, on loopback only, and authenticates to the cluster with the
cluster's secret (its daemons refuse anyone without it: other local accounts can reach
loopback too). With the master's UI address it also learns the workers' size and how many
executors to wait for, and shows them arriving.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
import urllib.request

from .clusters import _progress

LOOPBACK = "127.0.0.1"


def _alive_workers(ui: str) -> list[dict]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(ui.rstrip("/") + "/json/", timeout=5) as response:
        return [w for w in json.load(response).get("workers", []) if w.get("state") == "ALIVE"]


def _property(name: str) -> str:
    """`executor_memory` -> `spark.executor.memory`; a full property name is kept as is."""
    return name if name.startswith("spark.") else "spark." + name.replace("_", ".")


def _executors(sc) -> int:
    # The block managers the driver knows, its own included.
    return max(0, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)


@contextlib.contextmanager
def _address_space_for_the_jvm():
    """Officina's kernels cap their address space (RLIMIT_AS, a soft limit) to turn runaway
    allocations into a MemoryError; the driver JVM pyspark starts would inherit it and fail,
    since a JVM reserves far more address space than it uses. Lift the soft cap while it is
    started: real memory stays bounded by the session's cgroup."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == hard:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _monitor_properties() -> dict[str, str]:
    """sparkmonitor's listener for this driver, when the kernel runs its extension (Officina's
    kernel loads it): the jobs and stages of every cell then show under the cell, live. The
    listener reports to the kernel on a loopback port the extension opened (passed to the
    driver JVM in its environment)."""
    extension = sys.modules.get("sparkmonitor.kernelextension")
    if extension is None or getattr(extension, "monitor", None) is None:
        return {}
    import pyspark

    # What the extension's own configure() sets, without its log line (a format error there
    # prints a "Logging error" traceback into the cell). The jar is chosen by SPARK_HOME's jars.
    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    jar = extension.get_listener_jar_path(*extension.get_spark_versions())
    if not jar:
        return {}
    os.environ["SPARKMONITOR_KERNEL_PORT"] = str(extension.monitor.getPort())
    return {"spark.driver.extraClassPath": jar,
            "spark.extraListeners": "sparkmonitor.listener.JupyterSparkMonitorListener"}


def spark_session(
    master: str,
    app_name: str = "officina",
    *,
    secret: str | None = None,
    ui: str | None = None,
    timeout: float = 120.0,
    **conf,
):
    """A `pyspark.sql.SparkSession` on the Spark master `master` ("spark://127.0.0.1:<port>").

    `secret`: the cluster's shared secret (without it the cluster refuses the application).
    `ui`: the master's UI ("http://127.0.0.1:<port>/"): executors are then sized to the
    workers (one per worker, all its cores and memory) and this waits until every worker has
    one; without it, until the first executor has arrived.
    `conf`: more Spark properties, either by name (`**{"spark.sql.shuffle.partitions": 8}`)
    or as keywords without the `spark.` and with `_` for `.` (`executor_memory="2g"`).
    A progress bar in a notebook, a line per change elsewhere.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        running = active.sparkContext.master
        if running == master:
            return active
        raise RuntimeError(f"this kernel already has a Spark session on {running}: call .stop() on it first")

    # The driver's own UI (Jetty) binds to this address only, and to 0.0.0.0 without it; the
    # JVM that pyspark starts inherits it.
    os.environ["SPARK_LOCAL_IP"] = LOOPBACK
    workers = _alive_workers(ui) if ui else []
    properties = {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.driver.memory": "1g",
        # The executors' Python workers run the kernel's own Python (pyspark, cloudpickle).
        "spark.pyspark.python": sys.executable,
    }
    if workers:
        properties["spark.executor.memory"] = f"{min(w['memory'] for w in workers)}m"
    if secret:
        properties["spark.authenticate"] = "true"
        properties["spark.authenticate.secret"] = secret
    properties.update(_monitor_properties())
    properties.update({_property(name): str(value) for name, value in conf.items()})

    builder = SparkSession.builder
    for key, value in properties.items():
        builder = builder.config(key, value)
    with _address_space_for_the_jvm():
        spark = builder.getOrCreate()

    wanted = max(1, len(workers))
    update = _progress(wanted)
    deadline = time.monotonic() + timeout
    sc = spark.sparkContext
    while True:
        if sc._jsc.sc().isStopped():
            raise RuntimeError(f"the Spark master at {master} refused this application or does not answer "
                               "(is the secret right? see the kernel's log)")
        arrived = _executors(sc)
        update(min(arrived, wanted))
        if arrived >= wanted:
            return spark
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if arrived:
        print(f"Spark: going on with {arrived} of {wanted} executors", flush=True)
        return spark
    why = _why_no_executor(sc, ui) if ui else ""
    spark.stop()
    raise TimeoutError(f"no Spark executor arrived within {timeout:g} s{why}")


def _why_no_executor(sc, ui: str) -> str:
    """What the master says about its workers and the other applications holding them."""
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(ui.rstrip("/") + "/json/", timeout=5) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return ""
    workers = [w for w in status.get("workers", []) if w.get("state") == "ALIVE"]
    asked = sc.getConf().get("spark.executor.memory", "1g")
    why = f": this application asks for {asked} per executor; "
    why += ", ".join(f"{w['coresfree']} free cores and {w['memoryfree']} MiB free on worker {w['host']}:{w['port']}"
                     for w in workers) or "the cluster has no workers"
    others = [a.get("name", a.get("id")) for a in status.get("activeapps", []) if a.get("id") != sc.applicationId]
    if others:
        why += f"; other applications on it: {', '.join(others)}"
    return why
