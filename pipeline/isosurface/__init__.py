"""Isosurface extraction parts behind `pipeline.isosurface.extraction.extract_mesh` (the entry point; import that).

    grid           the official marching-cubes grid (SPEC §11.1) and chunked field queries on it
    lattice        sub-lattices of that grid (every coarse sample is a fine sample), cell/point masks
    refinement     coarse-to-fine sampling: which cells may hold surface, down to the fine grid
    closure        the fine-level guarantee: every cell that yields triangles has all corners queried
    triangulation  PyMCubes, world mapping, and the trimesh-style vertex merge
    device_extraction  the "gpu" method: dense grid, Warp marching cubes, merge and colours on the model's device
"""
