"""Shelfcast web app: serves the production model bundle."""
