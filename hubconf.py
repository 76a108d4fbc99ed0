"""torch.hub entry point: ``torch.hub.load(repo_dir, "hacnn", source="local", ...)``."""
dependencies = ["torch", "torchvision"]


def hacnn(num_classes: int = 751, weights: str | None = None, **config):
    """HA-CNN (Li, Zhu & Gong, CVPR 2018).

    Args:
        num_classes: identities of the classifiers (Market-1501: 751).
        weights: optional path to a hacnn or torchreid checkpoint (never downloaded).
        **config: overrides of :class:`hacnn.HACNNConfig` fields.
    """
    from hacnn.checkpoint import load_model
    from hacnn.model import HACNN

    if weights is None:
        return HACNN(num_classes, **config)
    return load_model(weights, num_classes=num_classes, **config)
