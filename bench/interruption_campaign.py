"""The interruption campaign, long form (issue 14, part 2): N trials of ``chaos run`` killed with
SIGKILL at a random moment, then ``chaos recover``, then a look at the lab from outside the tool.

Each trial takes the next fault type in turn (keepalived TERM/KILL/STOP, ha-link-down,
vrrp-partition, gateway-reboot, agent-evacuate graceful and abrupt) and a phase drawn at random
(before injection, injecting, holding, undo, rollback after SIGTERM), and a random moment in
it; ``tests/interruption.py`` runs the trial and its Inspector lists what is left (nsenter into
the nodes, the host's /proc, the lab's power records and API state). The test suite runs the
short form (``tests/test_interruption.py``); this is the same with many trials, for the figure
"leftovers in N trials" (goal: 0 of 200).

    python bench/interruption_campaign.py --trials 40 [--seed 7] [--lab NAME] [--json FILE]

Without ``--lab`` it brings up a lab of its own (3 nodes, 2 routers) and removes it at the end.
It exits 1 if any trial left something behind (each such trial is printed with its run folder,
kept under ``--reports``), 0 otherwise. A trial that leaves something stops the campaign before
the next one (the lab is no longer clean, and every later trial would count it again).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.interruption, run from anywhere

from chaos.lab.manager import Lab  # noqa: E402
from chaos.lab.spec import LabOptions  # noqa: E402
from tests.interruption import PHASES, VARIANTS, Inspector, Trial, placement_of, run_trial  # noqa: E402

LAB_ROOT = Path(os.environ.get("CHAOS_TEST_LAB_ROOT", "/run/chaos-lab"))
MAX_TRIALS = 2000  # bounded


def wait_ready(lab: Lab, timeout: float) -> list[str]:
    """Every router with one primary (bounded); what is still wrong after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        problems = lab.not_ready(lab.spec())
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help=f"number of trials (at most {MAX_TRIALS})")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000, help="replays a campaign exactly")
    parser.add_argument("--lab", help="use this running lab (it must be one of this tool's labs); default: a new one")
    parser.add_argument("--reports", type=Path, help="where the trials' run folders go (default: a temporary folder)")
    parser.add_argument("--only", action="append", choices=[v.name for v in VARIANTS], help="only this fault type (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every trial here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the campaign needs root (the lab's namespaces)", file=sys.stderr)
        return 6
    trials_n = max(1, min(args.trials, MAX_TRIALS))
    variants = [v for v in VARIANTS if not args.only or v.name in args.only]
    rng = random.Random(args.seed)
    reports = args.reports or Path(tempfile.mkdtemp(prefix="chaos-campaign-"))
    os.environ.setdefault("CHAOS_STATE_DIR", str(reports / "state"))

    own = args.lab is None
    lab = Lab(LAB_ROOT, args.lab or f"ic{os.getpid() % 100000}")
    if own:
        lab.up(LabOptions(name=lab.name, nodes=3, routers=2, replicas=2, advert_int=1, respawn_interval=2.0,
                          boot_delay=2.0), timeout=180)
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(lab.dir / "clouds.yaml")}
    print(f"campaign seed {args.seed}: {trials_n} trials on lab {lab.name}, run folders in {reports}", flush=True)
    results: list[Trial] = []
    started = time.monotonic()
    try:
        for n in range(trials_n):
            v = variants[n % len(variants)]
            phase = rng.choice(PHASES)
            not_ready = wait_ready(lab, 90)
            if not_ready:
                print(f"trial {n}: the lab did not settle before the trial: {not_ready}", flush=True)
            inherited = Inspector(lab.dir).leftovers(placement_of(lab.spec()))
            if inherited:
                # A leftover of an earlier trial would be counted again by every later one: the
                # lab is no longer a clean slate, so the campaign stops here and says why.
                print(f"stopping before trial {n + 1}: the lab is not clean: {inherited}", flush=True)
                break
            trial = run_trial(v, phase, lab=lab.name, lab_dir=lab.dir, reports=reports / f"trial{n:04d}", rng=rng,
                              placement=placement_of(lab.spec()), env=env, settle_timeout=60.0)
            results.append(trial)
            mark = "LEFT" if trial.leftovers else ("ERROR" if trial.error else "ok")
            print(f"[{n + 1}/{trials_n}] {mark:5} {trial.describe()} ({trial.seconds:.1f}s)"
                  + (f" folder {trial.folder}" if trial.leftovers else ""), flush=True)
    finally:
        if own:
            lab.down()
    elapsed = time.monotonic() - started
    bad = [t for t in results if t.leftovers]
    errors = [t for t in results if t.error]
    print(f"\n{len(results)} trials in {elapsed:.0f}s (seed {args.seed}): {len(bad)} left something behind, "
          f"{len(errors)} trial error(s)")
    by = Counter((t.variant, t.landed) for t in results)
    for variant_name in dict.fromkeys(t.variant for t in results):
        landed = ", ".join(f"{phase} {count}" for (name, phase), count in sorted(by.items()) if name == variant_name)
        print(f"  {variant_name:22} killed while: {landed}")
    for t in bad:
        print(f"  LEFT: {t.describe()} (folder {t.folder})")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "seconds": elapsed, "trials": [asdict(t) for t in results]},
                                        indent=2))
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
