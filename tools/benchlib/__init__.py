"""The pieces of `make bench` (tools/bench.py), one module per responsibility.

- `script`: the repository root, progress lines, the `iot-anchor` command line, the entry guard;
- `stats`: percentiles and medians of figures, rates that are NaN when nothing was timed;
- `procfs`: CPU time and memory of processes and of the machine, from /proc;
- `load`: the fleet (pre-signed readings, a registered data dir) and the load engine's workers;
- `gateway_process`: `iot-anchor run` as a subprocess, and the batch lines of its log;
- `phases`: the measured phases (baseline burst, gateway burst, gateway paced) and one fleet
  size measured over --runs runs;
- `report`: the figures of a fleet size (the JSON keys), the readable summary, the JSON line;
- `plot`: the sweep's PNG.

tools/ is on sys.path when a bench runs as a script, so this imports as `benchlib`.
"""
