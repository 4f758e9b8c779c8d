"""Time and peak memory of one training step of the residual VQ stack, against a floor and peers.

What is measured: forward + backward, in training mode on CPU, of an 8-level, 1024-code,
EMA-updated, Euclidean residual VQ on z of shape (16, 128, T) (a codec-like size), with
loss = sum(quantized * fixed random tensor) + the VQ losses. Each contender is built once and
called twice before timing, so k-means initialisation (run at the first training call) is
not timed.

Floor: the bare cost any exact nearest-codeword RVQ pays at this size: per level, the distance
matmul (addmm), argmin and gather on the residual rows, chunked exactly like ours, with no
autograd. "ours / floor" is therefore the price of everything else (losses, EMA, dead-code
replacement, straight-through, backward); the target is <= 1.2x.

Peers, from the `bench` extra: vector-quantize-pytorch's ResidualVQ and EnCodec's
ResidualVectorQuantization, configured alike (k-means init with 10 iterations, decay 0.99,
dead-code threshold 2, plain straight-through) and fed the same channels-first z; the
transposes they need are inside the timing, as for a real user. EnCodec's own k-means builds
an (N, K, dim) tensor (16 GB at T=2000), so its untimed init runs the same Lloyd's algorithm
chunked (ours).

Interleaving: every repeat runs each contender once in turn (rotating who goes first), so
machine noise hits all alike; medians and minima over repeats are reported. Other work on the
machine still skews them (spinning OpenMP threads suffer most), hence the load in the header.

Peak memory, after all timing: each contender and size is built and warmed up again in a fresh
process whose glibc hands every large free back to the OS; the peak-RSS mark is reset, and the
figure is the peak RSS of one step minus the RSS just before it (Linux). Compare T=200 with
T=2000: the distances cost one chunk whatever T, while the activations kept for backward
(N x dim per level) grow with T in any implementation.

On a GPU (when CUDA is available, after the CPU tables, or alone with --device cuda): the issue-12
rows, z of shape (16, 128, 200), (16, 128, 2000) and (64, 128, 2000), fp32, the same contenders
built on the GPU and interleaved, each call timed with CUDA events (median of 20); peak memory is
torch.cuda.max_memory_allocated during one step minus what was allocated before it. Targets:
ours within 3x of the floor at (16, 128, 200) and 1.5x at (64, 128, 2000), at least 2x faster
than EnCodec at every size, and the lowest memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from codec.quantize.lookup import chunk_rows_for

BATCH, DIM, LEVELS, CODES = 16, 128, 8, 1024
GPU_SHAPES = ((16, 200), (16, 2000), (64, 2000))  # (batch, T) of the issue's GPU table
GPU_REPEATS = 20
GPU_FLOOR_TARGETS = {(16, 200): 3.0, (64, 2000): 1.5}
CONTENDERS = ("floor", "ours", "vq-pytorch", "encodec")
SEED = 0
MIB = 2**20


def _inputs(t: int, batch: int = BATCH, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    z = torch.randn(batch, DIM, t, device=device, requires_grad=True)
    weight = torch.randn(batch, DIM, t, device=device)
    return z, weight


def _training_step(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                   z: torch.Tensor, weight: torch.Tensor) -> Callable[[], None]:
    """forward(z) -> (quantized (B, dim, T), summed VQ losses); returns one forward+backward."""

    def step() -> None:
        z.grad = None
        quantized, vq_loss = forward(z)
        ((quantized * weight).sum() + vq_loss).backward()

    return step


def _floor(z: torch.Tensor) -> Callable[[], None]:
    books = torch.randn(LEVELS, CODES, DIM, device=z.device)
    biases = books.pow(2).sum(dim=-1)
    chunk = chunk_rows_for(CODES)

    @torch.no_grad()
    def step() -> None:
        residual = z.detach().transpose(1, 2).reshape(-1, DIM)  # (N, dim) rows, a copy
        for book, bias in zip(books, biases, strict=True):
            book_t = book.t()
            for start in range(0, residual.shape[0], chunk):
                rows = residual[start : start + chunk]
                scores = torch.addmm(bias, rows, book_t, beta=1.0, alpha=-2.0)
                rows -= book.index_select(0, scores.argmin(dim=1))

    return step


def _ours(z: torch.Tensor, weight: torch.Tensor) -> Callable[[], None]:
    from codec.quantize import ResidualVQ

    rvq = ResidualVQ(dim=DIM, num_quantizers=LEVELS, codebook_size=CODES, update="ema",
                     normalization="none", init="kmeans", kmeans_iters=10, decay=0.99,
                     dead_code_threshold=2.0).to(z.device).train()

    def forward(x):
        out = rvq(x)
        return out.quantized, sum(out.losses.values())

    return _training_step(forward, z, weight)


def _vq_pytorch(z: torch.Tensor, weight: torch.Tensor) -> Callable[[], None]:
    from vector_quantize_pytorch import ResidualVQ as LucidRVQ

    # rotation_trick=False: plain straight-through, like ours and EnCodec (its default is on).
    rvq = LucidRVQ(dim=DIM, num_quantizers=LEVELS, codebook_size=CODES, kmeans_init=True,
                   kmeans_iters=10, decay=0.99, threshold_ema_dead_code=2,
                   rotation_trick=False).to(z.device).train()

    def forward(x):
        quantized, _, losses = rvq(x.transpose(1, 2))  # it takes (B, T, dim)
        return quantized.transpose(1, 2), losses.sum()

    return _training_step(forward, z, weight)


def _encodec(z: torch.Tensor, weight: torch.Tensor) -> Callable[[], None]:
    from encodec.quantization import core_vq

    from codec.quantize.kmeans import kmeans

    # EnCodec's k-means materialises an (N, K, dim) tensor: 1.6 GB at T=200, 16 GB at T=2000.
    # Its init (untimed) gets the same Lloyd's algorithm, chunked: ours, same signature.
    core_vq.kmeans = kmeans
    rvq = core_vq.ResidualVectorQuantization(num_quantizers=LEVELS, dim=DIM, codebook_size=CODES,
                                             kmeans_init=True, kmeans_iters=10, decay=0.99,
                                             threshold_ema_dead_code=2).to(z.device).train()

    def forward(x):
        quantized, _, losses = rvq(x)
        return quantized, losses.sum()

    return _training_step(forward, z, weight)


def build(name: str, t: int, warmup: int = 2, batch: int = BATCH, device: str = "cpu") -> Callable[[], None]:
    """The contender's step, warmed up (raises ImportError when a peer is not installed)."""
    z, weight = _inputs(t, batch, device)
    if name == "floor":
        step = _floor(z)
    else:
        step = {"ours": _ours, "vq-pytorch": _vq_pytorch, "encodec": _encodec}[name](z, weight)
    for _ in range(warmup):  # k-means init happens at the first call
        step()
    return step


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def time_interleaved_cuda(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """`time_interleaved` on a GPU: each call between two CUDA events, read after a synchronize."""
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            steps[name]()
            end.record()
            torch.cuda.synchronize()
            seconds[name].append(start.elapsed_time(end) / 1e3)
    return seconds


def peak_cuda_mib(step: Callable[[], None]) -> float:
    """GPU memory allocated at the peak of one step, beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MIB


def run_gpu(names: list[str], repeats: int) -> dict[str, dict]:
    """The GPU rows: every shape of GPU_SHAPES, contenders interleaved, then peak memory."""
    print(f"\nGPU: {torch.cuda.get_device_name()}, fp32 (TF32 "
          f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}), CUDA events, median of {repeats}")
    report = {}
    for batch, t in GPU_SHAPES:
        steps = {}
        for name in names:
            try:
                steps[name] = build(name, t, warmup=3, batch=batch, device="cuda")
            except ImportError as err:
                print(f"skipping {name} on the GPU: {err}")
        seconds = time_interleaved_cuda(steps, repeats)
        peaks = {name: peak_cuda_mib(step) for name, step in steps.items()}
        del steps
        torch.cuda.empty_cache()
        results = summarize(seconds, peaks)
        report[f"{batch}x{t}"] = results
        print_table(t, repeats, results, batch=batch)
        if (batch, t) in GPU_FLOOR_TARGETS:
            print(f"GPU target: ours within {GPU_FLOOR_TARGETS[batch, t]}x of the floor")
        if "encodec" in results and "ours" in results:
            print(f"encodec / ours = {results['encodec']['median_ms'] / results['ours']['median_ms']:.2f}x "
                  "(target >= 2x)")
    return report


# ------------------------------------------------------------------------------ peak memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_extra_mib(name: str, t: int) -> float:
    """In a fresh process: peak RSS during one warmed-up step minus the RSS just before it."""
    step = build(name, t, warmup=1)
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    step()
    return (_status_kib("VmHWM") - before) / 1024


def measure_memory(name: str, t: int, threads: int) -> float | None:
    """`_peak_extra_mib` in a fresh interpreter (Linux); None where it cannot be measured.

    From its start, glibc there hands every block over 64 KiB back to the OS when freed, so RSS
    tracks live memory instead of what the allocator kept from earlier steps.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    cmd = [sys.executable, __file__, "--memory-child", name, "--sizes", str(t),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"peak memory of {name} at T={t} not measured: {proc.stderr.strip()[-300:]}")
        return None
    return float(proc.stdout.split()[-1])


# --------------------------------------------------------------------------------- reporting
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summarize(seconds: dict[str, list[float]], peaks: dict[str, float]) -> dict[str, dict]:
    results = {
        name: {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
               "peak_mib": peaks.get(name)}
        for name, times in seconds.items()
    }
    floor = results.get("floor", {}).get("median_ms")
    for res in results.values():
        res["ratio"] = res["median_ms"] / floor if floor else None
    return results


def print_table(t: int, repeats: int, results: dict[str, dict], batch: int = BATCH) -> None:
    n = batch * t
    print(f"\nz ({batch}, {DIM}, {t}) (N={n} rows, {n * DIM * 4 / MIB:.1f} MiB), {repeats} repeats, interleaved")
    print(f"{'contender':<12}{'median ms':>11}{'min ms':>10}{'/ floor':>9}{'peak MiB':>10}")
    for name, res in results.items():
        print(f"{name:<12}{res['median_ms']:>11.1f}{res['min_ms']:>10.1f}"
              f"{_fmt(res['ratio'], '.2f'):>9}{_fmt(res['peak_mib'], '.1f'):>10}")
    if results.get("ours", {}).get("ratio") is not None:
        by_min = results["ours"]["min_ms"] / results["floor"]["min_ms"]
        print(f"ours / floor = {results['ours']['ratio']:.2f}x ({by_min:.2f}x on minima)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200,2000", help="comma-separated frame counts T")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per contender (default: 7 for T <= 500, else 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--json", default=None, help="also write the results to this path")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU tables, then the GPU rows when CUDA is available")
    parser.add_argument("--gpu-repeats", type=int, default=GPU_REPEATS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    if args.memory_child:
        print(_peak_extra_mib(args.memory_child, sizes[0]))
        return

    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "sizes": {}}
    if args.device != "cuda":
        report["sizes"] = run_cpu(args, sizes, names)
    if args.device != "cpu":
        if torch.cuda.is_available():
            report["gpu"] = run_gpu(names, args.gpu_repeats)
        elif args.device == "cuda":
            parser.error("--device cuda: CUDA is not available here")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def run_cpu(args, sizes: list[int], names: list[str]) -> dict:
    chunk = chunk_rows_for(CODES)
    load, cores = os.getloadavg()[0], os.cpu_count()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU "
          f"({cores} cores, load average {load:.2f} at start: other work skews timings)")
    print(f"z ({BATCH}, {DIM}, T), {LEVELS} levels x {CODES} codes, EMA, euclidean, training "
          f"mode; distance chunk {chunk} rows ({chunk * CODES * 4 / MIB:.1f} MiB)")

    seconds_by_size, repeats_by_size = {}, {}
    for t in sizes:
        steps = {}
        for name in list(names):
            print(f"T={t}: building and warming up {name} ...", flush=True)
            try:
                steps[name] = build(name, t)
            except ImportError as err:
                print(f"skipping {name}: {err} (pip install -e '.[bench]' installs the peers)")
                names.remove(name)
        repeats_by_size[t] = args.repeats or (7 if t <= 500 else 5)
        print(f"T={t}: timing, {repeats_by_size[t]} interleaved repeats ...", flush=True)
        seconds_by_size[t] = time_interleaved(steps, repeats_by_size[t])
        del steps  # free this size's contenders before the next
    peaks: dict[int, dict[str, float | None]] = {t: {} for t in sizes}
    if not args.no_memory:
        print("peak memory: one fresh process per contender and size ...", flush=True)
        for t in sizes:
            peaks[t] = {name: measure_memory(name, t, args.threads) for name in names}

    report = {}
    for t in sizes:
        report[t] = summarize(seconds_by_size[t], peaks.get(t, {}))
        print_table(t, repeats_by_size[t], report[t])
        if report[t].get("ours", {}).get("ratio") is not None:
            print("CPU target: ours within 1.1-1.3x of the floor")
    if len(sizes) > 1 and not args.no_memory:
        print("\npeak MiB, " + " -> ".join(f"T={t}" for t in sizes) + ":")
        for name in names:
            print(f"  {name:<12}" + " -> ".join(_fmt(peaks[t].get(name), ".1f") for t in sizes))
    return report


if __name__ == "__main__":
    main()
