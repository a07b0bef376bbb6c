"""Native mesh -> AR-ready files within budgets: `geometry` (orient, clean, scale), `colors`, `glb`,
`usdz`, `texture` + `raster` (bakes), `poster/`, `report` + `validation` (QA), `formats` (the format
table) and `bundle` (every file of one job)."""
