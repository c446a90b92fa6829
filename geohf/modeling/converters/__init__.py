"""Published geolocation models as geohf model folders: one module per source model (``geohf convert <name>``)."""
