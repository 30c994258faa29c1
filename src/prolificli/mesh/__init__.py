"""Triangle meshes: tetrahedral grids, marching tetrahedra (DMTet), mesh utilities and export."""
