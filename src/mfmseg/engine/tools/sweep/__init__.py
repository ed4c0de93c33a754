"""`mfmseg sweep`: configs × seeds in one command, resumable, with mean ± std and seed-paired differences.

Why: on the synthetic benchmark seeds spread by about ±2 mIoU while a method changes it by 1-2 points, so one run
per method proves nothing. Pairing by seed (same seed: same data order, same initial weights) removes the spread
that two methods share; the paired difference and how many seeds it is positive on is the number to believe.

Layout: `OUT/runs/<label>/seed<S>/` is an ordinary `mfmseg train` work dir and `OUT/runs/<label>/seed<S>.log`
its output (next to it, so the work dir stays the trainer's); `OUT/results.{md,json,png}` are rewritten,
atomically, after every finished run. Runs go seed-major (every label's seed 0 first), so that the first pairs
are complete early. Re-running the same command continues a killed sweep: a run with `summary.json` is reused,
one with `latest.pth` resumes (`train.resume=true`), any other leftover is started again.

Every training is a subprocess (`python -m mfmseg train ...`), also with `--jobs 1`: one code path, and each run
is isolated (a crash, a leak, a changed torch global or thread count stays in its process; its output goes to
its own log; Ctrl-C or SIGTERM stops the children, whose atomic checkpoints resume later). The parent never
imports torch until it plots. The aggregation (`mean_std`, `paired_difference`, `per_class_means`, `aggregate`,
`results_markdown`) is pure Python on summary dicts, testable without training.
"""
