#!/usr/bin/env python3
"""Leave-one-tool-out over several seeds: judge a training recipe by more than one draw.

The seed picks the held-out hosts, the synthetic sessions and the initialisation, and it moves
every row of `dnsexfil evaluate` more than most recipe changes do, so one seed cannot tell two
recipes apart. This runs `dnsexfil evaluate --tools TOOLS --seed S --report ...` for each seed
(with any extra recipe options after `--`) and prints, per left-out tool and for the model
trained on everything (`none`): recall at 0.5 per seed and its mean, TPR at FPR 0.1% and ROC
AUC means, sessions alerted, and the benign alerts on the held-out hosts' real traffic per
seed; then the hosts that raised the most real benign alerts.

Usage (from the repository, after `cargo build --release`):
  benches/lofo_seeds.py [--seeds 7,8,9,10,11] [--tools packetwhisper,sunburst,randomised,domain_rotation,none]
                        [--out DIR] [-- extra evaluate options, e.g. --server-lookalikes false]
Reports are kept in DIR (default: a temporary directory), one JSON per seed; with --reuse, a
seed whose report is already in DIR is summarised again without rerunning it.
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="7,8,9,10,11")
    parser.add_argument("--tools", default="packetwhisper,sunburst,randomised,domain_rotation,none")
    parser.add_argument("--out", default=None)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "dnsexfil"))
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="lofo-seeds-")
    os.makedirs(out, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    fixtures = os.path.join(ROOT, "tests", "fixtures", "dev")

    # (row, seed) -> result; a row is a left-out tool, or `none` for the model trained on all.
    rows = collections.OrderedDict()
    hosts = collections.Counter()
    for seed in seeds:
        report = os.path.join(out, f"seed-{seed}.json")
        command = [args.bin, "evaluate", "--events", os.path.join(fixtures, "events.csv"),
                   "--labels", os.path.join(fixtures, "labels.csv"), "--tools", args.tools,
                   "--seed", str(seed), "--report", report] + extra
        if not (args.reuse and os.path.exists(report)):
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            if done.returncode != 0:
                sys.exit(f"seed {seed}: {' '.join(command)} failed:\n{done.stderr}")
        results = json.load(open(report))["results"]
        trained_on_all = [r for r in results if not r["left_out"]]
        for r in results:
            if r["left_out"]:
                rows.setdefault(r["tool"], {})[seed] = r
        # A log's tool may have no source among a seed's held-out hosts: no positives to score.
        scored = [r for r in trained_on_all if r["positives"] > 0]
        if scored:
            # Every tool's row of the model trained on everything shares its benign figures.
            rows.setdefault("none", {})[seed] = scored[0] | {
                "recall_at_threshold": min(r["recall_at_threshold"] for r in scored),
                "tpr_at_fpr_0_001": min(r["tpr_at_fpr_0_001"] for r in scored),
                "roc_auc": min(r["roc_auc"] for r in scored),
                "sessions_detected": sum(r["sessions_detected"] for r in scored),
                "sessions": sum(r["sessions"] for r in scored),
            }
        for r in [r for r in results if r["left_out"]] + trained_on_all[:1]:
            for host, n in r.get("benign_alerts_real_by_host", {}).items():
                hosts[(seed, host)] += n

    print(f"seeds {','.join(map(str, seeds))}; options: {' '.join(extra) or '(the default recipe)'}")
    print("(`none`: trained on everything; its recall, TPR and AUC are the lowest over the tools "
          "with rows on the held-out hosts)")
    print()
    print("| row | recall at 0.5 per seed | mean | TPR at FPR 0.1%, mean | ROC AUC, mean "
          "| sessions alerted | real benign alerts per seed | sum |")
    print("|---|---|---|---|---|---|---|---|")
    for row, by_seed in rows.items():
        rs = [by_seed[s] for s in seeds if s in by_seed]
        recall = [r["recall_at_threshold"] for r in rs]
        benign = [r["benign_alerts_real"] for r in rs]
        print(f"| {row} | {' / '.join(f'{x:.3f}' for x in recall)} | {statistics.mean(recall):.3f} "
              f"| {statistics.mean(r['tpr_at_fpr_0_001'] for r in rs):.3f} "
              f"| {statistics.mean(r['roc_auc'] for r in rs):.4f} "
              f"| {sum(r['sessions_detected'] for r in rs)} of {sum(r['sessions'] for r in rs)} "
              f"| {' / '.join(map(str, benign))} | {sum(benign)} |")
    print()
    print("hosts with the most real benign alerts (seed, host: alerts summed over the rows):")
    for (seed, host), n in hosts.most_common(8):
        print(f"  {seed}, {host}: {n}")
    print(f"reports: {out}")


if __name__ == "__main__":
    main()
