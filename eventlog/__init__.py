"""Event delivery shared by the app and monitoring: records, a bounded spool, Fluentd forwarding.

Imports nothing from app/ or monitoring/, so both can use it without depending on each other.
"""
