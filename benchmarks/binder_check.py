"""`make binder-check`: the tutorial series at its embedded defaults inside Binder's limits (2 GiB of memory for the
whole session, one CPU), in a cgroup made for it, v1 or v2, whichever this machine has.

One cgroup holds every process of the series, as one Binder session does (a cluster that notebook 04 leaves running
still counts while 05 runs). The CPU is limited by a CFS quota, as Kubernetes does for Binder, so the processes still
see every core of the machine. Per notebook: the wall time, the slowest cell, the cgroup's peak memory (what the
limit counts: page cache included, which the kernel reclaims before it kills), the peak of the memory it cannot
reclaim (anonymous and shared memory, from memory.stat every 0.2 s: each page once, where summing the processes'
RSS would count TensorFlow's libraries once per process) and any OOM kill (the cgroup's own counter). Written to
build/bench/binder.md and binder.json. Exit 1 if a notebook fails or shows what tutorial.OUTPUT_NOISE names (a
path, pid or port), anything is OOM-killed or the series takes longer than --time-goal; exit 3 with a message when no cgroup can be made here (the Makefile calls that a skip).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
SKIPPED = 3      # exit status when no cgroup can be made (the Makefile and the test tell it from a failure)


class CgroupUnavailable(RuntimeError):
    """No cgroup with a memory and a CPU limit can be made on this machine (the message says why)."""


class Cgroup:
    """A cgroup with a memory limit (no swap) and a CPU quota; v2 (unified) or v1 (memory + cpu controllers)."""

    def __init__(self, name, memory_bytes, cpus):
        self.paths, self.version = [], None
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").is_file() and {"memory", "cpu"} <= set((v2 / "cgroup.controllers")
                                                                              .read_text().split()):
            self.version = 2
            parent = v2 / _own_path("")
            try:
                (parent / "cgroup.subtree_control").write_text("+memory +cpu")
                d = parent / name
                d.mkdir()
            except OSError as e:
                raise CgroupUnavailable(f"cannot make a cgroup under {parent} ({e}); run as root, or in a "
                                        "container that delegates cgroups") from None
            self.paths = [d]
            _write(d / "memory.max", memory_bytes)
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", 0)
            _write(d / "cpu.max", f"{int(cpus * 100000)} 100000")
        else:
            mem, cpu = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/cpu")
            if not (mem / "memory.limit_in_bytes").is_file() or not (cpu / "cpu.cfs_quota_us").is_file():
                raise CgroupUnavailable("this machine mounts neither cgroup v2 with the memory and cpu controllers "
                                        "nor cgroup v1's memory and cpu hierarchies")
            self.version = 1
            try:
                dm, dc = mem / _own_path("memory").lstrip("/") / name, cpu / _own_path("cpu").lstrip("/") / name
                dm.mkdir()
                dc.mkdir()
            except OSError as e:
                raise CgroupUnavailable(f"cannot make a cgroup under {mem} ({e}); run as root") from None
            self.paths = [dm, dc]
            _write(dm / "memory.limit_in_bytes", memory_bytes)
            if (dm / "memory.memsw.limit_in_bytes").exists():
                try:
                    _write(dm / "memory.memsw.limit_in_bytes", memory_bytes)
                except OSError:
                    pass             # swap accounting off: there is no swap to limit
            _write(dc / "cpu.cfs_period_us", 100000)
            _write(dc / "cpu.cfs_quota_us", int(cpus * 100000))
        self._peak_fd = None

    @property
    def memory(self) -> Path:
        return self.paths[0]

    def enter_command(self, cmd) -> list:
        """``cmd`` run by a shell that first moves itself into this cgroup (its children stay in it)."""
        moves = " && ".join(f"echo $$ > {p / 'cgroup.procs'}" for p in self.paths)
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "sh", *cmd]

    def reset_peak(self):
        """Start measuring a new peak of memory use."""
        if self.version == 1:
            _write(self.memory / "memory.max_usage_in_bytes", 0)
        elif (self.memory / "memory.peak").exists():
            if self._peak_fd is not None:
                os.close(self._peak_fd)
            self._peak_fd = os.open(self.memory / "memory.peak", os.O_RDWR)
            try:
                os.write(self._peak_fd, b"reset")     # kernels >= 6.12: the peak seen through this descriptor
            except OSError:
                pass

    def peak(self) -> int:
        """The highest memory use (bytes, page cache included) since reset_peak()."""
        if self.version == 1:
            return int((self.memory / "memory.max_usage_in_bytes").read_text())
        if self._peak_fd is not None:
            os.lseek(self._peak_fd, 0, os.SEEK_SET)
            return int(os.read(self._peak_fd, 64).decode())
        return int((self.memory / "memory.current").read_text())

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        f = self.memory / ("memory.oom_control" if self.version == 1 else "memory.events")
        for line in f.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def unreclaimable(self) -> int:
        """Bytes of anonymous and shared memory in the cgroup now (what the limit cannot take back as cache)."""
        stat = dict(line.split() for line in (self.memory / "memory.stat").read_text().splitlines())
        keys = ("total_rss", "total_shmem") if self.version == 1 else ("anon", "shmem")
        return sum(int(stat.get(k, 0)) for k in keys)

    def pids(self) -> list[int]:
        return [int(p) for p in (self.memory / "cgroup.procs").read_text().split()]

    def remove(self):
        """Kill what is left in the cgroup and remove it."""
        import signal
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self._peak_fd is not None:
            os.close(self._peak_fd)
        for p in self.paths:
            try:
                p.rmdir()
            except OSError:
                pass


def _own_path(controller):
    """This process's cgroup path in ``controller``'s hierarchy ("" for v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if (controller == "" and ctrls == "") or controller in ctrls.split(","):
            return path
    return "/"


def _write(path, value):
    Path(path).write_text(str(value))


def _sampler(cg, stop, peaks):
    """Sample the cgroup's unreclaimable memory into peaks["anon"] until ``stop`` is set."""
    while not stop.wait(0.2):
        try:
            peaks["anon"] = max(peaks.get("anon", 0), cg.unreclaimable())
        except OSError:
            pass


def run(notebooks, memory_mb, cpus, out_dir, time_goal):
    from accel_lib.machine import describe as machine

    from accel_lib import tutorial
    work = Path(tempfile.mkdtemp(prefix="accel-binder-"))
    cg = Cgroup(f"accel-binder-{os.getpid()}", memory_mb * 2**20, cpus)
    rows, failure = [], None
    env = {**os.environ, "ACCEL_LIB_OFFLINE": os.environ.get("ACCEL_LIB_OFFLINE", "1"), "ACCEL_LIB_PROGRESS": "0",
           "ACCEL_LIB_CONTAINER_ENGINE": "none"}      # Binder has no container engine: 03 skips the build there too
    print(f"the series in a cgroup v{cg.version}: {memory_mb} MiB, {cpus:g} CPU ({machine()}); work in {work}",
          flush=True)
    t_all = time.monotonic()
    try:
        for nb in notebooks:
            kills_before = cg.oom_kills()
            cg.reset_peak()
            stop, peaks = threading.Event(), {}
            sampler = threading.Thread(target=_sampler, args=(cg, stop, peaks), daemon=True)
            sampler.start()
            t0 = time.monotonic()
            error = None
            try:
                r = tutorial.run(nb, work / nb.name, work, time_scale=1.0 / cpus * 2, env=env,
                                 wrap=cg.enter_command)
                cells = r.cells
            except tutorial.NotebookFailed as e:
                error, cells = str(e), tutorial.cell_times(work / nb.name) if (work / nb.name).exists() else []
            noise = tutorial.output_noise(work / nb.name) if error is None else []
            if noise:                   # a path, pid, port or resolver error a learner would read at the defaults
                error = f"output a learner should not see, cell {noise[0][0]}: {noise[0][1]!r}"
            stop.set()
            sampler.join()
            slowest = max(cells, key=lambda c: c.seconds, default=None)
            row = {"notebook": nb.name, "seconds": round(time.monotonic() - t0, 1),
                   "slowest_cell": {"index": slowest.index, "seconds": round(slowest.seconds, 1),
                                    "source": slowest.source} if slowest else None,
                   "peak_cgroup_mb": round(cg.peak() / 2**20),
                   "peak_unreclaimable_mb": round(peaks.get("anon", 0) / 2**20),
                   "oom_kills": cg.oom_kills() - kills_before, "error": error}
            rows.append(row)
            print(f"{nb.name:<28} {row['seconds']:6.1f} s  peak {row['peak_cgroup_mb']:5d} MiB (cgroup, with cache), "
                  f"{row['peak_unreclaimable_mb']:5d} MiB (unreclaimable)  OOM kills {row['oom_kills']}"
                  + (f"  FAILED: {error.splitlines()[0][:160]}" if error else ""), flush=True)
            if error or row["oom_kills"]:
                failure = f"{nb.name}: " + (error.splitlines()[0] if error else "a process was OOM-killed")
                break
    finally:
        tutorial.stop_what_is_left(work / "workspace")
        cg.remove()
        shutil.rmtree(work, ignore_errors=True)
    total = round(time.monotonic() - t_all, 1)
    if failure is None and total > time_goal:
        failure = f"the series took {total:.0f} s, over the goal of {time_goal:.0f} s"
    result = {"machine": machine(), "cgroup_version": cg.version, "memory_mib": memory_mb, "cpus": cpus,
              "total_seconds": total, "time_goal_seconds": time_goal, "notebooks": rows, "failure": failure}
    write(result, out_dir)
    return result


def write(result, out_dir):
    """build/bench/binder.md (a table) and binder.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "binder.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"The series at its defaults in Binder's limits: a cgroup (v{result['cgroup_version']}) of "
             f"{result['memory_mib']} MiB and {result['cpus']:g} CPU ({result['machine']})", "",
             "| notebook | wall s | slowest cell s | peak MiB (cgroup, with cache) | peak MiB (unreclaimable) | "
             "OOM kills |",
             "|---|---|---|---|---|---|"]
    for r in result["notebooks"]:
        cell = r["slowest_cell"]
        slowest = f"{cell['seconds']:.0f} (cell {cell['index']})" if cell else "-"
        lines.append(f"| {r['notebook']} | {r['seconds']:.0f} | {slowest} | {r['peak_cgroup_mb']} | "
                     f"{r['peak_unreclaimable_mb']} | {r['oom_kills']} |")
    lines += ["", f"Whole series: {result['total_seconds'] / 60:.1f} min (goal {result['time_goal_seconds'] / 60:.0f} "
                  f"min). " + (f"FAILED: {result['failure']}" if result["failure"] else "Passed: no OOM kill.")]
    (out / "binder.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory-mb", type=int, default=2048)
    p.add_argument("--cpus", type=float, default=1.0)
    p.add_argument("--out", default=str(ROOT / "build" / "bench"))
    p.add_argument("--time-goal", type=float, default=600, help="seconds the whole series may take (default 10 min)")
    p.add_argument("notebooks", nargs="*", help="default: the whole series")
    args = p.parse_args(argv)
    notebooks = [Path(n).resolve() for n in args.notebooks] or NOTEBOOKS
    try:
        result = run(notebooks, args.memory_mb, args.cpus, args.out, args.time_goal)
    except CgroupUnavailable as e:
        print(f"binder-check skipped: {e}", file=sys.stderr)
        return SKIPPED
    print(Path(args.out, "binder.md").read_text())
    return 1 if result["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
