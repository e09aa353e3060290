from nsl_lab.graphs.neighbors import NeighborGraph

__all__ = ["NeighborGraph"]
