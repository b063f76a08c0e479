r"""N processes of one run on this machine, each with its own CPU devices: the path the tests
take, and a way to try a multi-host config before a pod.

  python scripts/launch/local.py --processes=2 --devices_per_process=2 -- \
      --config=configs/demo.py --workdir=/tmp/mh --config.mesh.data=2 --config.mesh.fsdp=2
  python scripts/launch/local.py --processes=2 --dry-run -- --config=... --workdir=...

Every process runs `python -m mmvit.main` with the arguments after `--`, and the environment
JAX_COORDINATOR_ADDRESS (localhost and a free port), JAX_NUM_PROCESSES, JAX_PROCESS_ID and
JAX_NUM_CPU_DEVICES (cross-process CPU collectives use gloo, JAX's default). Output lines are
prefixed with the process index. When a process fails, the others get --grace seconds to stop
on their own (JAX's heartbeat ends them) and are then killed; the exit code is the first
failure's, or 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def commands(args, port: int) -> list[tuple[dict, list[str]]]:
  """(environment additions, argv) of every process."""
  out = []
  for i in range(args.processes):
    env = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": str(args.processes), "JAX_PROCESS_ID": str(i),
           "JAX_NUM_CPU_DEVICES": str(args.devices_per_process), "JAX_PLATFORMS": "cpu"}
    out.append((env, [args.python, "-m", "mmvit.main", *args.main_args]))
  return out


def _pump(stream, prefix: str):
  for line in iter(stream.readline, b""):
    sys.stdout.buffer.write(prefix.encode() + line)
    sys.stdout.flush()


def launch(args) -> int:
  port = args.port or free_port()
  procs, pumps = [], []
  for env, argv in commands(args, port):
    p = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    pumps.append(threading.Thread(target=_pump, args=(p.stdout, f"[{env['JAX_PROCESS_ID']}] "),
                                  daemon=True))
    pumps[-1].start()
    print(f"launch: process {env['JAX_PROCESS_ID']} pid {p.pid}", flush=True)
    procs.append(p)

  def forward(signum, frame):  # SIGTERM/SIGINT to the launcher: to every process (preemption)
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, forward)
  first_failure, deadline, reported = 0, None, set()

  def report():
    nonlocal first_failure, deadline
    for i, p in enumerate(procs):
      if p.poll() not in (None, 0) and i not in reported:
        reported.add(i)
        how = (f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0 else
               f"exit code {p.returncode}")
        print(f"launch: process {i} failed ({how})", flush=True)
        if not first_failure:
          first_failure = 128 - p.returncode if p.returncode < 0 else p.returncode
          deadline = time.monotonic() + args.grace
  while any(p.poll() is None for p in procs):
    time.sleep(0.2)
    report()
    if deadline is not None and time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          print(f"launch: process {procs.index(p)} still running {args.grace} s after a "
                "failure: killed", flush=True)
          os.killpg(p.pid, signal.SIGKILL)
      break
  for p in procs:
    p.wait()
  for t in pumps:  # every line a process printed, its last error included
    t.join(timeout=10)
  report()
  return first_failure


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" in argv:
    i = argv.index("--")
    argv, main_args = argv[:i], argv[i + 1:]
  else:
    main_args = []
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=1)
  p.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  p.add_argument("--grace", type=float, default=60.0,
                 help="seconds the others may run on after one process failed")
  p.add_argument("--python", default=sys.executable)
  p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                 help="print the commands, run nothing")
  args = p.parse_args(argv)
  args.main_args = main_args
  if args.processes < 1 or args.devices_per_process < 1:
    p.error("--processes and --devices_per_process must be at least 1")
  if args.dry_run:
    for env, cmd in commands(args, args.port or 12355):
      print(f"cd {shlex.quote(ROOT)} && " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            + " " + shlex.join(cmd))
    return 0
  return launch(args)


if __name__ == "__main__":
  sys.exit(main())
