"""Process settings: matrix products stay fp32 (PyTorch's and the authors' default) unless asked."""
from __future__ import annotations

import pytest
import torch

from symvae.cli import train_parser
from symvae.learn import runtime

CUDA = torch.device("cuda")  # configure() only sets flags: no GPU is needed to check them


@pytest.fixture
def restore_backends():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark) = saved


def test_cuda_matmul_tf32_is_off_by_default_and_convolutions_keep_pytorchs_default(
        restore_backends):
    torch.backends.cuda.matmul.allow_tf32 = True  # as a previous configuration left it
    conv_default = torch.backends.cudnn.allow_tf32
    applied = runtime.configure(CUDA)
    assert torch.backends.cuda.matmul.allow_tf32 is False and applied["tf32"] is False
    assert torch.backends.cudnn.allow_tf32 == conv_default
    assert torch.backends.cudnn.benchmark is True
    assert runtime.precision_note(applied) == \
        f"matmul tf32 off, conv tf32 {'on' if conv_default else 'off'}"


def test_tf32_flag_opts_in(restore_backends):
    args = train_parser("sym").parse_args(["--tf32"])
    applied = runtime.configure(CUDA, tf32=args.tf32)
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert runtime.precision_note(applied).startswith("matmul tf32 on, conv tf32 ")
    assert train_parser("sym").parse_args([]).tf32 is False


def test_strict_fp32_turns_tf32_off_for_convolutions_too(restore_backends):
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    args = train_parser("sym").parse_args(["--fp32_strict", "--tf32"])
    applied = runtime.configure(CUDA, tf32=args.tf32, strict_fp32=args.fp32_strict)
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert runtime.precision_note(applied) == "matmul tf32 off, conv tf32 off"


def test_cuda_n_is_made_the_current_device(restore_backends, monkeypatch):
    """Graphs and streams use the current device: cuda:1 must become it."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    runtime.configure(torch.device("cuda", 1))
    runtime.configure(torch.device("cuda"))  # no index: the current device stays
    assert chosen == [torch.device("cuda", 1)]


def test_cpu_runs_report_fp32(restore_backends):
    assert runtime.precision_note(runtime.configure(torch.device("cpu"), tf32=True)) == "fp32"


def test_openmp_threads_spin_briefly_unless_the_user_says_otherwise():
    """symvae sets GOMP_SPINCOUNT=1000 before torch starts OpenMP, unless the user set a wait
    policy or a spin count; theirs stays as given."""
    import os
    import subprocess
    import sys
    code = ("import os, symvae; print(os.environ.get('OMP_WAIT_POLICY', '-'), "
            "os.environ.get('GOMP_SPINCOUNT', '-'))")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for given, expected in (({}, "- 1000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE -"),
                            ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE -"),
                            ({"GOMP_SPINCOUNT": "5"}, "- 5")):
        out = subprocess.run([sys.executable, "-c", code], env=clean | given, check=True,
                             capture_output=True, text=True, timeout=120).stdout.strip()
        assert out == expected, given
