"""MLflow tracking: the only module that talks to MLflow.

One MLflow run per trained model. `train@<family>` opens it (`Tracker.start`; a zoo family's is
named `<name>@<family>`) and writes its id to `models/<family>/run.json`; `generate@<family>`,
`evaluate` and `detect` reopen it (`Tracker.reopen`) and add their metrics and artifacts. The
crossgen stage starts a run of its own, `zoo@crossgen`. Everything goes through `MlflowClient`
with an explicit run id, so the driver and Ray's rank-0 worker can log to the same run without a
global "active run". What the run page shows (metric names and sections, tags, the description)
is decided in `pipeline.run_page`; params are logged as YAML (`null`, `true`, `[color,
translation]`).

The run is named after the DVC experiment inside `dvc exp run` (`$DVC_EXP_NAME`), else after
the Ray run; the tag `ray.run_name` always holds the Ray run (what `Tracker.find` looks for).
The generator is registered under `mlflow.registered_model`; every version is tagged with its
git commit and DVC experiment, and only a version trained by the default profile on `main`
takes the alias `champion` (`pipeline.provenance.champion_blocker`): load the model users
should get as `models:/<name>@champion` (`champion_uri`), never "the latest version".

If the server disappears mid-run, logging calls do not crash the stage: each failure is recorded
in `Tracker.lost`, the stage still writes its files, and `Tracker.close()` then raises one
`UserError` naming what was not logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.config import MlflowConfig
from pipeline.errors import UserError
from pipeline.io import write_json
from pipeline.provenance import exp_name
from pipeline.run_page import (
    NOTE_TAG,
    SAMPLES_DIR,
    Summary,
    compose_note,
    epoch_metrics,
)

UI_VIEW = "?workflowType=machine_learning"  # MLflow 3.17 UI otherwise opens its GenAI view
CHAMPION = "champion"  # the registry alias of the default pipeline's generator

# MLflow's HTTP client retries a dead server for minutes by default; a stage should notice in
# seconds and carry on writing its files (users can still raise these in the environment).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


DEFAULT_STORE = "sqlite:///mlflow.db"  # relative: the repo root's mlflow.db, as run.json says
# Where MLflow keeps absolute paths into the checkout (MLflow 3 schema): a copied or moved
# checkout's store is rewritten to point at the new one (`relocate_store`).
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"),
                    ("model_versions", "storage_location"))


def tracking_uri(cfg: MlflowConfig, root: Path | None = None) -> str:
    """params > $MLFLOW_TRACKING_URI > `sqlite:///<repo>/mlflow.db` (absolute: workers chdir)."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{((root or Path.cwd()) / 'mlflow.db').resolve()}"


def portable_uri(uri: str, root: Path | None = None) -> str:
    """`uri` as a committed file may hold it: the repo's own sqlite store as DEFAULT_STORE."""
    return DEFAULT_STORE if uri == f"sqlite:///{((root or Path.cwd()) / 'mlflow.db').resolve()}" \
        else uri


def relocate_store(db: Path) -> None:
    """Make a copied or moved checkout's sqlite store point into this checkout.

    MLflow stores artifact locations as absolute paths (it resolves even a relative one when it
    creates an experiment), so a store copied along with its checkout would send new artifacts,
    and the UI's reads, to the old checkout. Every location under the old checkout's root (the
    parent of the `mlartifacts/` or `mlruns/` an experiment points at) is rewritten to this
    one's. A store created here, or not an MLflow store, is left alone.
    """
    import sqlite3
    from urllib.parse import unquote, urlparse

    if not db.is_file():
        return
    here = db.resolve().parent
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            locations = [row[0] for row in con.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.DatabaseError:
            return
        roots = set()
        for location in locations:
            path = Path(unquote(urlparse(location).path) if "://" in location else location)
            for parent in (path, *path.parents):
                if parent.name in ("mlartifacts", "mlruns"):
                    roots.add(parent.parent)
                    break
        with con:
            for old in roots - {here}:
                for table, column in LOCATION_COLUMNS:
                    for prefix_old, prefix_new in ((old.as_uri() + "/", here.as_uri() + "/"),
                                                   (f"{old}/", f"{here}/")):
                        with contextlib.suppress(sqlite3.OperationalError):  # no such table
                            con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?)"
                                        f" WHERE substr({column}, 1, ?) = ?",
                                        (prefix_new, len(prefix_old) + 1, len(prefix_old),
                                         prefix_old))


def open_store(uri: str) -> None:
    """Before a Tracker uses `uri`: an HTTP server must answer; a sqlite store must point into
    this checkout (`relocate_store`)."""
    if uri.startswith("sqlite:///"):
        relocate_store(Path(uri.removeprefix("sqlite:///")))
    ensure_reachable(uri)


def ensure_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when an HTTP tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise UserError(
        f"MLflow tracking server {uri} is unreachable ({problem}); start it, or unset "
        "MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db"
    )


def yaml_value(value: Any) -> str:
    """A param value as YAML writes it: `null`, `true`, `0.001`, `[color, translation]`."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def champion_uri(registered_model: str) -> str:
    """The model URI users load: `models:/<name>@champion` (see the module docstring)."""
    return f"models:/{registered_model}@{CHAMPION}"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The UI link of a run, opening MLflow's model-training view."""
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return (f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics{UI_VIEW}")


class Tracker:
    """Logs to one MLflow run by id; remembers what could not be logged instead of crashing."""

    def __init__(self, uri: str, run_id: str, experiment_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.client = MlflowClient(tracking_uri=uri)
        self.lost: list[str] = []
        self.model: tuple[str | None, str | None] = (None, None)  # registered (name, version)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        cfg: MlflowConfig,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        suffix: str = "",
    ) -> Tracker:
        """Create the model's run in `cfg.experiment` and log its flattened params as YAML.
        Inside `dvc exp run` the run is named after the experiment (`$DVC_EXP_NAME`); `suffix`
        follows the name (a zoo family's `@sngan`)."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(cfg)
        open_store(uri)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        # sqlite store: artifacts in `mlartifacts/` beside the database file (what `make ui`
        # serves), never under the cwd: a cluster job's cwd is a temporary copy of the repo.
        artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
                     ).as_uri() if uri.startswith("sqlite:///") else None
        exp_id = exp.experiment_id if exp else client.create_experiment(
            cfg.experiment, artifact_location=artifacts)
        run_name = (exp_name() or run_name) + suffix  # $DVC_EXP_NAME: set by `dvc exp run`
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
        tracker = cls(uri, run.info.run_id, exp_id)
        batch = [Param(k, yaml_value(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(batch), 100):
            tracker._call("params", client.log_batch, run.info.run_id, params=batch[i : i + 100])
        return tracker

    @classmethod
    def reopen(cls, cfg: MlflowConfig, run_file: str | os.PathLike[str]) -> Tracker:
        """Reopen the run whose id `train` wrote to `run_file` (models/run.json)."""
        path = Path(run_file)
        try:
            info = json.loads(path.read_text())
            run_id, exp_id = info["run_id"], info["experiment_id"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: no MLflow run id ({exc}); run the train stage") from None
        # An explicit URI (params or env) wins; otherwise the store the run was created in.
        explicit = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        stored = info.get("tracking_uri")
        uri = tracking_uri(cfg) if explicit or stored in (None, DEFAULT_STORE) else stored
        open_store(uri)
        tracker = cls(uri, run_id, exp_id)
        tracker.model = (info.get("registered_model"), info.get("model_version"))
        return tracker

    @classmethod
    def find(cls, cfg: MlflowConfig, tag: str, value: str) -> Tracker | None:
        """The newest active run of `cfg.experiment` tagged `tag=value`, marked RUNNING again
        (a resumed or extended training keeps its MLflow run); None when there is none."""
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(cfg)
        open_store(uri)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return None
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return cls(uri, runs[0].info.run_id, exp.experiment_id)

    def write_run_file(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write `models/run.json`: how later stages (and users) find this run."""
        write_json(path, {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": portable_uri(self.uri),
            "ui": run_url(self.uri, self.experiment_id, self.run_id),
            **extra,
        })

    # -- logging ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # After the first failure the server is taken as gone: later calls are only recorded as
        # lost, so a dead server costs one retry cycle, not one per epoch.
        if self.lost:
            self.lost.append(what)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not lose the stage's files
            self.lost.append(f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None]
        self._call(f"metrics {','.join(metrics)}", self.client.log_batch, self.run_id,
                   metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        if batch:
            self._call(f"tags {','.join(tags)}", self.client.log_batch, self.run_id, tags=batch)

    def log_epoch(self, row: Mapping[str, Any], epoch: int,
                  grid: str | os.PathLike[str] | None = None) -> None:
        """One epoch (rank 0): its log row as `curves/` metrics at step=epoch, its sample grid
        under `samples/`. (Not as an `mlflow.log_image` chart: MLflow 3.17's image card lists
        every param of the run above the image, and with ours the image gets no room.)"""
        self.log_metrics(epoch_metrics(row), step=epoch)
        if grid is not None:
            self.log_artifact(grid, SAMPLES_DIR)

    def log_summary(self, summary: Summary) -> None:
        """A stage's results: its metrics and tags, and its part of the run description."""
        self.log_metrics(summary.metrics)
        self.set_tags(summary.tags)

        def describe() -> None:
            data = self.client.get_run(self.run_id).data
            note = compose_note(data.tags.get(NOTE_TAG, ""), summary.part, summary.markdown,
                                data.metrics, data.tags)
            self.client.set_tag(self.run_id, NOTE_TAG, note)

        if summary.part:
            self._call(f"description ({summary.part})", describe)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(f"artifact {Path(path).name}", self.client.log_artifact, self.run_id,
                   str(path), artifact_path)

    def log_dataset(self, name: str, path: str | os.PathLike[str], context: str,
                    digest: str, n: int) -> None:
        """Record an input dataset (name, digest, source) on the run (`mlflow.log_input`)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": _repo_relative(Path(path))}),
                          profile=json.dumps({"num_rows": n}))
        tag = InputTag(key="mlflow.data.context", value=context)
        self._call(f"dataset {name}", self.client.log_inputs, self.run_id,
                   datasets=[DatasetInput(dataset=dataset, tags=[tag])])

    def log_pytorch_model(self, model: Any, name: str, input_example: Any,
                          registered_model: str | None = None) -> str | None:
        """Log a torch module as an MLflow model with signature; register it; return version."""
        import mlflow
        import mlflow.pytorch
        from mlflow.models import infer_signature

        def log() -> str | None:
            import torch

            mlflow.set_tracking_uri(self.uri)
            with torch.no_grad():
                output = model(torch.from_numpy(input_example)).numpy()
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pytorch.log_model(
                    model, name=name, input_example=input_example,
                    signature=infer_signature(input_example, output),
                    registered_model_name=registered_model,
                    code_paths=[str(Path(__file__).parent)],
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )
            version = getattr(info, "registered_model_version", None)
            return str(version) if version is not None else None

        return self._call(f"model {name}", log)

    def label_version(self, name: str, version: str, tags: Mapping[str, str],
                      champion: bool) -> None:
        """Tag a registered version (git commit, DVC experiment); give it the `champion` alias
        when it is the default pipeline's (the caller decides: `provenance.champion_blocker`)."""
        for key, value in tags.items():
            self._call(f"model version tag {key}", self.client.set_model_version_tag,
                       name, version, key, value)
        if champion:
            self._call(f"model alias {CHAMPION}", self.client.set_registered_model_alias,
                       name, CHAMPION, version)

    def tag_model_version(self, metrics: Mapping[str, Any]) -> None:
        """Put key metrics (FID, detector AUC, ...) on this run's registered model version."""
        name, version = self.model
        if not (name and version):
            return
        for key, value in metrics.items():
            self._call(f"model version tag {key}", self.client.set_model_version_tag,
                       name, version, key, str(value))

    @contextlib.contextmanager
    def closing(self) -> Iterator[Tracker]:
        """Use the run, then close it: FINISHED, FAILED after an error, KILLED on Ctrl-C, so it
        is never left RUNNING. What `close` could not log is raised only when nothing else
        failed (after a crash, the crash is the error to show)."""
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            try:
                self.close(status)
            except UserError:
                if status == "FINISHED":
                    raise

    def close(self, status: str = "FINISHED") -> None:
        """End the run; raise one `UserError` naming everything that was not logged."""
        self._call("run status", self.client.set_terminated, self.run_id, status)
        if self.lost:
            shown = "; ".join(self.lost[:5]) + (f"; +{len(self.lost) - 5} more"
                                                 if len(self.lost) > 5 else "")
            raise UserError(
                f"MLflow ({self.uri}) did not record: {shown}. The stage's files were written; "
                "rerun the stage when the server is back to log them"
            )


def _repo_relative(path: Path) -> str:
    """`path` relative to the cwd (the repo root for the stages) when it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(Path.cwd().resolve())
               if resolved.is_relative_to(Path.cwd().resolve()) else resolved)
