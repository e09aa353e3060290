"""Robust evaluation of a saved run; the same command as ``nsl-eval`` (see src/nsl_lab/evaluate.py).

    python scripts/eval.py <run dir> 'eval.attacks=[pgd,autoattack]' 'eval.eps=[0.05,0.1,0.2]'
"""
from nsl_lab.evaluate import main

if __name__ == "__main__":
    main()
