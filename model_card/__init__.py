"""Model card template (installed as ``geohf.hub.model_card``)."""
