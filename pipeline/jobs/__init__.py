"""What a job is and what is known about it: the queue envelopes -> `Job` (`envelopes`), the per-job
state hash (`state`), and every Redis key shop3d owns (`keys`). Leaves: no I/O beyond Redis state."""
