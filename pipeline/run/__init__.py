"""Running jobs: `stages` (prepare -> reconstruct -> publish, one error mapping and progress table),
`runner` (one job in this process) and `worker` (the claim loop the ingress runs)."""
