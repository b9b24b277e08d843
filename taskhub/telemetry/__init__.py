"""What taskhub shows about itself: Prometheus metrics, health and readiness probes, and the
state records `taskhub status` reads (docs/observability.md).
"""
