"""The storage tiers. Each implements ``llmcache.tiers.Tier`` and nothing more."""
