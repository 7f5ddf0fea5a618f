"""Training pieces: the Noisy Student objective, TF1-style RMSProp, the
learning-rate schedule and the weight EMA (spec §5.3-§5.7).

Each module holds one job and knows nothing of the training loop that
combines them.
"""
