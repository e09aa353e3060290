"""Train and test one model; the same command as ``nsl-train`` (see conf/train.yaml).

    python scripts/train.py data.label_frac=0.01
    python scripts/train.py -m regularizer=none,graph seed=0,1,2
    python scripts/train.py -m sweep=cora_label_frac
"""
from nsl_lab.cli import main

if __name__ == "__main__":
    main()
