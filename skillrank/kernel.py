"""The fused C/OpenMP kernel of the SGD step: the math of skillrank.model, without temporaries.

``kl_loss_and_grad`` plus a sparse ``torch.optim.SGD`` step materialise the batch's softmax
and one gradient row per (profile, job) pair, a few hundred MB per paper-sized batch. The
kernel in ``csrc/sgd_kernel.c`` computes the same loss and step in place on ``phi_t`` with one
preallocated batch x skills buffer, in parallel over profiles (forward and softmax) and then
over the batch's job rows (the update), and gives bit-identical results for any thread count.

It is compiled at first use with the system C compiler (``$CC``, else ``cc``, else ``gcc``)
into ``<project root>/.cache/kernels/``, under a name keyed on the source, the flags, the
compiler's version and the machine (``-march=native``), and loaded with ctypes.
``load_kernel`` raises ``KernelUnavailable`` when that fails, so that the trainer can fall
back to the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from skillrank.config import PROJECT_ROOT
from skillrank.model import Batch

SOURCE = Path(__file__).resolve().parent / "csrc" / "sgd_kernel.c"
CACHE_DIR = PROJECT_ROOT / ".cache" / "kernels"
# -march=native: the cache key includes the machine, so another CPU gets its own build.
# Fused multiply-adds are allowed: each value is computed by one code path whatever the
# thread count (see the source), so they cost no determinism.
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-std=gnu11", "-fPIC", "-shared"]
# Rows of the work buffer are padded to this many floats (LANES in the C source).
_LANES = 16
_ALIGN_BYTES = 64
# The C side's status codes (SKR_* in the source), as errors.
_ERRORS = {
    1: "the batch is empty",
    2: "the batch's offsets are not those of profiles with >= 1 job and >= 1 skill each",
    3: "a job id is outside phi_t's rows",
    4: "a skill id is outside phi_t's columns",
    5: "out of memory",
}


class KernelUnavailable(RuntimeError):
    """The fused kernel cannot be built or loaded here; the message says why, in one line."""


class Kernel:
    """The loaded library and its work buffer (one batch x skills of floats, kept across calls).

    Calls are serialised by a lock: the work buffer is shared.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        batch_args = (ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64)
        self._sgd_step = library.skr_sgd_step
        self._sgd_step.argtypes = [*batch_args, ctypes.c_float, ptr, i64, ctypes.c_int, ptr]
        self._sgd_step.restype = ctypes.c_int
        self._work = torch.empty(0, dtype=torch.float32)
        self._lock = threading.Lock()

    def sgd_step(self, phi_t: Tensor, batch: Batch, learning_rate: float) -> float:
        """One plain SGD step on phi_t in place; returns the batch's mean KL before the step.

        Same math as ``kl_loss_and_grad`` followed by ``phi_t -= learning_rate * grad``:
        every gradient of the batch comes from phi_t before the step. phi_t: float32,
        contiguous, on CPU, (jobs, skills).
        """
        loss = ctypes.c_double()
        self._call(self._sgd_step, phi_t, batch, [ctypes.c_float(learning_rate)], loss)
        return loss.value

    def _call(
        self,
        function: Callable[..., int],
        phi_t: Tensor,
        batch: Batch,
        extra: list[ctypes.c_float],
        result: ctypes.c_double,
    ) -> None:
        """Check phi_t, convert the batch's tensors, call `function` (batch arguments, `extra`,
        work buffer, threads, &result) and raise ValueError on a bad status."""
        if phi_t.dtype != torch.float32 or phi_t.device.type != "cpu" or phi_t.dim() != 2:
            raise ValueError(
                f"phi_t must be a 2-d float32 CPU tensor, got {phi_t.dtype} {tuple(phi_t.shape)}"
                f" on {phi_t.device}"
            )
        if not phi_t.is_contiguous():
            raise ValueError("phi_t must be contiguous")
        jobs, skills = phi_t.shape
        job_ids, job_offsets, skill_ids, skill_offsets = (
            t.to("cpu", torch.int64).contiguous()
            for t in (batch.job_ids, batch.job_offsets, batch.skill_ids, batch.skill_offsets)
        )
        job_weights = batch.job_weights.to("cpu", torch.float32).contiguous()
        stride = -(-skills // _LANES) * _LANES
        with self._lock:
            work = self._work_buffer(batch.size * stride)
            status = function(
                phi_t.data_ptr(),
                jobs,
                skills,
                job_ids.data_ptr(),
                job_weights.data_ptr(),
                job_offsets.data_ptr(),
                skill_ids.data_ptr(),
                skill_offsets.data_ptr(),
                batch.size,
                job_ids.numel(),
                skill_ids.numel(),
                *extra,
                work,
                stride,
                torch.get_num_threads(),
                ctypes.byref(result),
            )
        if status:
            raise ValueError(f"fused kernel: {_ERRORS.get(status, f'status {status}')}")

    def _work_buffer(self, floats: int) -> int:
        """Address of `floats` 64-byte-aligned floats, growing the buffer when needed."""
        slack = _ALIGN_BYTES // 4
        if self._work.numel() < floats + slack:
            self._work = torch.empty(floats + slack, dtype=torch.float32)
        address = self._work.data_ptr()
        return address + (-address % _ALIGN_BYTES)


@functools.cache
def load_kernel() -> Kernel:
    """The fused kernel, compiled into CACHE_DIR on first use; one per process.

    Raises KernelUnavailable (no compiler, compile error, unloadable library).
    """
    return build_kernel(CACHE_DIR)


def build_kernel(cache_dir: Path, compiler: str | None = None) -> Kernel:
    """Compile SOURCE into `cache_dir` unless an up-to-date build is there, and load it.

    `compiler` defaults to $CC, else cc, else gcc. The build goes to a temporary name and is
    renamed into place, so that processes compiling at the same time do not clash.
    """
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise KernelUnavailable("no C compiler found ($CC, cc and gcc are all missing)")
    version = _compiler_version(cc)
    key = hashlib.sha256(
        SOURCE.read_bytes() + "\0".join([*FLAGS, version, _machine()]).encode()
    ).hexdigest()[:16]
    library = cache_dir / f"sgd_kernel-{key}.so"
    if not library.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{library.stem}.", suffix=".so", dir=cache_dir)
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True
            )
            if done.returncode != 0:
                lines = [line for line in done.stderr.splitlines() if line.strip()] or [""]
                first = next((line for line in lines if "error" in line), lines[0])
                raise KernelUnavailable(f"compiling {SOURCE.name} with {cc} failed: {first}")
            os.replace(tmp, library)
        finally:
            Path(tmp).unlink(missing_ok=True)
    try:
        return Kernel(ctypes.CDLL(str(library)))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {library}: {exc}") from exc


def _compiler_version(cc: str) -> str:
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True)
    except OSError as exc:
        raise KernelUnavailable(f"cannot run the C compiler {cc}: {exc.strerror}") from exc
    if done.returncode != 0:
        raise KernelUnavailable(f"{cc} --version failed with exit code {done.returncode}")
    return done.stdout


def _machine() -> str:
    """What -march=native depends on: the architecture and, on Linux, the CPU's model and flags."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    wanted = ("model name", "flags", "cpu family", "model\t")
    described = {line for line in cpuinfo if line.startswith(wanted)}
    return "\n".join([platform.machine(), platform.processor(), *sorted(described)])
