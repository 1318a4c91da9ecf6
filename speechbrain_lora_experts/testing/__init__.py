"""Small, offline fixtures for tests, examples and the quickstart.

Authors
 * speechbrain-lora-experts developers 2026
"""
