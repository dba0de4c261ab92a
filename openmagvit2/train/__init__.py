"""Training infrastructure: each module has one job (distributed set-up, precision, EMA, checkpoints, tracking,
pre-emption signals, learning-rate schedules). `train.py` at the repository root tells the story with these nouns."""
