"""A Ray job's entrypoint: `python -m tunery.jobs.ray_train RUN_DIR` runs the job with Ray Train on the cluster.

The driver holds the job directory (one writer per job, as `tunery.jobs.child` does) and runs a TorchTrainer with
`workers` from job.json. Ray Train starts one worker per rank, sets up the torch process group (gloo on CPU, NCCL on
GPU) and the RANK/WORLD_SIZE variables, so `tunery.train.distributed.init()` joins that group and the very same
`train()` runs data parallel, bit for bit as under torchrun.

Checkpoints: the run dir on shared storage is the checkpoint store. train() saves crash-safe resume states there
and resumes from the newest one, so when FailureConfig restarts a lost worker group the new group continues from it;
asking Ray Train to copy each state again (ray.train.report(checkpoint=...)) would double the I/O for nothing.
When Ray Train gives up (max_failures used), the driver exits non-zero and tunery resubmits the job as a new attempt,
which resumes the same way.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from tunery import locks
from tunery.jobs.child import JOB_FILE, LOCKED_EXIT

MAX_WORKER_FAILURES_ENV = "TUNERY_RAY_MAX_WORKER_FAILURES"
MAX_WORKER_FAILURES = 2  # worker-group restarts inside one attempt before the attempt fails


def _train_loop(config: dict) -> None:
    """One Ray Train worker: the local job runner on its rank."""
    import ray.train

    from tunery.jobs import child

    rank = ray.train.get_context().get_world_rank()
    code = child.run(Path(config["run_dir"]), rank=rank)
    ray.train.report({"exit_code": code})  # tunery reads the outcome from result.json; this is for Ray's own UI


def main(run_dir: Path) -> int:
    """Hold the job directory, then fit. Exit 0 when train() ran to its end (result.json says how)."""
    try:
        locks.acquire(run_dir / locks.LOCK_FILE, f"job directory {run_dir}")
    except locks.Locked as exc:
        print(f"tunery ray driver: {exc}", file=sys.stderr, flush=True)
        return LOCKED_EXIT
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = json.loads((run_dir / JOB_FILE).read_text())
    workers = int(spec.get("workers") or 1)
    ray.init(log_to_driver=True)  # the cluster this job was submitted to (RAY_ADDRESS is set by the Jobs API)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1  # NCCL and one GPU per worker when the cluster has them
    max_failures = int(os.environ.get(MAX_WORKER_FAILURES_ENV) or MAX_WORKER_FAILURES)
    print(f"tunery: {workers} Ray Train worker(s), use_gpu={use_gpu}, max_failures={max_failures}", flush=True)
    trainer = TorchTrainer(
        _train_loop, train_loop_config={"run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name="train", storage_path=str(run_dir / "ray"),
                             failure_config=FailureConfig(max_failures=max_failures)))
    try:
        trainer.fit()
    except Exception:  # Ray Train gave up: tunery counts a crash and resubmits, resuming from the run dir
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
