"""Thin shared package: data, metrics, runtime helpers and the job dispatcher."""
