"""The commands a user runs, each one job from data to its outputs: ``python -m jobs.study`` (the whole decision in a
time budget), ``jobs.run`` (compare built backends), ``jobs.curve`` (a learning curve) and ``jobs.audit`` (the
labels' quality). They use the evaluation library (`compare`) and the backends; nothing below imports them."""
