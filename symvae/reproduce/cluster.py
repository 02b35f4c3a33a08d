"""Rows as submitit jobs: a SLURM array (one GPU per row) or submitit's local executor.

submitit pickles a RowJob and its row, runs it in a fresh process (a SLURM array task, or a
local subprocess), and on a timeout or preemption signal calls RowJob.checkpoint and requeues
the job. The requeued job runs the same row again, which skips its finished stages and
continues training from the last models/m_TAG.pt (at most --save_period iterations lost).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import submitit

from symvae.learn import checkpoint as ckpt_io
from symvae.reproduce.grid import Row
from symvae.reproduce.stages import Options, StageFailed, run_row

JOBS_FILE = "jobs.json"  # row name -> job id of its latest submission


class RowJob(submitit.helpers.Checkpointable):
    """One row of the tables as a job; the result is the row's state (row.json)."""

    requeued = False

    def __call__(self, row: Row, opts: Options) -> dict:
        try:
            return run_row(row, opts)
        except StageFailed as err:
            if self.requeued:  # submitit's requeue exit, raised inside a stage: let it through
                raise SystemExit(err.code) from None
            raise

    def checkpoint(self, row: Row, opts: Options) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout or preemption, just before it requeues the job and
        exits: the requeued job runs the same row, which continues where it stopped."""
        self.requeued = True
        return submitit.helpers.DelayedSubmission(RowJob(), row, opts)


def make_executor(kind: str, folder: Path, name: str, timeout_min: int,
                  gpus_per_node: int, cpus_per_task: int | None = None,
                  partition: str | None = None,
                  array_parallelism: int | None = None) -> submitit.AutoExecutor:
    """submitit's executor for `kind` ('slurm' or 'submitit-local'), job files under FOLDER."""
    missing = [c for c in ("sbatch", "srun") if kind == "slurm" and shutil.which(c) is None]
    if missing:
        raise FileNotFoundError(missing[0])
    cluster = "slurm" if kind == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict = {"name": name, "timeout_min": timeout_min, "gpus_per_node": gpus_per_node,
                    "tasks_per_node": 1}
    if cluster == "slurm":
        params.update(slurm_partition=partition, slurm_array_parallelism=array_parallelism,
                      cpus_per_task=cpus_per_task)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


class JobsFileError(ValueError):
    """An unusable FOLDER/jobs.json; the message names it and the fix."""


def read_jobs(folder: Path) -> dict[str, str]:
    """Row name -> job id of its latest submission (empty when nothing was submitted)."""
    path = folder / JOBS_FILE
    if path.exists() and not path.is_file():
        raise JobsFileError(f"{path} is a folder, but the job ids are written there; move it "
                            "away")
    if not path.is_file():
        return {}
    fix = "delete it (only --resubmit's bookkeeping is lost: running jobs are not seen)"
    try:
        jobs = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # UnicodeDecodeError is a ValueError
        raise JobsFileError(f"{path}: unreadable ({type(err).__name__}); {fix}") from None
    if not isinstance(jobs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in jobs.items()):
        raise JobsFileError(f"{path}: not a record of job ids; {fix}")
    return jobs


def in_flight(folder: Path, job_id: str) -> bool:
    """Whether a submitted job has not ended: submitit writes its result file when it does."""
    return not submitit.SlurmJob(folder=folder, job_id=job_id).paths.result_pickle.exists()


def submit(executor: submitit.AutoExecutor, rows: list[Row], opts: Options,
           folder: Path) -> list[submitit.Job]:
    """Submit the rows as one job array; their ids are added to FOLDER/jobs.json."""
    jobs = executor.map_array(RowJob(), rows, [opts] * len(rows))
    record = {**read_jobs(folder), **{r.name: j.job_id for r, j in zip(rows, jobs, strict=True)}}
    text = json.dumps(record, indent=1) + "\n"
    ckpt_io.atomic_write(folder / JOBS_FILE, lambda f: f.write(text.encode()))
    return jobs
