"""The rows of the authors' FID tables, their settings per preset, and what a row costs.

A row is one experiment x method x seed: a training run (main_sym.py or main_elbo.py), the
sample grids (generate.py) and the two FIDs (random code and limiting, `python -m symvae fid`).
A preset fixes the sizes of every row; any size can be overridden from the command line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from symvae.experiment import EXPERIMENTS

METHODS = ("sym", "elbo")
METHOD_NAMES = {"sym": "symmetric", "elbo": "ELBO"}

# The authors' README (SPEC §7): 200k iterations, batch 1024, nz0=30, nz1=100, 70,000 images,
# 1000 chain steps. (random code FID, limiting FID) per experiment and method.
SEED_FIGURES: dict[tuple[str, str], tuple[float, float]] = {
    ("mnist-ladder", "elbo"): (3.2227, 36.6440),
    ("mnist-ladder", "sym"): (1.6543, 4.1015),
    ("mnist-reverse", "elbo"): (5.2889, 14.2256),
    ("mnist-reverse", "sym"): (1.4746, 4.9559),
    ("fmnist-ladder", "elbo"): (37.8115, 119.1699),
    ("fmnist-ladder", "sym"): (43.6204, 42.3663),
}
SEED_SETTINGS = "200k iterations, batch 1024, nz0/nz1 30/100, 70,000 images, 1000 chain steps"


@dataclass(frozen=True)
class Sizes:
    """Every number that shapes a row (flags of main_sym.py/main_elbo.py and
    symvae.evaluate.fid)."""

    niterations: int  # gradient updates
    bs: int  # training mini-batch
    stepsize: float  # Adam learning rate
    nz0: int  # bits of z0
    nz1: int  # bits of z1
    n: int  # images per FID set
    chain_steps: int  # steps of each limiting chain (FID and sample grids)
    fid_bs: int  # chains run side by side in the FID stage
    feature_bs: int  # images per Inception call
    fid_dims: int  # Inception features FID compares (pytorch-fid's --dims; the authors': 2048)
    save_period: int  # iterations per checkpoint: what a kill or preemption can cost
    log_period: int  # iterations per log line


SIZE_NAMES = tuple(f.name for f in fields(Sizes))
FID_DIMS = (64, 192, 768, 2048)  # the feature blocks of pytorch-fid's Inception
README = Sizes(niterations=200_000, bs=1024, stepsize=1e-4, nz0=30, nz1=100, n=70_000,
               chain_steps=1000, fid_bs=1000, feature_bs=50, fid_dims=2048, save_period=1000,
               log_period=100)


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    experiments: tuple[str, ...]  # the default choice of experiments
    base: Sizes
    per_experiment: tuple[tuple[str, dict], ...] = ()  # experiment -> changed sizes

    def sizes(self, experiment: str) -> Sizes:
        return replace(self.base, **dict(self.per_experiment).get(experiment, {}))


PRESETS = {p.name: p for p in (
    Preset("readme", "the authors' settings: " + SEED_SETTINGS, EXPERIMENTS, README),
    Preset("paper", "the paper's settings: 1M iterations for MNIST; 280k iterations and "
           "nz0/nz1 50/200 for Fashion-MNIST", EXPERIMENTS,
           replace(README, niterations=1_000_000),
           (("fmnist-ladder", {"niterations": 280_000, "nz0": 50, "nz1": 200}),)),
    # About 80 minutes for mnist-ladder's two rows on the 2-core CPU (docs/quick-table.md):
    # 5,000 updates at batch 64, FID on 1,000 images with 100-step chains.
    Preset("quick", "mnist-ladder on a 2-core CPU in about 80 minutes", ("mnist-ladder",),
           replace(README, niterations=5000, bs=64, n=1000, chain_steps=100, fid_bs=500,
                   save_period=500)),
    # About 8 minutes for mnist-ladder's two rows on one H200 by the GPU rates measured below.
    Preset("gpu", "mnist-ladder in about 8 minutes on one H200", ("mnist-ladder",),
           replace(README, niterations=15_000, n=10_000, feature_bs=500)),
    # The 64 features of Inception's first block: a FID of 2048 features costs two matrix
    # square roots of 2048 x 2048 (about 20 s each on the 2-core CPU), whatever the image count.
    Preset("smoke", "seconds per row, for the tests", EXPERIMENTS,
           Sizes(niterations=8, bs=8, stepsize=1e-4, nz0=4, nz1=8, n=10, chain_steps=2,
                 fid_bs=10, feature_bs=10, fid_dims=64, save_period=4, log_period=2)),
)}


@dataclass(frozen=True)
class Row:
    """One table row of one seed: where it runs and with which sizes."""

    experiment: str
    method: str
    seed: int
    sizes: Sizes

    @property
    def name(self) -> str:
        """Its folder under results/PRESET/."""
        return f"{self.experiment}-{self.method}-s{self.seed}"

    @property
    def tag(self) -> str:
        """Its --call_prefix."""
        return f"{self.method}-s{self.seed}"

    @property
    def seed_figures(self) -> tuple[float, float]:
        return SEED_FIGURES[self.experiment, self.method]

    def as_dict(self) -> dict:
        return {"experiment": self.experiment, "method": self.method, "seed": self.seed,
                "sizes": asdict(self.sizes)}


def build_rows(preset: str, experiments: tuple[str, ...] | None = None,
               methods: tuple[str, ...] = METHODS, seeds: tuple[int, ...] = (0,),
               overrides: dict | None = None) -> list[Row]:
    """The grid experiments x methods x seeds of a preset, with `overrides` applied to all."""
    p = PRESETS[preset]
    return [Row(e, m, s, replace(p.sizes(e), **(overrides or {})))
            for e in experiments or p.experiments for m in methods for s in seeds]


# --- what a row costs ----------------------------------------------------------------------
# CPU: seconds per iteration at batch 64 and 1024, measured on the 2-core CPU
# (docs/benchmarks.md, "CPU: ours"; torch 2.14.1, 2 threads); other batches are interpolated
# linearly.
CPU_STEP = {
    ("mnist-ladder", "sym"): (0.192, 2.60), ("mnist-ladder", "elbo"): (0.145, 1.93),
    ("mnist-reverse", "sym"): (0.186, 2.56), ("mnist-reverse", "elbo"): (0.136, 1.92),
    ("fmnist-ladder", "sym"): (0.222, 3.01), ("fmnist-ladder", "elbo"): (0.165, 2.21),
}
# CPU rates of the FID stage (docs/evaluate.md, "FID scores"): Inception images/s, and
# image-steps/s of the limiting chains.
CPU_INCEPTION, CPU_CHAIN = 5.0, 400.0
# GPU: measured on one H200 (docs/bench-gpu.md, 2026-12-04, mnist-ladder): 11.4 ms per
# symmetric and 8.9 ms per ELBO iteration at batch 1024 replayed, Inception 0.18 ms per image
# at batch 500, limiting chains about 450,000 image-steps/s at 10,000 chains.
GPU_STEP_1024 = {"sym": 0.0114, "elbo": 0.0089}
GPU_INCEPTION, GPU_CHAIN = 5500.0, 450_000.0
GRID_IMAGES = 40  # generate.py's default grid


def step_seconds(row: Row, gpu: bool) -> float:
    """Estimated seconds per training iteration of a row."""
    if gpu:
        return GPU_STEP_1024[row.method] * max(row.sizes.bs, 256) / 1024
    at64, at1024 = CPU_STEP[row.experiment, row.method]
    return at64 + (at1024 - at64) * (row.sizes.bs - 64) / (1024 - 64)


def estimate_seconds(rows: list[Row], gpu: bool) -> dict[str, dict[str, float]]:
    """Estimated seconds of each row's stages (train, generate, fid). The data statistics of a
    data set and size are computed once (symvae.evaluate.fid caches them): the first row using them
    carries their cost."""
    inception, chain = (GPU_INCEPTION, GPU_CHAIN) if gpu else (CPU_INCEPTION, CPU_CHAIN)
    seen, out = set(), {}
    for row in rows:
        s = row.sizes
        data_key = (row.experiment.split("-")[0], s.n)
        data_images = 0 if data_key in seen else s.n
        seen.add(data_key)
        out[row.name] = {
            "train": s.niterations * step_seconds(row, gpu),
            "generate": GRID_IMAGES * s.chain_steps / chain,
            "fid": (2 * s.n + data_images) / inception + s.n * s.chain_steps / chain,
        }
    return out
