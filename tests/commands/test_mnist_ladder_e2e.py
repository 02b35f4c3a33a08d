"""mnist-ladder end to end: the paper's command lines on small synthetic data, and real learning."""
from __future__ import annotations

import pytest
from experiment_runs import TINY_NZ0, TINY_NZ1, data_loss_windows, end_to_end

NAMES = {"sym": ("ploss1", "plossx", "qloss0", "qloss1", "pmi1", "qmi0", "qmi1"),
         "elbo": ("dloss", "kl0loss", "kl1loss", "pmi1", "qmi0", "qmi1")}


@pytest.mark.parametrize("method", ["sym", "elbo"])
def test_end_to_end(experiment_copy, data_root, method):
    end_to_end(experiment_copy("mnist-ladder"), method, data_root, NAMES[method],
               mi_bits={"p1": TINY_NZ1, "q0": TINY_NZ0, "q1": TINY_NZ1}, grid_rows=4,
               binary=True)


@pytest.mark.slow
def test_short_real_mnist_run_lowers_the_pixel_loss(experiment_copy):
    """60 small-batch iterations on real MNIST clearly lower -log p(x|z1) per pixel."""
    first, last = data_loss_windows(experiment_copy("mnist-ladder"), "sym", "plossx")
    assert last < 0.8 * first, (first, last)
