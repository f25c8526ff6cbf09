# SAMSEG's `fast` settings (benchmarks/samseg/README.md), the ones every samseg benchmark runs and scores with:
# sourced by benchmarks/samseg/compare.sh and benchmarks/quality/distillation/run.sh.
SAMSEG_P="-p samples=20 -p burnin=20 -p max_iterations=20 -p deformation_iterations=10"
