"""Data preparation and loading: Common Voice, FLEURS, audio I/O.

Authors
 * speechbrain-lora-experts developers 2026
"""
