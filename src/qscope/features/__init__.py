"""Finding and describing features: logit effects, contrastive search, dashboards."""
