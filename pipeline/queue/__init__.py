"""The reliable Redis queue (integrations.md §3.1): `consumer` claims and settles, `upkeep` runs the
heartbeat and reaper, `admin` is the producer and operator side, `scripts` holds the atomic Lua steps,
`config` the knobs and timing rules."""
