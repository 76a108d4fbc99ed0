"""hacnn — a reference reproduction of HA-CNN (Li, Zhu & Gong, CVPR 2018)."""
__version__ = "0.1.0"
