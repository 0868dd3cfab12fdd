"""The job service: the one place a tuning job is created, read, cancelled and its tuned model deleted. The Vertex
routes, the OpenAI routes, the console and the CLI parse their own wire format into a `JobRequest`, call this, and
render what it returns; so a job is the same job whichever door made it. Errors are `RequestError`s naming the
request's field as tunery names it ("train", "hyperparameters.epochs"); each door maps those to its own names."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunery import models
from tunery.config import TuningConfig
from tunery.data import sources
from tunery.data.validate import Limits, validate
from tunery.errors import ConfigError, DatasetError, ModelNotFoundError, RequestError
from tunery.jobs import states
from tunery.jobs.spec import Evaluation, JobRequest, JobSpec
from tunery.jobs.store import Endpoint, Job, Model, Store


@dataclass(frozen=True)
class Target:
    """What a generate call runs: a base model, and the adapter on it (None: the base alone)."""

    base: models.BaseModelSpec
    adapter: str | None
    version: str  # the name answers carry as modelVersion


@dataclass(frozen=True)
class Policy:
    """What the server lets a job read, and how many jobs may wait."""

    runs_root: Path  # where job run directories go
    allowed_roots: tuple[Path, ...]  # local datasets and base-model directories only under these
    allow_http: bool = False  # http(s) dataset URLs (public addresses only)
    allowed_buckets: tuple[str, ...] = ()  # gs:// and s3:// buckets datasets may come from
    validate_on_create_bytes: int = 8 << 20  # local datasets this small are validated before create returns
    max_pending: int | None = None  # PENDING jobs at most (Vertex's concurrent-job quota); more: RESOURCE_EXHAUSTED
    data_parallel: bool = False  # whether jobs may ask for more than one worker (the Ray executor)


class JobService:
    def __init__(self, store: Store, policy: Policy, forget_adapter=None) -> None:
        self.store, self.policy = store, policy
        self._forget = forget_adapter or (lambda path: None)  # the serving registry drops a deleted adapter

    # ---------------------------------------------------------------- create

    def create(self, project: str, location: str, req: JobRequest) -> Job:
        """Resolve, check and store a job; nothing is stored when any check fails."""
        if req.workers > 1 and not self.policy.data_parallel:
            raise RequestError("workers", f"{req.workers} data-parallel workers need the Ray executor (tunery serve "
                                          "--executor ray); this server runs jobs as local processes, one worker each")
        try:
            spec = self.resolve(req)
        except RequestError as exc:
            exc.method = req.hyperparameters.get("method", "supervised")  # the door names the fields of this method
            raise
        job = self.store.create_job(project, location, spec, self.policy.runs_root, self.policy.max_pending)
        if job is None:
            raise RequestError("", f"{self.policy.max_pending} jobs are waiting to start already, this server's "
                                   "limit (--max-pending-jobs); try again when one has started, or cancel one",
                               status="RESOURCE_EXHAUSTED")
        return job

    def resolve(self, req: JobRequest) -> JobSpec:
        """The JobSpec of a request: datasets and base model resolved, every default filled in, the datasets
        validated when they are small and local."""
        cfg: dict = {"train": self._dataset(req.train, "train"), **req.hyperparameters}
        if req.validation:
            cfg["validation"] = self._dataset(req.validation, "validation")
        if req.pre_tuned:
            model = self.tuned_model(req.pre_tuned.model_id, field="pre_tuned.model")
            paths = {c["checkpointId"]: c["path"] for c in model.checkpoints}
            ckpt = req.pre_tuned.checkpoint_id
            if ckpt and ckpt not in paths:
                raise RequestError("pre_tuned.checkpoint_id", f"expected one of {', '.join(paths)}, found {ckpt!r}")
            cfg["init_adapter"] = paths[ckpt] if ckpt else model.adapter_dir
            from tunery.train import checkpoints as ck

            for key, value in ck.adapter_settings(Path(cfg["init_adapter"])).items():  # rank, alpha, targets
                if cfg.setdefault(key, value) != value:
                    raise RequestError(f"hyperparameters.{key}", "expected the pre-tuned model's {expected} (or "
                                       "nothing), found {found}", values={"expected": value, "found": cfg[key]})
            base = models.resolve(model.base_model)  # the server's own record, not the request's
        else:
            base = models.resolve_allowed(req.base_model, list(self.policy.allowed_roots))
        try:
            tc = TuningConfig(**cfg, base_model=base.name, output="")
        except ConfigError as exc:  # a range the door's parse did not check
            field = "hyperparameters." + exc.field.lstrip("-").replace("-", "_")
            raise RequestError(field, exc.message.removeprefix(f"{exc.field}: ")) from exc
        tc = dataclasses.replace(tc, lora_alpha=tc.alpha,  # the default alpha resolved now, like the rest
                                 media_roots=tuple(str(r) for r in self.policy.allowed_roots))  # read by the job too
        self._validate_small(tc, base)
        return JobSpec(door=req.door, base_model=base.name, tuning=tc, train_uri=req.train,
                       validation_uri=req.validation,
                       requested_base_model=req.base_model if req.base_model and req.base_model != base.name else None,
                       explicit=tuple(k for k in req.hyperparameters), evaluation=self._evaluation(req.evaluation, tc),
                       workers=req.workers, pre_tuned=req.pre_tuned, display_name=req.display_name,
                       description=req.description, labels=dict(req.labels), openai=req.openai,
                       warnings=req.warnings)

    def _dataset(self, uri: str, field: str) -> str:
        p = self.policy
        return sources.resolve(uri, field, list(p.allowed_roots), p.allow_http, p.allowed_buckets)

    def _small(self, *files: str) -> bool:
        limit = self.policy.validate_on_create_bytes
        return all(Path(f).is_file() and Path(f).stat().st_size <= limit for f in files)

    def _validate_small(self, tc: TuningConfig, base: models.BaseModelSpec) -> None:
        """Small local datasets are validated before create returns, so their errors come back at once."""
        files = [tc.train] + ([tc.validation] if tc.validation else [])
        if not self._small(*files):
            return
        if tc.method == "preference":
            from tunery.data import preference

            report = preference.validate(tc.train, tc.validation, template=models.load_template(base),
                                         limits=Limits(base.max_tokens, "the base model's limit"), max_issues=20)
        else:
            report = validate(tc.train, tc.validation, template=models.load_template(base),
                              media=models.media_policy(base, list(self.policy.allowed_roots)),
                              limits=Limits(base.max_tokens, "the base model's limit"), max_issues=20)
        if not report.valid:
            errors = [i for i in report.issues if i.severity == "error"]
            more = sum(f.errors for f in report.files) - len(errors[:5])
            raise RequestError("", "the dataset has errors: " + "; ".join(str(i) for i in errors[:5])
                               + (f" (and {more} more)" if more > 0 else ""))

    def _evaluation(self, ev: Evaluation | None, tc: TuningConfig) -> Evaluation | None:
        """The after-tuning evaluation, its dataset resolved (default: the validation dataset) and checked."""
        if ev is None:
            return None
        if ev.dataset:
            dataset = self._dataset(ev.dataset, "evaluation.dataset")
        elif tc.validation:
            dataset = tc.validation
        else:
            raise RequestError("evaluation", "no evaluation dataset; set validationDatasetUri or "
                                             "evaluationConfig.datasetUri")
        if self._small(dataset):
            from tunery.eval.run import load_items

            try:
                load_items(dataset, ev.limit)
            except DatasetError as exc:
                raise RequestError("evaluation.dataset", exc.message) from exc
        return dataclasses.replace(ev, dataset=dataset)

    # ---------------------------------------------------------------- read, cancel, delete

    def get(self, job_id: str, project: str | None = None, location: str | None = None) -> Job:
        """A job; NOT_FOUND when there is none, or it lives in another project or location than the one named."""
        job = self.store.get_job(job_id)
        if job is None or (project is not None and (job.project, job.location) != (project, location)):
            raise RequestError("", f"tuning job {job_id} not found", status="NOT_FOUND")
        return job

    def cancel(self, job_id: str, project: str | None = None, location: str | None = None) -> Job:
        """Cancel a job in whatever state it is right now (one transaction: no race with the worker)."""
        self.get(job_id, project, location)
        found = self.store.request_cancel(job_id, {"code": 1, "message": "CANCELED"})  # as Vertex says it
        if found in states.ENDED:
            raise RequestError("", f"tuning job {job_id} has already ended ({found})", status="FAILED_PRECONDITION")
        return self.store.get_job(job_id)  # type: ignore[return-value]

    def pause(self, job_id: str, project: str | None = None, location: str | None = None) -> Job:
        """Stop a queued or running job, its state saved, until resume() (OpenAI's pause)."""
        self.get(job_id, project, location)
        found = self.store.request_pause(job_id)
        if found not in (states.PENDING, states.RUNNING, states.PAUSING, states.PAUSED):
            raise RequestError("", f"tuning job {job_id} cannot be paused: it is {found}", status="FAILED_PRECONDITION")
        return self.store.get_job(job_id)  # type: ignore[return-value]

    def resume(self, job_id: str, project: str | None = None, location: str | None = None) -> Job:
        """Queue a paused job again: it continues from its last saved state."""
        job = self.get(job_id, project, location)
        try:
            return self.store.transition(job_id, states.PENDING, detail=states.WAITING_FOR_QUOTA)
        except states.IllegalTransition:
            raise RequestError("", f"tuning job {job_id} is not paused ({job.state})",
                               status="FAILED_PRECONDITION") from None

    def evaluation_report(self, job: Job) -> Path:
        """The JSON report of a job's before/after evaluation (its HTML page beside it, same name)."""
        from tunery.jobs import child

        if not job.spec.evaluation:
            raise RequestError("", f"tuning job {job.id} has no evaluation (create it with evaluationConfig)",
                               status="NOT_FOUND")
        status = child.evaluation_status(Path(job.run_dir))
        if status.get("error"):
            raise RequestError("", f"the evaluation of tuning job {job.id} failed: {status['error']['message']}",
                               status="FAILED_PRECONDITION")
        if "report" not in status:
            raise RequestError("", f"the evaluation report of tuning job {job.id} is not ready ({job.state})",
                               status="NOT_FOUND")
        return Path(status["report"])

    def tuned_model(self, model_id: str, project: str | None = None, location: str | None = None,
                    field: str = "name") -> Model:
        """A tuned model by id (or resource name); NOT_FOUND as for get()."""
        model_id = model_id.rsplit("/", 1)[-1].split("@")[0]
        model = self.store.get_model(model_id)
        if model is None or (project is not None and (model.project, model.location) != (project, location)):
            raise RequestError(field, f"tuned model {model_id} not found", status="NOT_FOUND")
        return model

    # ---------------------------------------------------------------- endpoints and generation targets

    def endpoint(self, endpoint_id: str, project: str | None = None, location: str | None = None
                 ) -> tuple[Endpoint, Model]:
        ep = self.store.get_endpoint(endpoint_id)
        model = self.store.get_model(ep.model_id) if ep else None
        if ep is None or model is None or (project is not None and (ep.project, ep.location) != (project, location)):
            name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id:.40}" if project is not None \
                else f"{endpoint_id:.40}"
            raise RequestError("", f"endpoint {name} not found (it, or its model, may have been deleted)",
                               status="NOT_FOUND")
        return ep, model

    def undeploy_endpoint(self, endpoint_id: str, project: str | None = None, location: str | None = None) -> None:
        """The endpoint stays and serves nothing; the tuned model stays (callable by model name)."""
        ep, _ = self.endpoint(endpoint_id, project, location)
        self.store.undeploy_endpoint(ep.id)

    def delete_endpoint(self, endpoint_id: str, project: str | None = None, location: str | None = None) -> None:
        """Vertex refuses to delete an endpoint with a deployed model (undeploy first, as `delete(force=True)` does)."""
        ep, model = self.endpoint(endpoint_id, project, location)
        if ep.deployed:
            raise RequestError("", f"endpoint {ep.name} still has deployed model {model.id}: undeploy it first "
                                   "(endpoint.delete(force=True) does)", status="FAILED_PRECONDITION")
        self.store.delete_endpoint(ep.id)

    def endpoint_target(self, endpoint_id: str, project: str | None = None, location: str | None = None) -> Target:
        ep, model = self.endpoint(endpoint_id, project, location)
        if not ep.deployed:
            raise RequestError("", f"endpoint {endpoint_id} has no deployed model (it was undeployed); the tuned "
                                   f"model {model.name} is still there: call it by model name, or tune again",
                               status="FAILED_PRECONDITION")
        paths = {c["checkpointId"]: c["path"] for c in model.checkpoints}
        adapter = paths[ep.checkpoint_id] if ep.checkpoint_id else model.adapter_dir
        return Target(models.resolve(model.base_model), adapter, f"{model.name}@1")

    def model_target(self, model_id: str, project: str | None = None, location: str | None = None) -> Target:
        """A tuned model by name serves its final adapter whether or not an endpoint is deployed."""
        model = self.tuned_model(model_id, project, location, field="")
        return Target(models.resolve(model.base_model), model.adapter_dir, f"{model.name}@1")

    def base_target(self, name: str) -> Target:
        try:
            spec = models.resolve_allowed(name, list(self.policy.allowed_roots))
        except ModelNotFoundError as exc:
            raise RequestError("", f"publisher model {name} not found: {exc.message}", status="NOT_FOUND") from exc
        return Target(spec, None, spec.name)

    def export_gguf(self, model_id: str, project: str | None, location: str | None, destination: str | None) -> Path:
        """A tuned model's GGUF files (adapter, merged model, Ollama Modelfiles) written to `destination`/<model
        id>-gguf, a directory under the allowed roots (default: HOME/exports). An existing one is never replaced."""
        from tunery.serve import gguf

        field = "outputConfig.artifactDestination.outputUriPrefix"
        model = self.tuned_model(model_id, project, location)
        if not gguf.convertible(models.resolve(model.base_model)):
            raise RequestError("", f"tuned model {model.id}: its base model {model.base_model} is not a GGUF model, so "
                                   "there is no GGUF to export (tunery export --merged writes a Hugging Face model)",
                               status="FAILED_PRECONDITION")
        root = self.policy.allowed_roots[0] / "exports" if destination is None else \
            sources.writable_dir(destination, field, list(self.policy.allowed_roots))
        out = root / f"{model.id}-gguf"
        if out.exists():
            raise RequestError(field, f"{out} exists already; remove it or name another directory",
                               status="ALREADY_EXISTS")
        gguf.export(Path(model.adapter_dir), out)
        return out

    def delete_model(self, model_id: str, project: str | None = None, location: str | None = None) -> None:
        """Vertex cannot delete tuned models; tunery can: rows, loaded adapters and files go."""
        model = self.tuned_model(model_id, project, location)
        for path in [model.adapter_dir] + [c["path"] for c in model.checkpoints]:
            self._forget(path)
        self.store.delete_model(model.id)
        run = Path(model.adapter_dir).parent
        for sub in ("adapter", "checkpoints"):
            shutil.rmtree(run / sub, ignore_errors=True)
