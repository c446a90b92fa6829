"""Dataset card template (installed as ``geohf.hub.dataset_card``)."""
