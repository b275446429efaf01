"""``shira bench app``: the Gradio app as a visitor meets it, on this machine.

- start: ``python app.py`` as a fresh process, until its URL answers (the default base then loads
  in the background);
- one image: a 64 x 64 image with a two-style mix, through the API (``gradio_client``), median of
  several requests that each switch the mix; and the switch part of those requests (the time of
  ``bank.apply(mix)``, as the page shows it: "switched in N ms");
- concurrency: ``clients`` clients at once, each with its own two-style mix; every image is checked
  pixel for pixel against the image one client alone gets for that mix and seed, and the throughput
  (images per second) is compared with one client's.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
STYLES = ("frame", "halftone", "hatching", "night", "outline", "pastel")
TARGETS = {"start_s": 20.0, "image_s": 1.5, "switch_ms": 20.0}
MAX_STYLES = 4


def mixes(count: int) -> list[list[tuple[str, float]]]:
    """``count`` different two-style mixes of the bundled styles (weights 1 and 0.6)."""
    pairs = [(a, b) for i, a in enumerate(STYLES) for b in STYLES[i + 1:]]
    return [[(a, 1.0), (b, 0.6)] for a, b in pairs[:count]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s")


def _request(client, mix, seed: int, steps: int, guidance: float):
    weights = [w for _, w in mix] + [1.0] * (MAX_STYLES - len(mix))
    start = time.perf_counter()
    gallery, status = client.predict("toy-sd", [n for n, _ in mix], *weights, PROMPT, seed, steps, guidance, 1, False,
                                     api_name="/generate")
    seconds = time.perf_counter() - start
    switch_ms = float(re.search(r"switched in ([0-9.]+) ms", status).group(1))
    from PIL import Image

    return np.asarray(Image.open(gallery[0]["image"]).convert("RGB")), seconds, switch_ms


def bench_app(steps: int = 20, clients: int = 8, repeats: int = 5, guidance: float = 5.0,
              threads: int | None = None, log=lambda text: None) -> dict:
    """``threads``: torch's intra-op threads in the app (``OMP_NUM_THREADS``; default: torch's own, one
    per core). On a CPU shared with other work, one thread avoids OpenMP's barrier waits."""
    from gradio_client import Client

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    home = tempfile.mkdtemp(prefix="shira-bench-app-")
    env = {**os.environ, "SHIRA_HOME": home, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    app = ROOT / "app.py"
    command = [sys.executable, str(app)] if app.is_file() else \
        [sys.executable, "-c", "from shira_diffusion.app import main; main()"]
    log(f"starting {' '.join(command)}")
    process = subprocess.Popen(command, cwd=str(ROOT if app.is_file() else home), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start_s = _wait_for(url, process, timeout=300)
        log(f"serving after {start_s:.1f} s")
        client = Client(url, verbose=False)
        chosen = mixes(max(clients, 2))
        first_start = time.perf_counter()
        _request(client, chosen[0], 0, steps, guidance)  # waits for the base (loading in the background)
        first_s = time.perf_counter() - first_start
        _request(client, chosen[1], 1, steps, guidance)  # warm-up
        log(f"first image after {first_s:.1f} s (base load included)")
        singles, times, switches = {}, [], []
        for i in range(max(repeats, len(chosen))):  # each request switches: the mix differs from the last
            k = i % len(chosen)
            image, seconds, switch_ms = _request(client, chosen[k], k, steps, guidance)
            singles.setdefault(k, image)
            times.append(seconds)
            switches.append(switch_ms)
        image_s = statistics.median(times)
        log(f"one image: {image_s:.2f} s median of {len(times)}; switch {statistics.median(switches):.1f} ms")

        results = [None] * clients
        connected = [Client(url, verbose=False) for _ in range(clients)]
        barrier = threading.Barrier(clients)

        def run(i):
            barrier.wait()
            results[i] = _request(connected[i], chosen[i], i, steps, guidance)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        wall = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        wall = time.perf_counter() - wall
        equal = [bool(np.array_equal(results[i][0], singles[i])) for i in range(clients)]
        log(f"{clients} clients: {wall:.1f} s, {sum(equal)} of {clients} images equal to one client's")
        return {
            "steps": steps, "guidance": guidance, "clients": clients,
            "threads": threads if threads is not None else f"default ({os.cpu_count()} cores)",
            "cpu_load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "start_s": round(start_s, 2), "first_image_s": round(first_s, 2),
            "image_s": round(image_s, 3), "image_s_all": [round(t, 3) for t in times],
            "switch_ms": round(statistics.median(switches), 2), "switch_ms_all": switches,
            "concurrent_wall_s": round(wall, 2),
            "concurrent_images_per_s": round(clients / wall, 3), "single_images_per_s": round(1 / image_s, 3),
            "throughput_ratio": round((clients / wall) * image_s, 2),
            "concurrent_latency_s": [round(r[1], 2) for r in results],
            "concurrent_switch_ms": [r[2] for r in results],
            "pixel_equal": equal, "all_pixel_equal": all(equal),
            "targets": TARGETS,
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def format_app_table(r: dict) -> str:
    def mark(value, target):
        return "meets" if value < target else "misses"

    rows = [
        ("start (`python app.py` to serving)", f"{r['start_s']:.1f} s", f"< {TARGETS['start_s']:g} s",
         mark(r["start_s"], TARGETS["start_s"])),
        ("first image (waits for the base to load)", f"{r['first_image_s']:.1f} s", "", ""),
        (f"one image, two-style mix, {r['steps']} steps (median)", f"{r['image_s']:.2f} s",
         f"< {TARGETS['image_s']:g} s", mark(r["image_s"], TARGETS["image_s"])),
        ("switch part of a request (median)", f"{r['switch_ms']:.1f} ms", f"< {TARGETS['switch_ms']:g} ms",
         mark(r["switch_ms"], TARGETS["switch_ms"])),
        (f"{r['clients']} clients at once, {r['clients']} mixes", f"{r['concurrent_wall_s']:.1f} s", "", ""),
        ("throughput: concurrent vs one client", f"{r['concurrent_images_per_s']:.2f} vs "
         f"{r['single_images_per_s']:.2f} images/s ({r['throughput_ratio']:.2f}x)", "", ""),
        ("images equal to one client's, pixel for pixel", f"{sum(r['pixel_equal'])} of {r['clients']}", "all",
         "meets" if r["all_pixel_equal"] else "misses"),
    ]
    rows.append(("torch threads in the app; machine load (1 min)", f"{r['threads']}; {r['cpu_load_1min']}", "", ""))
    lines = ["| measure | value | target | |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)
