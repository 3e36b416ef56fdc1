"""Facts and where they come from: the Fact type, dataset formats and loaders, the embedded
worldfacts set, fetching the public files, seeded sampling. Imports only ``raysem.paths``."""
