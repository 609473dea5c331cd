"""Running packages: a torch-free host that drives a package's Python raster function over whole rasters the
way ArcGIS does (`host`), and the torch-free reading of a .dlpk (`package`)."""
